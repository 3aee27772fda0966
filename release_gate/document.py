"""``decision.json`` as one typed model: the gate writes it, every reader parses it (SPEC §8).

The report, ``summary.md``, ``junit.xml``, the model card, MLflow, ``serve-args`` and the vLLM resolver
read a run's decision through :class:`DecisionDocument`, so a field renamed here fails their type
check and a document that lacks one fails on reading, with the key named, not deep in a template.
The keys on disk are the ones release-gate has always written (docs/run-directory.md); fields added
since the first schema-2 documents have defaults, so those still read. ``release-gate decision-schema``
prints the JSON Schema. This module sits in the bottom layer and imports only pydantic, so the
resolver (a vLLM plugin) stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import BadInput
from .schema import DECISION_FILE, SCHEMA_VERSION, Outcome, Role, Standing, Status, TaskRole, rank_key

#: Per task: a number of items (``{task: n}``).
Counts = dict[str, int]


class Record(BaseModel):
    """A part of the document: unknown keys are errors, values immutable once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def standing(passed: bool, passed_point: bool) -> Standing:
    """pass | point (on point estimates only) | fail: one rule for a criterion and a variant."""
    return Standing.PASS if passed else Standing.POINT if passed_point else Standing.FAIL


class GateSettings(Record):
    """The ``gate`` section as the decision applied it."""

    mode: str
    alpha: float
    min_gain: float
    holm: bool
    control_reference: str
    sequential: bool
    looks: list[float]
    futility: float


class DesignRecord(Record):
    """This run's looks: information times, nominal levels, items per task at each look."""

    sequential: bool
    looks: list[float]
    first_look: int = 1
    spending: str | None
    rerun_reserve: float = 0.0
    nominal_levels: list[float]
    futility: float | None
    items: dict[str, list[int]]


class TaskSummary(Record):
    """One task: role and budget, items evaluated and the limit, the MDE planned (at the limit) and observed."""

    role: TaskRole
    metric: str
    higher_is_better: bool
    weight: float | None
    max_drop: float | None
    n: int
    limit: int
    mde_planned: float | None
    mde_observed: float | None


class ComparisonRecord(Record):
    """One arm against one reference on one task (or the weighted ``reward``); bounds one-sided at 1 − α."""

    arm: str
    reference: str
    task: str
    delta: float
    se: float | None
    lcb: float | None
    ucb: float | None
    p_value: float
    n: int
    discordant: int
    test: str
    method: str


class CriterionRecord(Record):
    """One pass condition of a variant, with its evidence and its verdict in words."""

    id: str
    task: str
    reference: str
    estimate: float
    se: float | None
    lcb: float | None
    threshold: float
    level: float
    p_value: float
    passed: bool
    passed_point: bool
    n: int
    discordant: int
    test: str
    method: str
    anytime: bool = False
    text: str

    @property
    def is_guard(self) -> bool:
        return self.id.startswith("guard:")

    def standing(self) -> Standing:
        return standing(self.passed, self.passed_point)

    def held(self, point: bool) -> bool:
        """Whether it held under the gate's mode (on its point estimate in point mode)."""
        return self.passed_point if point else self.passed


class VerdictRecord(Record):
    """Everything decided about one candidate variant, at the look (1-based) where it was decided."""

    passed: bool
    passed_point: bool
    status: Status
    look: int
    fraction: float
    n: Counts
    p_value: float
    p_adjusted: float
    level: float | None
    boundary: float | None
    reward: float
    worst_guard_drop: float
    note: str
    criteria: list[CriterionRecord]


class LookCriterion(Record):
    estimate: float
    p_value: float
    threshold: float
    lcb: float | None = None


class LookVariant(Record):
    """A variant judged at a look: its status after it and each criterion's numbers."""

    status: Status
    p_value: float
    boundary: float | None
    reward: float
    criteria: dict[str, LookCriterion]


class LookRecord(Record):
    """What one look saw and decided."""

    look: int
    fraction: float
    n: Counts
    nominal_level: float
    arms: list[str]
    variants: dict[str, LookVariant]


class PastLookRecord(Record):
    """A look of the gate, this run's or an earlier run's (the look ledger)."""

    look: int
    run: str | None
    date: str | None
    n: Counts
    t: float
    nominal_level: float | None


class ScoreSummary(Record):
    """An arm's mean on a task with a two-sided (1 − 2α) interval, on the metric's own scale."""

    mean: float
    se: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


class ArmRecord(Record):
    role: Role
    policy: dict[str, Any] | None
    sha256: str | None
    path: str | None
    identical_to_baseline: bool
    scores: dict[str, ScoreSummary]


class Promoted(Record):
    arm: str
    sha256: str
    path: str
    signed_by: str | None = None


class Canary(Record):
    """Whether the engine visibly applies the adapters (baseline differs from base) and which arms equal baseline."""

    baseline_differs_from_base: bool | None
    identical_to_baseline: list[str]


class Provenance(Record):
    """Hashes of every input, package versions, engine settings and timings."""

    adapter_sha256: str
    base_config_sha256: str | None
    calibration_sha256: str | None
    calibration_indices: list[int] | None
    packages: dict[str, str | None]
    engine: dict[str, Any]
    timings: dict[str, float]
    started: str
    release_gate: str | None


class Sample(Record):
    """A task's item sample: its seed, the items it has, the limit, and how many were evaluated."""

    seed: int
    available: int
    limit: int
    evaluated: int


class DecisionDocument(Record):
    """The whole ``decision.json``."""

    schema_version: int = SCHEMA_VERSION
    outcome: Outcome
    promoted: Promoted | None
    reasons: list[str]
    warnings: list[str]
    gate: GateSettings
    design: DesignRecord
    tasks: dict[str, TaskSummary]
    comparisons: list[ComparisonRecord]
    variants: dict[str, VerdictRecord]
    looks: list[LookRecord]
    history: list[PastLookRecord] = []
    evaluated: dict[str, Counts]
    items_needed: Counts | None
    arms: dict[str, ArmRecord]
    canary: Canary
    #: The run config as resolved (its own schema: ``release-gate config-schema``).
    config: dict[str, Any]
    provenance: Provenance
    samples: dict[str, Sample]

    @model_validator(mode="after")
    def _promoted_iff_promote(self) -> DecisionDocument:
        if (self.outcome == Outcome.PROMOTE) != (self.promoted is not None):
            raise ValueError(f"outcome {self.outcome} with promoted {self.promoted}: only a PROMOTE names a "
                             "promoted arm, and every PROMOTE does")
        return self

    @property
    def point(self) -> bool:
        """``gate.mode: point``: the paper's rule, judged on point estimates; no confidence is claimed."""
        return self.gate.mode == "point"

    def with_role(self, role: Role) -> list[str]:
        """The arms of one role, in document order."""
        return [name for name, arm in self.arms.items() if arm.role == role]

    def tasks_with_role(self, role: TaskRole) -> list[str]:
        return [name for name, task in self.tasks.items() if task.role == role]

    def ranked_variants(self) -> list[str]:
        """Variants in the gate's own order: highest reward, then smaller guard drop, then name."""
        v = self.variants
        return sorted(v, key=lambda a: rank_key(v[a].reward, v[a].worst_guard_drop, a))

    def standing(self, arm: str) -> Standing:
        """winner | pass | point | fail for a variant, control for any other arm: the one derivation."""
        if self.promoted is not None and self.promoted.arm == arm:
            return Standing.WINNER
        verdict = self.variants.get(arm)
        return Standing.CONTROL if verdict is None else standing(verdict.passed, verdict.passed_point)

    def comparison_index(self) -> dict[tuple[str, str, str], ComparisonRecord]:
        """Comparisons keyed by (arm, reference, task)."""
        return {(c.arm, c.reference, c.task): c for c in self.comparisons}

    def criterion_index(self) -> dict[tuple[str, str, str], CriterionRecord]:
        """Gate criteria keyed by (arm, reference, task), to mark the comparisons they judge."""
        return {(arm, c.reference, c.task): c for arm, verdict in self.variants.items() for c in verdict.criteria}

    def to_json(self) -> dict[str, Any]:
        """The document as written to disk (every key, nulls included)."""
        return self.model_dump(mode="json")


def parse_decision(data: Any, origin: str) -> DecisionDocument:
    """A decision document from parsed JSON, refused with one clear message when it is not current.

    ``origin`` names the file in the message.
    """
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version == 1:
        raise BadInput(f"{origin}: schema_version 1 was written by release-gate 0.1, whose large-sample tests could "
                       "promote on a handful of flipped answers; run the gate again (`release-gate run CONFIG "
                       "--resume` in this directory) to decide it with the exact tests")
    if version != SCHEMA_VERSION:
        raise BadInput(f"{origin}: schema_version {version!r} is not {SCHEMA_VERSION}")
    try:
        return DecisionDocument.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{origin}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """The first problem of a document that does not follow the schema, with its key, and how many there are."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def read_decision(run_dir: Path) -> DecisionDocument:
    """The decision document of a run directory (or a release entry), refused with one clear message."""
    path = Path(run_dir) / DECISION_FILE
    if not path.is_file():
        raise BadInput(f"{run_dir}: no {DECISION_FILE} (not a finished release-gate run directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_decision(data, str(path))


def schema() -> dict[str, Any]:
    """``decision.json``'s JSON Schema (``release-gate decision-schema``)."""
    document = DecisionDocument.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "release-gate decision.json"
    return document
