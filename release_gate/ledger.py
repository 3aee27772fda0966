"""The look ledger: every look a gate has made, kept beside the item store so a re-run continues its α.

A *gate* is identified by what its items are scored with: every arm's content (adapter sha256s),
every task's configuration key and metric (not its limit) and the engine key — the same things the
item store keys on, so any later run that reuses a gate's stored items finds its ledger too. The ledger
(``<store root>/ledgers/<gate key>.json``) lists the gate's runs in order, each with its limits and
looks (items per task, information time, nominal level at α, run directory, date). A run then is:

* a **continuation** (limits not used before): it gets every recorded look as ``Design.history`` and
  spends only what the first run kept for re-runs (:mod:`..gate.boundaries`); its looks are appended;
* a **replay** (the same limits as a recorded run, e.g. ``--resume`` of a finished run or a report
  re-rendered with other gate settings): it re-decides that run's items with the looks before it as
  history, exactly as that run did, and records nothing new.

A run that would change what the recorded looks mean is refused (``BadInput``, exit 2) before anything
is evaluated: another ``evaluation.sample_seed`` (the same stored items in another order, so old items
would count as new evidence), another ``gate.alpha`` or ``gate.rerun_reserve`` (another spending
function). Fresh evidence is new items of a task, never new seeds or settings over the same items.
Reads and writes hold the ledger's lock; writes are atomic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .document import PastLookRecord
from .errors import BadInput
from .evaluation.engine import Arm
from .evaluation.runner import ResolvedTask
from .files import child, content_key, file_lock, read_json, write_json_atomic
from .gate.decide import Decision
from .gate.looks import Design, PastLook, history_records

logger = logging.getLogger(__name__)

#: Ledger layout version (bump when a field's meaning changes; older ledgers are then refused, not misread).
LEDGER_VERSION = 1
LEDGERS_DIR = "ledgers"


def gate_key(arms: Sequence[Arm], tasks: Sequence[ResolvedTask], engine_key: str) -> str:
    """The gate's identity: arm contents, task configurations and metrics (not limits), the engine."""
    return content_key({"arms": {a.name: a.sha256 for a in arms},
                        "tasks": {t.request.name: [t.key, t.metric_key] for t in tasks}, "engine": engine_key})


@dataclass
class Ledger:
    """One gate's recorded runs, opened for one run of it (see the module docstring)."""

    path: Path
    settings: dict[str, Any]
    runs: list[dict[str, Any]]
    #: Index of the recorded run this run replays, or None for a continuation.
    replaying: int | None = None

    @classmethod
    def open(cls, root: Path, key: str, design: Design, seeds: Mapping[str, int]) -> Ledger:
        """The gate's ledger under the item store ``root``, checked against this run's settings."""
        path = child(Path(root) / LEDGERS_DIR, f"{key}.json", "ledger")
        settings = {"alpha": design.rule.alpha, "rerun_reserve": design.rule.rerun_reserve,
                    "sample_seeds": dict(sorted(seeds.items()))}
        with file_lock(path.with_suffix(".lock")):
            document = read_json(path)
        if document is None:
            return cls(path, settings, [])
        if document.get("version") != LEDGER_VERSION:
            raise BadInput(f"look ledger {path}: layout version {document.get('version')} is not "
                           f"{LEDGER_VERSION}; it was written by another release-gate")
        for name, value in settings.items():
            if document["settings"].get(name) != value:
                raise BadInput(
                    f"look ledger {path}: this gate's earlier looks were made with {_setting(name)} "
                    f"{json.dumps(document['settings'].get(name))}, this run has {json.dumps(value)}; changing it "
                    "would re-test the same items as if they were new evidence. Keep the setting, or score other "
                    "items (other tasks or adapters); removing the ledger starts the gate afresh and gives up its "
                    "error guarantee across the runs")
        runs = document["runs"]
        replaying = next((i for i, r in enumerate(runs) if r["limits"] == dict(design.limits)), None)
        return cls(path, settings, runs, replaying)

    @property
    def begun(self) -> str | None:
        return self.runs[0]["date"] if self.runs else None

    def history(self) -> tuple[PastLook, ...]:
        """The looks this run continues: all recorded ones, or those before the run it replays."""
        runs = self.runs if self.replaying is None else self.runs[:self.replaying]
        return tuple(PastLook(look["n"], look["t"], look["nominal_level"], run["run"], run["date"])
                     for run in runs for look in run["looks"])

    def design(self, design: Design) -> Design:
        """``design`` continuing this gate's looks; BadInput when it would add no items to them."""
        try:
            return replace(design, history=self.history())
        except ValueError as exc:
            raise BadInput(f"look ledger {self.path}: {exc}; or use the limits of an earlier run of this gate "
                           f"({', '.join(json.dumps(r['limits']) for r in self.runs)}) to reproduce its decision"
                           ) from None

    def record(self, decision: Decision, run_dir: str, date: str) -> list[PastLookRecord]:
        """Append this run's looks (a continuation) and return the gate's whole history for ``decision.json``."""
        mine = decision.history[len(decision.design.history):]
        if self.replaying is None and mine:
            entry = {"run": run_dir, "date": date, "limits": dict(decision.design.limits),
                     "looks": [{"n": dict(h.n), "t": h.t, "nominal_level": h.level} for h in mine]}
            with file_lock(self.path.with_suffix(".lock")):
                current = read_json(self.path)
                runs = current["runs"] if current else []
                if len(runs) != len(self.runs):
                    logger.warning(f"warning: another run of this gate recorded looks in {self.path} while this one "
                                   "ran; both runs' looks count from now on")
                self.runs = [*runs, entry]
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.path, {"version": LEDGER_VERSION, "settings": self.settings, "runs": self.runs})
        stamped = (*decision.design.history, *(replace(h, run=run_dir, date=date) for h in mine))
        return history_records(stamped)


def _setting(name: str) -> str:
    return {"alpha": "gate.alpha", "rerun_reserve": "gate.rerun_reserve",
            "sample_seeds": "evaluation.sample_seed"}[name]
