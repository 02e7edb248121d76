"""Policy files and their schema.

>>> from pathlib import Path
>>> policy = load_policy(Path(__file__).parent / "example.yaml")
>>> policy.name, [e.model for e in policy.routing.chain]
('phishing', ['boosted', 'forest', 'baseline'])
"""

from __future__ import annotations

from pathlib import Path

from policies.schema import Policy
from rendezvous.kernel.documents import DocumentError, load_document, load_document_text

EXAMPLE = Path(__file__).parent / "example.yaml"
EXAMPLE_STACK = Path(__file__).parent / "example.stack.yaml"  # what `rendezvous demo` runs

__all__ = ["EXAMPLE", "EXAMPLE_STACK", "DocumentError", "Policy", "load_policy", "load_policy_text"]


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises :class:`DocumentError` naming every problem."""
    return load_document(path, Policy)


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    return load_document_text(text, Policy, source)
