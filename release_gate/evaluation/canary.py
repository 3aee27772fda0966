"""Canary: is each adapter really applied by the engine? (SPEC §6)

A LoRA the engine silently ignores (a target module it does not adapt, a
stale id) would make every arm score like the base model and the gate would
compare noise. Before any score is trusted, ``baseline`` must differ from
``base`` on fixed probe prompts; variants identical to ``baseline`` are
flagged (the edit changed nothing the engine can see).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RuntimeFailure
from .engine import Arm, Engine

PROBES = (
    "Question: What is the capital of France?\nAnswer:",
    "Write one sentence about the ocean.",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether?\nAnswer:",
    "List three colors:",
)
PROBE_TOKENS = 16
#: Log-probabilities closer than this count as identical (engine noise).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Fingerprint:
    """Greedy tokens and their log-probabilities on every probe prompt."""

    tokens: tuple[tuple[int, ...], ...]
    logprobs: tuple[tuple[float, ...], ...]

    def same_as(self, other: Fingerprint) -> bool:
        if self.tokens != other.tokens:
            return False
        return all(
            abs(a - b) <= TOLERANCE for mine, theirs in zip(self.logprobs, other.logprobs) for a, b in zip(mine, theirs)
        )


def fingerprints(engine: Engine, arms: list[Arm]) -> dict[str, Fingerprint]:
    """Probe every arm in one ``generate`` call (one prompt per arm per probe)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=PROBE_TOKENS, logprobs=1, seed=engine.settings.seed)
    encoded = [engine.tokenizer.encode(p) for p in PROBES]
    prompts = [ids for _ in arms for ids in encoded]
    owners = [arm for arm in arms for _ in encoded]
    outputs = engine.generate(prompts, params, owners)
    result: dict[str, Fingerprint] = {}
    for i, arm in enumerate(arms):
        chunk = outputs[i * len(PROBES) : (i + 1) * len(PROBES)]
        result[arm.name] = Fingerprint(
            tuple(tuple(o.outputs[0].token_ids) for o in chunk),
            tuple(tuple(_chosen_logprobs(o.outputs[0])) for o in chunk),
        )
    return result


def _chosen_logprobs(completion: Any) -> list[float]:
    return [step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs)]


@dataclass(frozen=True)
class CanaryReport:
    """Which arms the engine visibly changes, for the decision record."""

    applied: bool
    identical_to_baseline: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"baseline_differs_from_base": self.applied, "identical_to_baseline": list(self.identical_to_baseline)}


def check(engine: Engine, base: Arm, baseline: Arm, variants: list[Arm]) -> CanaryReport:
    """Raise when ``baseline`` is served like ``base``; flag variants served like ``baseline``."""
    prints = fingerprints(engine, [base, baseline, *variants])
    if prints[baseline.name].same_as(prints[base.name]):
        raise RuntimeFailure(
            f"adapter not applied by the engine: {baseline.adapter} produces the base model's outputs on every "
            f"probe prompt (check that the engine's lora_target_modules {list(engine.settings.lora_target_modules)} "
            "cover the adapter's modules)"
        )
    identical = tuple(v.name for v in variants if prints[v.name].same_as(prints[baseline.name]))
    return CanaryReport(True, identical)
