"""GPU smoke benchmark: calibration and all four policies on a Llama-3.1-8B-shaped model, through the project's code.

Needs only torch, transformers, peft (and numpy, safetensors, pyyaml): no vLLM, no hub. A model with the
Llama-3.1-8B shape and random bf16 weights is built on the device, a rank-16 LoRA on the seven projections
is saved by PEFT and read back by ``release_gate.surgery.adapter.load_adapter``, merged, and then:

* the exact per-example sensitivities (``per_example_sensitivities``) of the 64 edited modules
  (o_proj and down_proj of 32 layers) over N synthetic prompt/answer pairs (GSM8K-like lengths);
* the thin SVD of every edited module, then every built-in policy (abs_select, smooth_abs, grad_direction,
  random_index, one arm per seed) applied and the factors rebuilt (``make_variant``).

Prints timings (CUDA-synchronized), peak device memory and a sanity check of the sensitivities. One run,
no assertions. The project never needs a GPU; ``--tiny`` runs the same path on a toy shape (CI uses it on
the CPU so this script cannot rot).

    PYTHONPATH=. python benchmarks/gpu_smoke.py              # on a CUDA machine
    PYTHONPATH=. python benchmarks/gpu_smoke.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from release_gate.constants import LLAMA_PROJECTIONS  # noqa: E402
from release_gate.surgery.adapter import load_adapter  # noqa: E402
from release_gate.surgery.calibration import Encoded, Sensitivities, merge_adapter, per_example_sensitivities  # noqa: E402
from release_gate.surgery.edit import decompose, make_variant  # noqa: E402
from release_gate.surgery.policy_files import load_policy_files  # noqa: E402

LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                   tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args, **kwargs):
    synchronize(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - start, result


def build_model(shape: dict, device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A Llama model of ``shape`` with random weights, created directly on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval().requires_grad_(False)


def save_lora(model: torch.nn.Module, out: Path, rank: int, seed: int) -> Path:
    """A rank-``rank`` LoRA on the seven projections with random non-zero factors, saved by PEFT."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LLAMA_PROJECTIONS),
                                                  lora_dropout=0.0))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_((torch.randn(param.shape, generator=gen) * 0.01).to(param.dtype))
            elif "lora_A" in name:
                param.copy_((torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5).to(param.dtype))
    peft_model.save_pretrained(out)
    peft_model.unload()
    return out


def synthetic_pairs(n: int, vocab: int, seed: int, scale: float = 1.0) -> list[Encoded]:
    """GSM8K-like token lengths (prompt 60–220, answer 40–160 tokens), random ids (no tokenizer, no hub)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        n_prompt = max(2, int(rng.integers(60, 220) * scale))
        n_answer = max(2, int(rng.integers(40, 160) * scale))
        ids = rng.integers(3, vocab, size=n_prompt + n_answer).tolist()
        out.append(Encoded(ids, n_prompt))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--n", type=int, default=128, help="calibration pairs (default 128)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="a toy shape (CPU check of the code path)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    shape = TINY if args.tiny else LLAMA_31_8B
    record: dict = {"device": device, "dtype": args.dtype, "n": args.n, "batch_size": args.batch_size,
                    "rank": args.rank, "shape": "tiny" if args.tiny else "llama-3.1-8b",
                    "torch": torch.__version__}
    if device.startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()

    t_build, model = timed(device, build_model, shape, device, dtype, seed=0)
    record["build_model_s"] = round(t_build, 2)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        t_lora, adapter_dir = timed(device, save_lora, model, Path(tmp) / "lora", args.rank, 1)
        adapter = load_adapter(adapter_dir)
    record["lora_save_load_s"] = round(t_lora, 2)
    record["lora_modules"] = len(adapter.modules)
    merge_adapter(model, adapter)

    t_svd, spectra = timed(device, decompose, adapter.select(("o_proj", "down_proj")))
    record["edited_modules"] = len(spectra)
    record["thin_svd_s"] = round(t_svd, 3)

    encoded = synthetic_pairs(args.n, shape["vocab_size"], seed=2, scale=0.1 if args.tiny else 1.0)
    record["tokens"] = sum(len(e.input_ids) for e in encoded)
    per_example_sensitivities(model, encoded[: args.batch_size], spectra, args.batch_size)  # warm-up (kernels)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_cal, per_example = timed(device, per_example_sensitivities, model, encoded, spectra, args.batch_size)
    record["calibration_s"] = round(t_cal, 2)
    record["calibration_tokens_per_s"] = round(record["tokens"] / t_cal, 1)
    if device.startswith("cuda"):
        record["calibration_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    finite = all(np.isfinite(v).all() for v in per_example.values())
    record["sensitivities_finite"] = bool(finite)
    record["sensitivity_shape"] = list(next(iter(per_example.values())).shape)
    sensitivities = Sensitivities(per_example)

    policies = [arm for policy_file in load_policy_files().values() for arm in policy_file.build().arms()]
    timings = {}
    for policy in policies:
        t_policy, variant = timed(device, make_variant, adapter, spectra, policy, sensitivities)
        edited = sum(1 for e in variant.edits if not np.allclose(e.alpha, 1.0))
        timings[policy.name] = {"seconds": round(t_policy, 3), "modules_edited": edited}
    record["policies"] = timings
    record["all_policies_s"] = round(sum(t["seconds"] for t in timings.values()), 3)
    if device.startswith("cuda"):
        record["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
