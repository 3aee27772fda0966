"""Config sections as dataclasses, built from YAML/``--set`` mappings with checked keys.

Precedence everywhere: dataclass defaults < policy YAML < config file < ``--set``.
Errors name the dotted key (``calibration.n``) so the user can find it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .errors import BadInput


def dataclass_from(cls: type, values: dict[str, Any], section: str) -> Any:
    """Build ``cls`` from a mapping, refusing unknown and ill-typed keys by name."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in known:
            raise BadInput(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
        _check_type(f"{section}.{key}", value, hints[key])
    return cls(**values)


def _check_type(where: str, value: Any, hint: Any) -> None:
    if hint is bool and not isinstance(value, bool):
        raise BadInput(f"{where}: must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadInput(f"{where}: must be an integer, got {value!r}")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadInput(f"{where}: must be a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise BadInput(f"{where}: must be a string, got {value!r}")
