"""YAML reading and ``--set key=value`` overrides, with errors that name the place.

Every config-like file of the project (policies, run configs) goes through
:func:`load_document`, so a syntax error always reports file and line, a key
written twice in one mapping is refused with both lines (YAML would silently
keep the last), and every value knows the line it came from; every ``--set``
goes through :func:`apply_overrides`, so precedence is the same everywhere:
defaults < file < ``--set``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInput
from .files import check_input_file

#: A location in a document: mapping keys and list indices from the top.
Location = tuple[str | int, ...]


@dataclass
class Document:
    """A YAML mapping, where each of its keys and list entries was written, and what ``--set`` changed."""

    path: Path
    data: dict[str, Any]
    lines: dict[Location, int] = field(default_factory=dict)
    overridden: set[Location] = field(default_factory=set)

    def where(self, location: Location) -> str:
        """`` (line N)`` for the deepest written prefix of ``location``, `` (--set)`` when overridden."""
        for depth in range(len(location), 0, -1):
            prefix = tuple(location[:depth])
            if prefix in self.overridden:
                return " (--set)"
            if prefix in self.lines:
                return f" (line {self.lines[prefix]})"
        return ""


def load_document(path: Path) -> Document:
    """Read a YAML file whose top level must be a mapping, with key lines and duplicate keys refused."""
    path = check_input_file(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise BadInput(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not readable as YAML: {exc}") from None
    if data is None:
        return Document(path, {})
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    lines: dict[Location, int] = {}
    _walk(node, (), lines, path)
    return Document(path, data, lines)


def dotted(location: Location) -> str:
    """``('guards', 0, 'max_drop')`` → ``guards[0].max_drop``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _walk(node: yaml.Node, location: Location, lines: dict[Location, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise BadInput(f"{path}: {dotted((*location, key))}: written twice (lines {seen[key]} and {line}); "
                               "YAML would silently keep the second, so write it once")
            seen[key] = line
            lines[(*location, key)] = line
            _walk(value_node, (*location, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*location, index)] = item.start_mark.line + 1
            _walk(item, (*location, index), lines, path)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and a YAML-typed value."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise BadInput(f"--set {item!r}: expected KEY=VALUE (dotted keys allowed, e.g. calibration.n=64)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def override(document: Document, items: list[str]) -> Document:
    """``document`` with every ``--set`` applied; overridden locations are remembered for error messages."""
    touched = {tuple(int(p) if p.isdigit() else p for p in parse_override(item)[0]) for item in items}
    return Document(document.path, apply_overrides(document.data, items), document.lines, document.overridden | touched)


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``--set`` applied (later ones win).

    A numeric part indexes a list (``targets.0.limit=240``): the entry must exist.
    """
    out = _deep_copy(data)
    for item in items:
        path, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise BadInput(f"--set {item!r}: {'.'.join(path[:depth]) or 'the config'} is a list of "
                                   f"{len(node)} entries; {part!r} is not an index into it")
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
                continue
            if last:
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise BadInput(f"--set {item!r}: {part!r} is not a section")
            node = child
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
