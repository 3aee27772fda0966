"""The ``vllm`` backend: one in-process vLLM engine for every arm (SPEC §6), the default.

The engine starts on the first item the store lacks, sized for every arm; the probe canary runs on
it once. Arms that lack the same items share each engine pass (cross-arm batching: one ``generate``
with a per-prompt LoRA list, :meth:`~.backend.SharedEngineLM.batched_with`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from ..runlog import engine_output
from ..schema import BASE, BASELINE
from .engine import Arm, Engine, EngineSettings, engine_overrides
from .protocol import BackendContext, EvaluationBackend, register_backend
from .runner import BuiltTask
from .store import Item

logger = logging.getLogger(__name__)


@register_backend("vllm")
class VllmBackend(EvaluationBackend):
    """Scores through lm-eval's ``release-gate`` model on one engine (started by :meth:`start`, or given)."""

    def __init__(self, settings: EngineSettings, *, batch_size: int = 64, cross_arm: bool = True,
                 lm: Any = None) -> None:
        self.settings, self.batch_size, self.cross_arm = settings, batch_size, cross_arm
        self._lm = lm
        self._engine: Engine | None = None  # the engine this backend started (and closes)
        self._template: str | None = None

    @classmethod
    def from_config(cls, context: BackendContext) -> VllmBackend:
        evaluation = context.evaluation
        settings = EngineSettings.for_arms(
            context.base_model, context.arms, lora_path=evaluation.lora_path, dtype=evaluation.dtype,
            max_model_len=evaluation.max_model_len, gpu_memory_utilization=evaluation.gpu_memory_utilization,
            **engine_overrides(evaluation.engine_args or {}, "evaluation.engine_args"),
        )
        return cls(settings, batch_size=evaluation.batch_size, cross_arm=evaluation.cross_arm)

    @classmethod
    def around(cls, lm: Any, *, cross_arm: bool = True) -> VllmBackend:
        """A backend over an lm-eval model whose engine is already running (its owner closes it)."""
        return cls(lm.engine.settings, batch_size=lm.batch_size_per_call, cross_arm=cross_arm, lm=lm)

    def start(self) -> None:
        if self._lm is not None:
            return
        from .backend import SharedEngineLM

        logger.info("starting the vLLM engine (%s)", self.settings.model)
        with engine_output():  # its processes print into the run's log file
            self._engine = Engine(self.settings)
        self._lm = SharedEngineLM(self._engine, Arm.base(), batch_size=self.batch_size)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = self._lm = None

    def probe(self, arms: Sequence[Arm]) -> dict[str, Any]:
        """Baseline must differ from base on fixed prompts; variants identical to baseline are flagged."""
        from . import canary

        by_name = {a.name: a for a in arms}
        others = [a for a in arms if a.name not in (BASE, BASELINE)]
        return canary.check(self._lm.engine, by_name[BASE], by_name[BASELINE], others).to_json()

    def score(self, arms: Sequence[Arm], task: BuiltTask, doc_ids: Sequence[int]) -> Iterator[list[Item]]:
        shared = self._lm.batched_with(tuple(arms)) if self.cross_arm and len(arms) > 1 else self._lm
        for arm in arms:
            yield task.score(shared.for_arm(arm), doc_ids)

    @property
    def record(self) -> dict[str, Any]:
        return asdict(self.settings)

    def store_key(self) -> str:
        return self.settings.key()

    def template(self) -> str | None:
        """The base model's tokenizer's chat template (read once, without starting the engine)."""
        if self._template is None:
            from transformers import AutoTokenizer

            self._template = str(AutoTokenizer.from_pretrained(self.settings.model).chat_template)
        return self._template
