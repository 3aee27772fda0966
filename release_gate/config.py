"""Config sections as dataclasses, built from YAML/``--set`` mappings with checked keys.

Precedence everywhere: dataclass defaults < policy YAML < config file < ``--set``.
Errors name the dotted key (``calibration.n``) so the user can find it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput
from .surgery.adapter import DEFAULT_TARGETS
from .yamlio import apply_overrides, load_mapping


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
    """Check one value against its field type: bool/int/float/str, ``X | None`` and ``tuple[X, ...]``."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and isinstance(value, tuple):
        for item in value:
            _check_type(where, item, args[0])
        return
    if hint is bool and not isinstance(value, bool):
        raise BadInput(f"{where}: must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadInput(f"{where}: must be an integer, got {value!r}")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadInput(f"{where}: must be a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise BadInput(f"{where}: must be a string, got {value!r}")
    if hint is dict and not isinstance(value, dict):
        raise BadInput(f"{where}: must be a mapping, got {value!r}")


# --- the run config (``release-gate run CONFIG``) -------------------------------------------------------

SECTIONS = ("base_model", "adapter", "output", "edit", "calibration", "policies", "controls", "evaluation",
            "targets", "guards", "gate", "allow_code_execution", "cache_dir", "device", "dtype")


@dataclass(frozen=True)
class OutputSection:
    """Where the run directory goes."""

    dir: str = "reports/run"


@dataclass(frozen=True)
class EditSection:
    """Which modules Spectral Surgery edits and how factors are rebuilt."""

    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None
    rebuild: str = "gauge"


@dataclass(frozen=True)
class ControlsSection:
    """The random_index controls: one arm per seed; the gate compares against their per-item mean or each."""

    seeds: tuple[int, ...] = (0, 1, 2)
    reference: str = "mean"


@dataclass(frozen=True)
class ServerSection:
    """An existing vLLM OpenAI server (scale-out path): URL, served model name, tokenizer."""

    url: str
    model: str | None = None
    tokenizer: str | None = None


@dataclass(frozen=True)
class EvaluationSection:
    """How arms are scored: one in-process vLLM engine, or an existing server."""

    dtype: str = "float32"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.25
    batch_size: int = 64
    cross_arm: bool = True
    chat_template: bool = False
    include_path: tuple[str, ...] = ()
    limit: int | None = None
    sample_seed: int = 0
    engine_args: dict | None = None
    server: ServerSection | None = None


@dataclass(frozen=True)
class TaskSection:
    """One target or guard entry: an lm-eval task, the metric the gate reads, its weight or budget."""

    task: str
    metric: str
    weight: float = 1.0
    max_drop: float | None = None
    higher_is_better: bool = True
    limit: int | None = None
    num_fewshot: int | None = None
    max_gen_toks: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """The whole run, resolved: defaults < policy YAML < config file < ``--set``."""

    source: Path
    base_model: str
    adapter: Path
    output: OutputSection
    edit: EditSection
    calibration: dict
    policies: tuple[tuple[str, dict], ...]
    controls: ControlsSection
    evaluation: EvaluationSection
    targets: tuple[TaskSection, ...]
    guards: tuple[TaskSection, ...]
    gate: dict
    allow_code_execution: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def to_json(self) -> dict[str, Any]:
        """The resolved config as plain data (recorded in ``decision.json``)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_run_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; every error names the file and the key."""
    raw = apply_overrides(load_mapping(path), overrides or [])
    try:
        return _build(Path(path), raw)
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None


def _section(raw: dict[str, Any], key: str, cls: type, required: bool = False) -> Any:
    value = raw.get(key, {} if not required else None)
    if value is None:
        if required:
            raise BadInput(f"{key}: required section is missing")
        value = {}
    if not isinstance(value, dict):
        raise BadInput(f"{key}: must be a mapping of keys, got {type(value).__name__}")
    return dataclass_from(cls, _tuples(cls, value), key)


def _tuples(cls: type, value: dict[str, Any]) -> dict[str, Any]:
    """YAML lists for tuple-typed fields (``targets: [o_proj]``) become tuples; a bare scalar a 1-tuple."""
    hints = typing.get_type_hints(cls)
    out = dict(value)
    for key, item in value.items():
        hint = str(hints.get(key, ""))
        if "tuple" in hint and item is not None:
            out[key] = tuple(item) if isinstance(item, (list, tuple)) else (item,)
    return out


def _build(path: Path, raw: dict[str, Any]) -> RunConfig:
    for key in raw:
        if key not in SECTIONS:
            raise BadInput(f"{key}: unknown key (known: {', '.join(SECTIONS)})")
    for key in ("base_model", "adapter"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise BadInput(f"{key}: required, a path or model name")
    evaluation = dict(raw.get("evaluation") or {})
    server = evaluation.pop("server", None)
    evaluation["include_path"] = [resolve_input(path, str(p)) for p in _as_list(evaluation.get("include_path"))]
    evaluation_section = _section({"evaluation": evaluation}, "evaluation", EvaluationSection)
    if server is not None:
        if not isinstance(server, dict):
            raise BadInput("evaluation.server: must be a mapping with url (and model, tokenizer)")
        if "url" not in server:
            raise BadInput("evaluation.server.url: required when evaluation.server is given")
        evaluation_section = dataclasses.replace(
            evaluation_section, server=dataclass_from(ServerSection, server, "evaluation.server"))
    config = RunConfig(
        source=path, base_model=resolve_input(path, raw["base_model"]), adapter=Path(resolve_input(path, raw["adapter"])),
        output=_section(raw, "output", OutputSection), edit=_section(raw, "edit", EditSection),
        calibration=_calibration(path, raw), policies=_policies(raw.get("policies")),
        controls=_section(raw, "controls", ControlsSection), evaluation=evaluation_section,
        targets=_tasks(raw, "targets"), guards=_tasks(raw, "guards"), gate=_mapping(raw, "gate"),
        **_scalars(raw),
    )
    _check(config)
    return config


def resolve_input(config_path: Path, value: str) -> str:
    """Paths in a config may use ``~`` and ``$VARS`` and are relative to the config file.

    A value that names nothing on disk relative to the config (``org/model``)
    stays as written, so hub model names pass through.
    """
    expanded = os.path.expanduser(os.path.expandvars(value))
    candidate = config_path.parent / expanded
    if Path(expanded).is_absolute() or not (candidate.exists() or expanded.startswith(".")):
        return expanded
    return str(candidate)


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _calibration(config_path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The ``calibration:`` mapping with its file resolved like every other input path."""
    section = dict(_mapping(raw, "calibration"))
    if "file" in section:
        section["file"] = resolve_input(config_path, str(section["file"]))
    return section


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise BadInput(f"{key}: must be a mapping of keys, got {type(value).__name__}")
    return value


def _scalars(raw: dict[str, Any]) -> dict[str, Any]:
    scalars = {k: raw[k] for k in ("allow_code_execution", "cache_dir", "device", "dtype") if k in raw}
    for key, value in scalars.items():
        _check_type(key, value, bool if key == "allow_code_execution" else str)
    return scalars


def _policies(value: Any) -> tuple[tuple[str, dict], ...]:
    """``policies:`` entries: a name (``abs_select``), or ``{name: …, <param>: …}`` overriding the YAML."""
    if value is None:
        value = ["abs_select", "smooth_abs", "grad_direction"]
    if not isinstance(value, list) or not value:
        raise BadInput("policies: must be a non-empty list of policy names or {name: …, params} mappings")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            out.append((entry, {}))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
        else:
            raise BadInput(f"policies[{i}]: expected a policy name or a mapping with name:, got {entry!r}")
    return tuple(out)


def _tasks(raw: dict[str, Any], key: str) -> tuple[TaskSection, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise BadInput(f"{key}: must be a list of {{task: …, metric: …}} entries")
    out = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise BadInput(f"{where}: must be a mapping with task: and metric:")
        for required in ("task", "metric"):
            if required not in entry:
                raise BadInput(f"{where}.{required}: required")
        out.append(dataclass_from(TaskSection, entry, where))
        if key == "targets" and entry.get("max_drop") is not None:
            raise BadInput(f"{where}.max_drop: a budget belongs to guards, not targets")
    return tuple(out)


def _check(config: RunConfig) -> None:
    """Cross-field checks that need the whole config."""
    from .gate.rules import check_task_rules

    check_task_rules(list(task_rules(config.targets, "target")), list(task_rules(config.guards, "guard")))
    for section, entries in (("targets", config.targets), ("guards", config.guards)):
        for i, entry in enumerate(entries):
            for key in ("limit", "num_fewshot", "max_gen_toks"):
                value = getattr(entry, key)
                if value is not None and value < (0 if key == "num_fewshot" else 1):
                    raise BadInput(f"{section}[{i}].{key}: must be ≥ {0 if key == 'num_fewshot' else 1}, got {value}")
    if not config.controls.seeds:
        raise BadInput("controls.seeds: at least one random_index seed is required (the gate compares against it)")
    if len(set(config.controls.seeds)) != len(config.controls.seeds):
        raise BadInput(f"controls.seeds: duplicate seeds in {list(config.controls.seeds)}")
    if config.controls.reference not in ("mean", "each"):
        raise BadInput(f"controls.reference: must be mean or each, got {config.controls.reference!r}")
    if not 0 < config.evaluation.gpu_memory_utilization <= 1:
        raise BadInput(f"evaluation.gpu_memory_utilization: must be in (0, 1], got "
                       f"{config.evaluation.gpu_memory_utilization}")
    if config.evaluation.server is not None and config.evaluation.chat_template:
        raise BadInput("evaluation.chat_template: not supported with evaluation.server (the server mode scores "
                       "raw completions); drop one of the two")
    if config.evaluation.limit is not None and config.evaluation.limit < 1:
        raise BadInput(f"evaluation.limit: must be ≥ 1, got {config.evaluation.limit}")
    gate_rule(config)


def task_rules(entries: tuple[TaskSection, ...], role: str):
    """The gate's view of target/guard entries."""
    from .gate.rules import TaskRule

    for entry in entries:
        yield TaskRule(entry.task, entry.metric, role, entry.weight, entry.max_drop, entry.higher_is_better)


def gate_rule(config: RunConfig):
    """The ``gate:`` section as a validated :class:`~release_gate.gate.rules.GateRule`."""
    from .gate.rules import GateRule

    values = {"control_reference": config.controls.reference, **config.gate}
    return dataclass_from(GateRule, _tuples(GateRule, values), "gate")
