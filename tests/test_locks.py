"""The two lock files agree: the runner image's (runtime only) is the full lock's subset, pin for pin."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO


def pins(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``{package: (version, hashes)}`` of a pip hash-mode lock file."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        head = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^ \\\n]+)", block)
        if head:
            found[head.group(1).lower()] = (head.group(2), frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block)))
    return found


def test_the_runtime_lock_is_the_full_lock_less_the_test_tools():
    full, runtime = pins(REPO / "requirements.lock"), pins(REPO / "requirements-runtime.lock")
    assert runtime, "requirements-runtime.lock has no pins"
    differ = {name: (pin[0], full.get(name, ("missing",))[0]) for name, pin in runtime.items() if full.get(name) != pin}
    assert not differ, f"runtime pins that differ from requirements.lock (runtime, full): {differ}"
    for tool in ("pytest", "kserve", "tritonclient", "mypy", "grpcio-tools"):
        assert tool not in runtime, f"{tool} is a test tool: it does not belong in the runner image"
