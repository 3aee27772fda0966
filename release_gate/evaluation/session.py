"""Scores on demand, one look at a time: from the store when present, else from one engine (or a server).

The gate asks for "these arms on the first n items of every task"; the session answers from the item
store and evaluates only what is missing. The engine starts on the first request that needs it (a
run whose every item is stored starts none), runs the probe canary once, and serves every later look;
the per-item canary runs on the first answer that holds both base and baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReleaseGateError, RuntimeFailure
from ..files import content_key, read_json, write_json_atomic
from ..runlog import engine_output
from ..schema import BASE, BASELINE
from .engine import Arm, EngineSettings
from .progress import Progress
from .runner import ResolvedTask
from .store import Item, ItemStore

logger = logging.getLogger(__name__)


class EvaluationSession:
    """Per-item scores for the gate's looks; use as a context manager (the engine stops on exit)."""

    def __init__(self, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], store: ItemStore, *,
                 settings: EngineSettings | None = None, server: Any = None, batch_size: int = 64,
                 cross_arm: bool = True) -> None:
        self.arms = {a.name: a for a in arms}
        self.tasks = {t.request.name: t for t in tasks}
        self.store, self.settings, self.server = store, settings, server
        self.batch_size, self.cross_arm = batch_size, cross_arm
        self.items: dict[tuple[str, str], list[Item]] = {}
        self.canary: dict[str, Any] = {"probe": "not run in server mode (per-item check only)"} if server else {}
        self._engine: Any = None
        self._lm: Any = None
        self._checked = False
        self._template: str | None = None
        self._progress: Progress | None = None

    def __enter__(self) -> EvaluationSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def record(self) -> dict[str, Any]:
        """What scored the items (recorded in decision.json)."""
        if self.server is not None:
            return {"server": {"url": self.server.url, "model": self.server.model, "tokenizer": self.server.tokenizer}}
        return asdict(self.settings)

    # --- the gate's fetch callback -----------------------------------------------------------------------

    def fetch(self, request: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, np.ndarray]]:
        """Metric vectors of each requested arm on the first n items of each task (sampled order)."""
        self.progress.expect({(arm, task): self.tasks[task].size for arm, sizes in request.items() for task in sizes})
        by_sizes: dict[tuple[tuple[str, int], ...], list[Arm]] = {}
        for arm, sizes in request.items():
            by_sizes.setdefault(tuple(sorted(sizes.items())), []).append(self.arms[arm])
        for sizes, arms in by_sizes.items():
            self.items.update(self._evaluate(arms, dict(sizes)))
        if not self._checked and {BASE, BASELINE} <= set(request):
            check_applied(self.items, list(self.tasks))
            self._checked = True
        return {arm: {task: self.vector(arm, task) for task in sizes} for arm, sizes in request.items()}

    @property
    def progress(self) -> Progress:
        """One bar for every look (started on the first)."""
        if self._progress is None:
            self._progress = Progress()
        return self._progress

    def vector(self, arm: str, task: str) -> np.ndarray:
        resolved = self.tasks[task]
        try:
            return np.array([item.metrics[resolved.metric_key] for item in self.items[(arm, task)]], dtype=np.float64)
        except KeyError:
            raise RuntimeFailure(f"{arm} / {task}: an item lacks metric {resolved.metric_key!r}") from None

    # --- evaluation ----------------------------------------------------------------------------------------

    def _evaluate(self, arms: list[Arm], sizes: dict[str, int]) -> dict[tuple[str, str], list[Item]]:
        tasks = list(self.tasks.values())
        if self.server is not None:
            from . import server as server_mode

            return server_mode.evaluate(self.server, arms, tasks, self.store, sizes, self.progress)
        stored = self._from_store(arms, tasks, sizes)
        if stored is not None and self._canary_file().is_file():
            self.canary = self.canary or read_json(self._canary_file())
            for (arm, task), items in stored.items():
                self.progress.add(arm, task, (i.doc_id for i in items), scored=False)
            return stored
        return self._on_engine(arms, tasks, sizes)

    def _from_store(self, arms: list[Arm], tasks: list[ResolvedTask], sizes: dict[str, int]
                    ) -> dict[tuple[str, str], list[Item]] | None:
        """Every requested item from the store, or None when anything is missing."""
        from .runner import BuiltTask, stored_items

        out = {}
        engine_key = self.settings.key()
        for task in tasks:
            name = task.request.name
            wanted = task.doc_ids(sizes.get(name))
            built = BuiltTask(task)
            for arm in arms:
                stored = stored_items(self.store, arm, built, self.template(), wanted, engine_key)
                if any(d not in stored for d in wanted):
                    return None
                out[(arm.name, name)] = [stored[d] for d in wanted]
        return out

    def template(self) -> str | None:
        """The chat template that renders prompts (part of the store key), read from the tokenizer."""
        if not any(t.request.chat_template for t in self.tasks.values()):
            return None
        if self._template is None:
            from transformers import AutoTokenizer

            self._template = str(AutoTokenizer.from_pretrained(self.settings.model).chat_template)
        return self._template

    def _on_engine(self, arms: list[Arm], tasks: list[ResolvedTask], sizes: dict[str, int]
                   ) -> dict[tuple[str, str], list[Item]]:
        from .runner import evaluate

        try:
            items = evaluate(OnDemand(self._start), arms, tasks, self.store, sizes, cross_arm=self.cross_arm,
                             template=self.template(), progress=self.progress, engine_key=self.settings.key())
        except ReleaseGateError:
            raise
        except Exception as exc:  # engine death and the like: keep vLLM's cause, say what survives
            raise RuntimeFailure(f"evaluation failed: {type(exc).__name__}: {exc}; every finished chunk of items "
                                 f"is kept in {self.store.root}: run again with --resume to continue") from exc
        if self._lm is None:  # another run scored every missing item while this one waited on the store's locks
            self.canary = self.canary or read_json(self._canary_file()) or {
                "probe": "not run: every item was scored by another run on this store"}
        return items

    def _start(self) -> Any:
        """The engine and its lm-eval model, started once; the probe canary runs (and is recorded) here."""
        if self._lm is not None:
            return self._lm
        from . import canary
        from .backend import SharedEngineLM
        from .engine import Engine

        logger.info("starting the vLLM engine for %d arms (%s)", len(self.arms), self.settings.model)
        with engine_output():  # its processes print into the run's log file
            self._engine = Engine(self.settings)
        arms = list(self.arms.values())
        base, baseline = self.arms[BASE], self.arms[BASELINE]
        report = canary.check(self._engine, base, baseline, [a for a in arms if a.name not in (BASE, BASELINE)])
        self.canary = report.to_json()
        self._canary_file().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._canary_file(), self.canary)
        self._lm = SharedEngineLM(self._engine, base, batch_size=self.batch_size)
        return self._lm

    def _canary_file(self) -> Path:
        return self.store.root / f"canary-{content_key([self.settings.key(), sorted(a.sha256 for a in self.arms.values())])}.json"


class OnDemand:
    """The session's lm-eval model as :func:`.runner.evaluate` sees it, started on first use.

    A run that waits on the store's locks while another run scores the same items finds them stored
    and starts no engine (two runs on one cache held two engines, one of them idle).
    """

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._start(), name)


def check_applied(items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[str]) -> None:
    """Per-item canary: an adapter the engine ignored answers exactly like the base model everywhere."""
    if all(same_items(items[(BASE, t)], items[(BASELINE, t)]) for t in tasks):
        raise RuntimeFailure("adapter not applied by the engine: baseline's answers and scores equal the base "
                             "model's on every item of every task")


def same_items(a: Sequence[Item], b: Sequence[Item]) -> bool:
    """Same answers, scores and (multiple choice) log-likelihoods on every item."""
    def fields(items: Sequence[Item]) -> list[tuple]:
        return [(i.doc_id, i.response, i.metrics, i.choice_logprobs) for i in items]

    return fields(a) == fields(b)
