"""The run config (``release-gate run CONFIG``): one pydantic tree, validated once, when it is loaded.

Every setting is declared once, on its section model (``release-gate config-schema`` prints them all
as JSON Schema); the gate's and the surgery's own settings are their models (:class:`GateRule`,
:class:`EditSettings`, :class:`CalibrationConfig`). Precedence: model defaults < policy YAML <
config file < ``--set``. An error names the file, the dotted key and, where YAML knows it, the line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .constants import CONTROL_SEEDS, DEFAULT_POLICIES, UNBOUNDED_METRICS
from .errors import BadInput
from .gate.rules import GateRule, TaskRule
from .surgery.calibration import CalibrationConfig
from .surgery.edit import EditSettings
from .validation import (
    Count,
    Flag,
    Integer,
    Name,
    NonNegativeInt,
    Number,
    Positive,
    Section,
    Text,
    check,
    validate,
)
from .yamlio import Document, Location, dotted, load_document, override


class OutputSection(Section):
    """Where the run directory goes (relative to the working directory)."""

    dir: Text = "reports/run"


class ControlsSection(Section):
    """The random_index controls: one arm per seed; criterion 2 compares against them together or each."""

    seeds: Annotated[tuple[Integer, ...], check(bool, "at least one random_index seed is required (the gate "
                                                      "compares against it)"),
                     check(lambda s: len(set(s)) == len(s), "must not repeat a seed")] = CONTROL_SEEDS
    reference: Annotated[Text, check(lambda r: r in ("mean", "each"), "must be mean or each")] = "mean"
    #: random_index parameters (counts, factors, energy) so the control matches the variants it judges:
    #: a variant that amplifies half its components ×3 is compared with random halves ×3, not the paper's 20% ×1.25.
    params: Annotated[dict[str, Any], check(lambda p: "seeds" not in p and "seed" not in p,
                                            "seeds are set by controls.seeds")] = {}


class EndpointSection(Section):
    """One server of ``evaluation.server.endpoints``: its base URL, requests in flight, and API key."""

    url: Text
    concurrency: Annotated[Count | None, Field(description="requests in flight to this server (default: "
                                                           "evaluation.server.concurrency)")] = None
    api_key: Annotated[Text | None, Field(exclude=True, repr=False)] = None
    api_key_env: Annotated[Text | None, Field(description="the environment variable holding this server's API key "
                                                          "(default: evaluation.server.api_key_env)")] = None


class ServerSection(Section):
    """Existing OpenAI-compatible servers (the scale-out path): where, the served model, its tokenizer, the client.

    ``url`` names one server; ``endpoints`` several replicas of the same base model, each with its own
    ``concurrency`` and API key: every arm is loaded on each, and the items are shared among them.
    ``api_key`` (default ``$<api_key_env>``, i.e. ``$OPENAI_API_KEY``) is sent as a bearer token and never
    written anywhere. ``concurrency`` requests stay in flight with ``batch_size`` prompts each, so a
    data-parallel or Ray-backed deployment is kept busy; transient failures are retried ``max_retries``
    times with backoff. ``lora_api`` is how adapters are loaded at runtime (vLLM's dynamic LoRA API, or SGLang's).
    """

    url: Text | None = None
    endpoints: tuple[EndpointSection, ...] = ()
    model: Text | None = None
    tokenizer: Text | None = None
    api_key: Annotated[Text | None, Field(exclude=True, repr=False)] = None
    api_key_env: Text = "OPENAI_API_KEY"
    concurrency: Count = 8
    batch_size: Count = 8
    timeout: Positive = 600.0
    max_retries: NonNegativeInt = 3
    lora_api: Literal["vllm", "sglang"] = "vllm"

    def endpoint_list(self) -> tuple[EndpointSection, ...]:
        """Every server, each with its own settings resolved (``url`` is a list of one)."""
        listed = self.endpoints or (EndpointSection(url=self.url or ""),)
        return tuple(e.model_copy(update={"concurrency": e.concurrency or self.concurrency,
                                          "api_key": e.api_key or (None if e.api_key_env else self.api_key),
                                          "api_key_env": e.api_key_env or self.api_key_env}) for e in listed)


class EvaluationSection(Section):
    """How arms are scored: by the backend ``backend`` names (one in-process vLLM engine, existing servers)."""

    backend: Annotated[Text, Field(description="what scores the arms: vllm (one in-process engine), server "
                                               "(evaluation.server), or an installed package's backend "
                                               "(entry point group release_gate.backends); default: server when "
                                               "evaluation.server is given, else vllm")] = "vllm"
    #: ``auto``: bfloat16 on a CPU with native bf16 (``avx512_bf16``), float32 on other CPUs, the model's dtype on
    #: CUDA; the resolved dtype is recorded in ``decision.json`` and the item store's key
    dtype: Text = "auto"
    #: how an arm's LoRA is applied: ``merged`` weights written into the engine per arm (the CPU's fast path),
    #: vLLM's ``multi_lora`` kernels (the GPU's), or ``auto`` (merged on CPU when every adapter can be merged)
    lora_path: Literal["auto", "multi_lora", "merged"] = "auto"
    max_model_len: Count = 2048
    gpu_memory_utilization: Annotated[Number, check(lambda v: 0 < v <= 1, "must be in (0, 1]")] = 0.25
    batch_size: Count = 64
    cross_arm: Flag = True
    chat_template: Flag = False
    include_path: tuple[Text, ...] = ()
    limit: Count | None = None
    sample_seed: Integer = 0
    engine_args: dict[str, Any] | None = None
    server: ServerSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _server_means_server(cls, value: Any) -> Any:
        """A config that names a server and no backend (every config before backends) scores on the server."""
        if isinstance(value, dict) and "backend" not in value and value.get("server") is not None:
            return {**value, "backend": "server"}
        return value


class TaskSection(Section):
    """One target or guard: an lm-eval task, the metric the gate reads, its weight or its budget."""

    task: Name
    metric: Text
    weight: Positive = 1.0
    max_drop: Number | None = None
    higher_is_better: Flag = True
    range: Annotated[tuple[Number, Number] | None, Field(description="the metric's per-item range [lo, hi] "
                                                                     "(default [0, 1]; required for an unbounded "
                                                                     "metric such as perplexity)")] = None
    limit: Count | None = None
    num_fewshot: NonNegativeInt | None = None
    max_gen_toks: Count | None = None
    chat_template: Annotated[Flag | None, Field(description="render this task's prompts with the model's chat "
                                                            "template (default: evaluation.chat_template)")] = None


class MlflowSection(Section):
    """Record every run in MLflow: parameters, per-arm per-task scores, the decision, the outputs as artifacts;
    on PROMOTE, a new version of ``registered_model`` (if set) with the alias ``alias`` (a model registry
    alias maps onto "the adapter the gate last promoted")."""

    tracking_uri: Text | None = Field(None, description="MLflow tracking URI or a local directory (relative to "
                                                        "the config); default $MLFLOW_TRACKING_URI")
    experiment: Text = "release-gate"
    run_name: Text | None = None
    registered_model: Text | None = None
    alias: Text = "champion"
    tags: dict[str, Text] = {}


class TrackingSection(Section):
    """Experiment tracking (optional; ``pip install 'release-gate[mlflow]'``)."""

    mlflow: MlflowSection | None = None


class ReleaseSection(Section):
    """How ``promoted/`` is signed (OpenSSF model-signing); without a key the release is promoted unsigned."""

    signing_key: Text | None = Field(None, description="elliptic-curve private key (PEM, unencrypted) that signs "
                                     "promoted/; read, never copied (keep it outside output.dir)")


class PolicyEntry(Section):
    """One ``policies:`` entry: a policy name, or ``{name: …, <param>: …}`` overriding its file's parameters."""

    name: Text
    params: dict[str, Any] = {}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """As written in YAML: a name, or a mapping with ``name`` and parameter overrides."""
        return {"title": "PolicyEntry", "anyOf": [
            {"type": "string", "description": "a policy name or a policy YAML path"},
            {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
             "additionalProperties": True, "description": "a policy with parameter overrides"}]}

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return {"name": value["name"], "params": {k: v for k, v in value.items() if k != "name"}}
        raise ValueError(f"expected a policy name or a mapping with name:, got {value!r}")


class RunConfig(Section):
    """The whole run, resolved: defaults < policy YAML < config file < ``--set``."""

    source: Annotated[Path, Field(description="the config file (set by the loader)")] = Path("config.yaml")
    base_model: Text
    adapter: Path
    output: OutputSection = OutputSection()
    edit: EditSettings = EditSettings()
    calibration: CalibrationConfig | None = None
    policies: Annotated[tuple[PolicyEntry, ...], check(bool, "must be a non-empty list of policy names or "
                                                              "{name: …, params} mappings")] = tuple(
        PolicyEntry(name=name) for name in DEFAULT_POLICIES)
    controls: ControlsSection = ControlsSection()
    evaluation: EvaluationSection = EvaluationSection()
    targets: tuple[TaskSection, ...] = ()
    guards: tuple[TaskSection, ...] = ()
    gate: GateRule = GateRule()
    tracking: TrackingSection = TrackingSection()
    release: ReleaseSection = ReleaseSection()
    allow_code_execution: Flag = False
    cache_dir: Text | None = None
    device: Text = "auto"
    dtype: Text = "auto"

    @property
    def rule(self) -> GateRule:
        """The decision settings; ``controls.reference`` applies unless ``gate.control_reference`` says otherwise."""
        if "control_reference" in self.gate.model_fields_set:
            return self.gate
        return self.gate.model_copy(update={"control_reference": self.controls.reference})

    @property
    def target_rules(self) -> tuple[TaskRule, ...]:
        return tuple(_task_rule(t, "target") for t in self.targets)

    @property
    def guard_rules(self) -> tuple[TaskRule, ...]:
        return tuple(_task_rule(t, "guard") for t in self.guards)

    def to_json(self) -> dict[str, Any]:
        """The resolved config as plain data (recorded in ``decision.json``): the sections the user wrote
        for ``calibration`` and ``gate``, every field of the others."""
        return {
            "source": str(self.source), "base_model": self.base_model, "adapter": str(self.adapter),
            "output": self.output.model_dump(mode="json"), "edit": self.edit.model_dump(mode="json"),
            "calibration": self.calibration.model_dump(mode="json", exclude_unset=True) if self.calibration else {},
            "policies": [[p.name, p.params] for p in self.policies],
            "controls": self.controls.model_dump(mode="json"), "evaluation": self.evaluation.model_dump(mode="json"),
            "targets": [t.model_dump(mode="json") for t in self.targets],
            "guards": [t.model_dump(mode="json") for t in self.guards],
            "gate": self.gate.model_dump(mode="json", exclude_unset=True),
            "tracking": self.tracking.model_dump(mode="json"), "release": self.release.model_dump(mode="json"),
            "allow_code_execution": self.allow_code_execution, "cache_dir": self.cache_dir, "device": self.device,
            "dtype": self.dtype,
        }


def _task_rule(entry: TaskSection, role: str) -> TaskRule:
    return TaskRule(entry.task, entry.metric, role, entry.weight, entry.max_drop, entry.higher_is_better,
                    *(() if entry.range is None else (tuple(entry.range),)))


def schema() -> dict[str, Any]:
    """The run config's JSON Schema (for editors: ``release-gate config-schema``)."""
    document = RunConfig.model_json_schema()
    document["properties"].pop("source", None)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "release-gate run config"
    return document


# --- loading ---------------------------------------------------------------------------------------------


def load_run_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; every error names the file and the key (and the line)."""
    path = Path(path)
    document = override(load_document(path), overrides or [])
    if "source" in document.data:
        raise BadInput(f"{path}: source: unknown key (the config's own path is recorded by release-gate)")
    data = {**_resolve_paths(path, document.data), "source": str(path)}
    config = validate(RunConfig, Document(path, data, document.lines, document.overridden))
    try:
        check_config(config)
    except ConfigError as exc:
        raise BadInput(f"{path}: {dotted(exc.location)}: {exc.message}{document.where(exc.location)}") from None
    return config


class ConfigError(Exception):
    """A cross-field problem at ``location``."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{dotted(location)}: {message}")
        self.location, self.message = location, message


def check_config(config: RunConfig) -> None:
    """Checks that need more than one field: task roles and budgets, the evaluation backend."""
    if not config.targets:
        raise ConfigError(("targets",), "at least one target task is required")
    seen: set[str] = set()
    for section, entries in (("targets", config.targets), ("guards", config.guards)):
        for i, entry in enumerate(entries):
            if entry.task in seen:
                raise ConfigError((section, i, "task"), f"{entry.task!r} appears twice (a task is a target or a guard, "
                                                        "once)")
            seen.add(entry.task)
            if section == "targets" and entry.max_drop is not None:
                raise ConfigError((section, i, "max_drop"), "a budget belongs to guards, not targets")
            if section == "guards" and (entry.max_drop is None or entry.max_drop < 0):
                raise ConfigError((section, i, "max_drop"), "the alignment-tax budget must be a number ≥ 0, got "
                                                            f"{entry.max_drop}")
            _check_range(entry, (section, i))
    _check_backend(config)


def _check_backend(config: RunConfig) -> None:
    """The backend exists and has what it needs; server mode scores raw completions (no chat template)."""
    from .evaluation.protocol import backend_names

    evaluation = config.evaluation
    if evaluation.backend not in backend_names():
        raise ConfigError(("evaluation", "backend"), f"unknown backend {evaluation.backend!r} (known: "
                                                     f"{', '.join(backend_names())})")
    if evaluation.backend == "vllm" and evaluation.server is not None:
        raise ConfigError(("evaluation", "backend"), "vllm scores in this process, but evaluation.server is set: "
                                                     "use backend: server, or drop evaluation.server")
    if evaluation.backend != "server":
        return
    server = evaluation.server
    if server is None or not (server.url or server.endpoints):
        raise ConfigError(("evaluation", "server", "url"), "required by backend server (or endpoints: a list of "
                                                           "servers, each with a url)")
    if server.url and server.endpoints:
        raise ConfigError(("evaluation", "server", "endpoints"), "give url (one server) or endpoints, not both")
    chat = [(("evaluation", "chat_template"), evaluation.chat_template)] + [
        ((section, i, "chat_template"), entry.chat_template) for section, entries in
        (("targets", config.targets), ("guards", config.guards)) for i, entry in enumerate(entries)]
    for location, on in chat:
        if on:
            raise ConfigError(location, "not supported with evaluation.server (the server mode scores raw "
                                        "completions); drop one of the two")


def _check_range(entry: TaskSection, location: Location) -> None:
    """A declared range must be ``lo < hi``; an unbounded metric (perplexity, …) must declare one."""
    if entry.range is not None:
        lo, hi = entry.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError((*location, "range"), f"must be [lo, hi] with finite lo < hi, got {list(entry.range)}")
    elif entry.metric.split(",")[0] in UNBOUNDED_METRICS:
        raise ConfigError((*location, "range"), f"metric {entry.metric!r} is unbounded: declare the per-item range "
                                                "its scores lie in (range: [lo, hi]); the gate's tests need one")


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


def _resolve_paths(config_path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The raw mapping with every input path resolved like :func:`resolve_input` (wrong types left to validation)."""
    data = dict(raw)
    for key in ("base_model", "adapter"):
        if isinstance(data.get(key), str) and data[key]:
            data[key] = resolve_input(config_path, data[key])
    calibration = data.get("calibration")
    if isinstance(calibration, dict) and isinstance(calibration.get("file"), str):
        data["calibration"] = {**calibration, "file": resolve_input(config_path, calibration["file"])}
    release = data.get("release")
    if isinstance(release, dict) and isinstance(release.get("signing_key"), str) and release["signing_key"]:
        data["release"] = {**release, "signing_key": resolve_input(config_path, release["signing_key"])}
    evaluation = data.get("evaluation")
    tracking = data.get("tracking")
    mlflow = tracking.get("mlflow") if isinstance(tracking, dict) else None
    if isinstance(mlflow, dict) and isinstance(mlflow.get("tracking_uri"), str) and "://" not in mlflow["tracking_uri"]:
        local = Path(os.path.expanduser(os.path.expandvars(mlflow["tracking_uri"])))
        local = local if local.is_absolute() else config_path.parent / local
        data["tracking"] = {**tracking, "mlflow": {**mlflow, "tracking_uri": local.resolve().as_uri()}}
    if isinstance(evaluation, dict) and evaluation.get("include_path") is not None:
        paths = evaluation["include_path"]
        paths = paths if isinstance(paths, list) else [paths]
        data["evaluation"] = {**evaluation, "include_path": [resolve_input(config_path, str(p)) for p in paths]}
    return data
