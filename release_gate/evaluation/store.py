"""Per-item scores on disk, keyed so that a run evaluates only the items no earlier run scored.

One directory per (arm content, task, task configuration, engine settings); the task key leaves out
the item limit, so a run with a larger limit (or a later look of a sequential run) finds every item
an earlier one scored there and evaluates only the rest. Each evaluated chunk of items is one JSONL
file, written atomically and named by the items it holds: an interrupted run loses at most the chunk
in flight, two runs that score the same chunk write the same bytes to the same name, and a damaged
file is ignored (its items are scored again), never trusted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import child, content_key, file_lock, read_jsonl, write_jsonl_atomic
from .engine import Arm

#: Store layout version; bump when an item's meaning changes (older directories are then not read).
STORE_VERSION = 2


@dataclass(frozen=True)
class Item:
    """One scored evaluation item: metrics by ``metric,filter`` name, and what was produced.

    ``doc_id`` is the item's index in the task's evaluation split. Multiple-choice items also keep
    each choice's log-likelihood (``response`` is then the chosen continuation). ``samples`` are
    lm-eval's own logged samples of the item (document, arguments, raw and filtered responses, one
    per filter), kept for lm-eval-shaped results files.
    """

    doc_id: int
    metrics: dict[str, float]
    target: str
    response: str
    prompt: str
    choice_logprobs: list[float] | None = None
    samples: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__

    def summary(self) -> dict[str, Any]:
        """Everything but lm-eval's raw samples (the run directory's ``items/`` copy)."""
        return {k: v for k, v in self.__dict__.items() if k != "samples"}


class ItemStore:
    """``<root>/v2/<arm>-<adapter sha>/<task>-<task key>-<engine key>/<chunk>.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def directory(self, arm: Arm, task: str, task_key: str, engine_key: str) -> Path:
        owner = child(self.root / f"v{STORE_VERSION}", f"{arm.name}-{arm.sha256[:16] or 'base'}", "arm")
        return child(owner, f"{task}-{task_key}-{engine_key}", "task")

    def load(self, arm: Arm, task: str, task_key: str, engine_key: str) -> dict[int, Item]:
        """Every stored item of this (arm, task), by doc_id (complete chunk files only)."""
        found: dict[int, Item] = {}
        directory = self.directory(arm, task, task_key, engine_key)
        for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else ():
            try:
                items = [Item(**row) for row in read_jsonl(path)]
            except (json.JSONDecodeError, TypeError, OSError):
                continue  # a damaged chunk is scored again, never trusted
            for item in items:
                found.setdefault(item.doc_id, item)
        return found

    @contextlib.contextmanager
    def locked(self, arms: Iterable[Arm], task: str, task_key: str, engine_key: str) -> Iterator[None]:
        """Hold the (arm, task) locks of ``arms`` (in a fixed order): one process scores an item, others wait."""
        locks = sorted({self.directory(a, task, task_key, engine_key).with_suffix(".lock") for a in arms})
        with contextlib.ExitStack() as stack:
            for path in locks:
                stack.enter_context(file_lock(path))
            yield

    def save(self, arm: Arm, task: str, task_key: str, engine_key: str, items: Iterable[Item]) -> Path:
        """One chunk file for ``items`` (atomic; its name is the hash of their doc_ids)."""
        items = sorted(items, key=lambda i: i.doc_id)
        directory = self.directory(arm, task, task_key, engine_key)
        directory.mkdir(parents=True, exist_ok=True)
        return write_jsonl_atomic(directory / f"{content_key([i.doc_id for i in items])}.jsonl",
                                  (item.to_json() for item in items))
