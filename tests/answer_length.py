"""A whole evaluation backend in one module and one registry line: it scores by answer length, no model.

What a third party writes to add a backend (tests/test_backend_registry.py uses it): the store, the
canary, the looks and lm-eval's task handling are the project's; only the answers are this module's.
A continuation's log-likelihood is minus its length in characters, scaled by a factor of the arm's
adapter content, so base and adapters answer differently, unless ``ignore_adapters`` (an engine that
silently drops the LoRA, which the per-item canary must catch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from lm_eval.api.model import LM

from release_gate.evaluation.engine import Arm
from release_gate.evaluation.protocol import BackendContext, EvaluationBackend, register_backend
from release_gate.evaluation.runner import BuiltTask
from release_gate.evaluation.store import Item


@register_backend("answer-length")
class AnswerLength(EvaluationBackend):
    """Scores every request by length; counts what it was asked to do."""

    def __init__(self, ignore_adapters: bool = False) -> None:
        self.ignore_adapters = ignore_adapters
        self.starts = 0
        self.scored: list[tuple[str, tuple[int, ...]]] = []

    @classmethod
    def from_config(cls, context: BackendContext) -> AnswerLength:
        return cls()

    def start(self) -> None:
        self.starts += 1

    def score(self, arms: Sequence[Arm], task: BuiltTask, doc_ids: Sequence[int]) -> Iterator[list[Item]]:
        for arm in arms:
            self.scored.append((arm.name, tuple(doc_ids)))
            yield task.score(_ByLength(1.0 if arm.adapter is None or self.ignore_adapters
                                       else 1 + int(arm.sha256[:2], 16) / 64), doc_ids)

    @property
    def record(self) -> dict[str, Any]:
        return {"answer-length": {"ignore_adapters": self.ignore_adapters}}

    def store_key(self) -> str:
        return f"answer-length-{int(self.ignore_adapters)}"


class _ByLength(LM):
    """lm-eval's model: log-likelihood ``-scale · len(continuation)``; generation is not supported."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return [(-self.scale * len(r.args[1]), False) for r in requests]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return [-self.scale * len(r.args[0]) for r in requests]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("answer-length scores multiple-choice tasks only")
