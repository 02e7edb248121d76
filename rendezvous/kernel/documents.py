"""Loading YAML documents (policies, model specs, stacks) into pydantic schemas,
with errors that name the file, the line, the field and the problem.

>>> from pydantic import BaseModel
>>> class Doc(BaseModel):
...     name: str
...     replicas: int
>>> load_document_text("name: a\\nreplicas: many\\n", Doc, source="spec.yaml")
Traceback (most recent call last):
...
rendezvous.kernel.documents.DocumentError: spec.yaml is invalid:
  spec.yaml:2: replicas: Input should be a valid integer, unable to parse string as an integer (got 'many')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml  # type: ignore[import-untyped]  # no stubs in the lock

from rendezvous.kernel.errors import ConfigError

__all__ = [
    "M", "Problem", "FieldError", "DocumentError", "format_field", "parse_document", "load_document_text",
    "load_document",
]

M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document."""

    field: str  # dotted path, e.g. routing.chain[1].wait_ms; "" for the whole document
    line: int | None
    message: str


class FieldError(ValueError):
    """Raised by a schema's cross-field rule to report a problem at ``loc``.

    Pydantic would report it at the document root; the loader moves it to ``loc``.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


class DocumentError(ConfigError):
    """A document that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source, self.problems = source, problems
        lines = [
            f"  {source}{f':{p.line}' if p.line else ''}: {p.field + ': ' if p.field else ''}{p.message}"
            for p in problems
        ]
        super().__init__(f"{source} is invalid:\n" + "\n".join(lines))


def format_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the YAML node at ``loc``, or of its nearest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            key = next((k for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if child is None:
                return line
            node, line = child, (key or child).start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _document_path(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """``loc`` without the parts pydantic adds that are not in the document: union branch
    names and tagged-union tags (``routing.fixed.chain`` is ``routing.chain`` in the file)."""
    out, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part not in node and i + 1 < len(loc) and loc[i + 1] in node:
            continue
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return tuple(out)


def _problem(error: Mapping[str, Any], root: yaml.Node | None, data: Any) -> Problem:
    loc = _document_path(tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))), data)
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        loc = loc + cause.loc
        return Problem(format_field(loc), _line_of(root, loc), cause.message)
    message = error["msg"]
    if error["type"] not in ("missing", "extra_forbidden") and "input" in error and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling)"
    return Problem(format_field(loc), _line_of(root, loc), message)


def parse_document(data: Any, schema: type[M], source: str, root: yaml.Node | None = None) -> M:
    if not isinstance(data, dict):
        raise DocumentError(source, [Problem("", 1, f"expected a YAML mapping at the top, got {type(data).__name__}")])
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        raise DocumentError(source, [_problem(e, root, data) for e in exc.errors()]) from None


def load_document_text(text: str, schema: type[M], source: str = "<string>") -> M:
    """Parse and validate one YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(source, [Problem("", mark.line + 1 if mark else None, f"not valid YAML: {problem}")]) from None
    return parse_document(data, schema, source, root)


def load_document(path: str | Path, schema: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DocumentError(str(path), [Problem("", None, f"cannot read: {exc.strerror}")]) from None
    return load_document_text(text, schema, source=str(path))
