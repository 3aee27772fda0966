"""What a finished run records about itself: the ``decision.json`` document, its provenance, the items.

The gate's :class:`~.gate.decide.Decision` knows the statistics; this module adds what only the run
knows (the arms and their adapters, the canary, the config, hashes of every input, timings) and
builds the typed :class:`~.document.DecisionDocument` that every output is rendered from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import RunConfig
from .constants import RUN_PACKAGES
from .document import ArmRecord, Canary, DecisionDocument, PastLookRecord, Promoted, Provenance, Sample
from .evaluation.engine import Arm
from .evaluation.runner import ResolvedTask
from .evaluation.session import same_items
from .evaluation.store import Item
from .files import child, file_sha256, package_versions, read_json, write_jsonl_atomic
from .gate.decide import Decision
from .schema import BASE, BASELINE, ITEMS_DIR, SIDECAR_FILE, VARIANTS_DIR, Role, Status
from .surgery.policies import Policy

#: The variants and controls the run wrote: (adapter directory, the policy arm that made it).
Written = Sequence[tuple[Path, Policy]]
#: Every arm's per-item results by (arm, task).
Items = Mapping[tuple[str, str], list[Item]]
UNSIGNED_WARNING = ("promoted/ is unsigned (no release.signing_key): serve-args and the vLLM resolver refuse it "
                    "unless told explicitly to serve unsigned releases")


@dataclass
class Timer:
    """Seconds per stage, for the provenance record."""

    started: float = field(default_factory=time.perf_counter)
    wall: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    stages: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, since: float) -> None:
        self.stages[name] = round(time.perf_counter() - since, 3)

    def total(self) -> dict[str, float]:
        return {**self.stages, "total": round(time.perf_counter() - self.started, 3)}


@dataclass(frozen=True)
class Evaluated:
    """What the evaluation left for the record: the arms, their items, the canary's and the engine's records."""

    arms: Sequence[Arm]
    items: Items
    canary: Mapping[str, Any]
    engine: Mapping[str, Any]
    resolved: Sequence[ResolvedTask]

    def identical_to_baseline(self) -> set[str]:
        """Arms whose adapter content, or every answer and score on the items they were scored on, equals baseline's."""
        baseline = next(a for a in self.arms if a.name == BASELINE)
        tasks = [t.request.name for t in self.resolved]

        def same(arm: str, task: str) -> bool:
            mine = self.items[(arm, task)]
            return same_items(mine, self.items[(BASELINE, task)][: len(mine)])

        return {a.name for a in self.arms if a.adapter is not None and a.name != BASELINE and (
            a.sha256 == baseline.sha256 or all(same(a.name, t) for t in tasks))}


def build_document(config: RunConfig, decision: Decision, evaluated: Evaluated, written: Written, timer: Timer,
                   signed_by: str | None = None, history: Sequence[PastLookRecord] | None = None
                   ) -> DecisionDocument:
    """The ``decision.json`` document (docs/run-directory.md); an unsigned PROMOTE says so in its warnings.

    ``history``: the gate's looks as the look ledger recorded them (run and date stamped), when it keeps one.
    """
    fields = decision.document_fields()
    winner = next((a for a in evaluated.arms if a.name == decision.promoted), None)
    if winner is not None and signed_by is None:
        fields["warnings"] = [*fields["warnings"], UNSIGNED_WARNING]
    if history is not None:
        fields["history"] = history
    identical = evaluated.identical_to_baseline()
    return DecisionDocument(
        **fields,
        promoted=Promoted(arm=winner.name, sha256=winner.sha256, path="promoted", signed_by=signed_by)
        if winner else None,
        arms=arm_records(decision, evaluated.arms, identical, written),
        canary=Canary(**{**evaluated.canary, "identical_to_baseline": sorted(identical)}),
        config=config.to_json(),
        provenance=provenance(config, written, evaluated, timer),
        samples={t.request.name: Sample(seed=t.sample_seed, available=t.available, limit=t.size,
                                        evaluated=decision.tasks[t.request.name].n) for t in evaluated.resolved},
    )


def arm_records(decision: Decision, arms: Sequence[Arm], identical: set[str], written: Written
                ) -> dict[str, ArmRecord]:
    """Every arm: its role, the policy that made it, its adapter's hash and path, and its scores."""
    policies = {variant.name: variant.policy.parameters() for _, variant in written}
    out = {}
    for arm in arms:
        path = f"{VARIANTS_DIR}/{arm.name}" if arm.name in policies else (str(arm.adapter) if arm.adapter else None)
        out[arm.name] = ArmRecord(role=role_of(arm.name, decision), policy=policies.get(arm.name),
                                  sha256=arm.sha256 or None, path=path, identical_to_baseline=arm.name in identical,
                                  scores=decision.arm_scores[arm.name])
    return out


def role_of(arm: str, decision: Decision) -> Role:
    """base and baseline by name, the gate's candidates are variants, every other arm a random control."""
    if arm in (BASE, BASELINE):
        return Role(arm)
    return Role.VARIANT if arm in decision.verdicts else Role.CONTROL


def provenance(config: RunConfig, written: Written, evaluated: Evaluated, timer: Timer) -> Provenance:
    """Hashes of every input, package versions, engine settings and timings."""
    base_config = Path(config.base_model) / "config.json"
    versions = package_versions(RUN_PACKAGES)
    calibration = next((read_json(path / SIDECAR_FILE)["calibration"] for path, variant in written
                        if variant.policy.needs_calibration), None)
    return Provenance(
        adapter_sha256=next(a.sha256 for a in evaluated.arms if a.name == BASELINE),
        base_config_sha256=file_sha256(base_config) if base_config.is_file() else None,
        calibration_sha256=calibration["file_sha256"] if calibration else None,
        calibration_indices=calibration["indices"] if calibration else None,
        packages=versions, engine=dict(evaluated.engine), timings=timer.total(), started=timer.wall,
        release_gate=versions["release-gate"],
    )


def look_summary(decision: Decision) -> list[str]:
    """One line per look: items per task and what happened to the variants."""
    lines = []
    total = len(decision.design.history) + decision.design.n_looks
    for look in decision.looks:
        sizes = ", ".join(f"{task} {n}" for task, n in look.n.items())
        events = ", ".join(f"{arm} {entry.status}" for arm, entry in look.variants.items()
                           if entry.status != Status.EVALUATING)
        lines.append(f"look {look.look}/{total} ({sizes}; {len(look.arms)} arms)" + (f": {events}" if events else ""))
    return lines


def save_items(out: Path, items: Items) -> None:
    """A copy of every per-item result inside the run directory (the report's item-level diffs)."""
    for (arm, task), rows in items.items():
        path = child(child(out / ITEMS_DIR, arm, "arm"), f"{task}.jsonl", "task")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(path, (r.summary() for r in rows))
