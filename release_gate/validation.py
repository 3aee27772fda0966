"""One validator for every config-like input: pydantic models, errors in the project's words.

The run config and the policy files are pydantic models (validated once, at load); this module holds
the field types they share (YAML-strict: ``yes`` is not a boolean, ``"1.5"`` is not a number) and
turns a pydantic error into one line that names the key, the file and, where YAML knows it, the line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from .errors import BadInput
from .files import SEGMENT_RULE, is_path_segment
from .yamlio import Document, Location, dotted


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def check(condition: Callable[[Any], bool], requirement: str) -> AfterValidator:
    """A constraint whose error reads ``<requirement>, got <value>``."""

    def validate(value: Any) -> Any:
        if value is not None and not condition(value):
            raise ValueError(f"{requirement}, got {value!r}")
        return value

    return AfterValidator(validate)


Number = Annotated[float, BeforeValidator(_number)]
Integer = StrictInt
Flag = StrictBool
Text = StrictStr
Positive = Annotated[Number, check(lambda v: v > 0, "must be > 0")]
NonNegative = Annotated[Number, check(lambda v: v >= 0, "must be ≥ 0")]
Fraction = Annotated[Number, check(lambda v: 0.0 <= v <= 1.0, "must be a fraction in [0, 1]")]
Count = Annotated[Integer, check(lambda v: v >= 1, "must be ≥ 1")]
NonNegativeInt = Annotated[Integer, check(lambda v: v >= 0, "must be ≥ 0")]
#: A name that becomes a file or directory name (names are data, never paths).
Name = Annotated[Text, check(is_path_segment, f"cannot name a file or directory: use {SEGMENT_RULE}")]


_TYPE_WORDS = {
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number",
    "string_type": "must be a string", "tuple_type": "must be a list", "list_type": "must be a list",
    "model_type": "must be a mapping of keys", "dict_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
}


def explain(error: dict[str, Any], model: type[BaseModel]) -> tuple[Location, str]:
    """The location and the message of one pydantic error, in the project's words."""
    kind, location, value = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = known_keys(model, location[:-1])
        return location, "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if kind == "missing":
        return location, "required"
    if kind == "literal_error":
        options = ", ".join(str(o).strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(", "))
        return location, f"must be one of {options}, got {value!r}"
    if kind in _TYPE_WORDS:
        shown = type(value).__name__ if kind.startswith(("model", "dict")) else repr(value)
        return location, f"{_TYPE_WORDS[kind]}, got {shown}"
    if kind == "value_error":
        return location, str(ctx.get("error", error["msg"]))
    if kind == "too_short":
        return location, "must not be empty"
    return location, error["msg"]


def known_keys(model: type[BaseModel], location: Location) -> list[str]:
    """The keys a model accepts at ``location`` (list indices skipped), for "unknown key" messages."""
    current: Any = model
    for part in location:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return sorted(name for name, field in getattr(current, "model_fields", {}).items() if not field.exclude)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def validate(model: type[BaseModel], document: Document, prefix: Location = ()) -> Any:
    """``model`` from the document's data, or :class:`BadInput` naming file, key and line."""
    try:
        return model.model_validate(document.data)
    except PydanticError as exc:
        location, message = explain(exc.errors()[0], model)
        full = (*prefix, *location)
        raise BadInput(f"{document.path}: {dotted(full)}: {message}{document.where(full)}") from None
