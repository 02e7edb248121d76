"""The layers of ARCHITECTURE.md, checked on the import graph: imports point down only.

Every import in the product's code (top-level and inside functions) is read with
:mod:`ast`; a module may import its own package, or a package of a lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Lowest first. Packages of one layer are separate roles and do not import each other.
LAYERS: list[set[str]] = [
    {"rendezvous", "rendezvous.kernel"},  # foundation: wire, topics, settings, Kafka layer, clock, errors
    {"policies"},  # the policy document's schema
    {"rendezvous.routing", "canary"},  # pure decision logic
    {"rendezvous.service", "rendezvous.gateway", "containers", "decoy"},  # the services and the components
    {"rendezvous.operations"},  # runtimes, supervisor, embedded broker, stacks
    {"rendezvous.tools"},  # demo, client, explain, summary
    {"rendezvous.cli"},  # the command line, on top
    {"rendezvous.__main__"},
]
#: Example models are loaded by spec (an import path in a YAML file), never imported by product code.
EXAMPLES = "containers.examples"
ROOTS = ("rendezvous", "containers", "decoy", "canary", "policies")


def _package(module: str) -> str:
    """The layered package a module belongs to (the longest match)."""
    best = max((p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS and ARCHITECTURE.md")
    return best


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ROOTS}


MODULES = _modules()


def test_every_module_is_in_a_layer():
    for name in MODULES:
        if not name.startswith(EXAMPLES):
            _package(name)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(EXAMPLES)))
def test_imports_point_down_only(name: str):
    own = _package(name)
    wrong = []
    for imported in sorted(_imports(MODULES[name])):
        if imported.startswith(EXAMPLES):
            wrong.append(f"{imported} (example code: load it by spec)")
            continue
        target = _package(imported)
        if target == own or target == "rendezvous":
            continue
        if _layer(target) >= _layer(own):
            wrong.append(f"{imported} (layer {_layer(target)}, not below {own}'s layer {_layer(own)})")
    assert not wrong, f"{name} imports upward or sideways: {wrong}"


def _declares_all(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


def test_every_module_says_what_it_offers_with_all():
    """A module's public surface is its ``__all__``; packages and entry points (``__main__``) excepted."""
    missing = sorted(name for name, path in MODULES.items()
                     if path.stem not in ("__init__", "__main__") and not name.startswith(EXAMPLES)
                     and not name.startswith("rendezvous.gateway.protocol") and not _declares_all(path))
    assert not missing, f"modules without __all__: {missing}"
