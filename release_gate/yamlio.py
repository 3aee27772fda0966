"""YAML reading and ``--set key=value`` overrides, with errors that name the place.

Every config-like file of the project (policies, run configs) goes through
:func:`load_mapping`, so a syntax error always reports file and line, and
every ``--set`` goes through :func:`apply_overrides`, so precedence is the
same everywhere: defaults < file < ``--set``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import BadInput


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise BadInput(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not readable as YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


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
