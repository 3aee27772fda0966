"""Per-item scores on disk, one JSONL file per (arm, task), keyed so a re-run resumes.

The key covers the adapter content, the task configuration (as lm-eval
resolved it, plus limit/few-shot/generation settings) and the engine
settings, so a stored file is only reused when it would be recomputed
identically. Each file is written atomically when its (arm, task) finishes:
an interrupted run loses at most the pair in flight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import Arm


@dataclass(frozen=True)
class Item:
    """One scored evaluation item: metrics by ``metric,filter`` name, and what was produced.

    Multiple-choice items also keep each choice's log-likelihood (``response``
    is then the chosen continuation).
    """

    doc_id: int
    metrics: dict[str, float]
    target: str
    response: str
    prompt: str
    choice_logprobs: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__


class ItemStore:
    """A directory of ``<arm>-<adapter sha>/<task>-<task key>-<engine key>.jsonl`` files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, arm: Arm, task: str, task_key: str, engine_key: str) -> Path:
        owner = f"{arm.name}-{arm.sha256[:16] or 'base'}"
        return self.root / owner / f"{task}-{task_key}-{engine_key}.jsonl"

    def load(self, arm: Arm, task: str, task_key: str, engine_key: str) -> list[Item] | None:
        path = self.path(arm, task, task_key, engine_key)
        if not path.is_file():
            return None
        try:
            return [Item(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
        except (json.JSONDecodeError, TypeError):
            return None  # a damaged file is recomputed, never trusted

    def save(self, arm: Arm, task: str, task_key: str, engine_key: str, items: list[Item]) -> Path:
        path = self.path(arm, task, task_key, engine_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        return path
