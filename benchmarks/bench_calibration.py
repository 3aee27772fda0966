"""Calibration speed: our exact per-example pass vs the reference code's naive loop, one run.

Workload (issue #2): N=128 GSM8K question+answer pairs, SmolLM2-135M-Instruct in
float32 on CPU, a rank-16 LoRA on the seven projections, o_proj/down_proj edited.

Baseline — the way the paper's reference code does it: a PEFT model with the
LoRA parameters trainable, the HF token-mean loss, batch size 2, right padding,
hooks that only sum g per batch (no per-example values) with a host sync per
module per batch. Ours — ``per_example_sensitivities``: merged weights, no
parameter gradients, logits only at answer positions, length-bucketed batches,
results on the device until the end; it returns N×r per-example values.

Prints times and ratios measured in this one run (no assertions).
    python benchmarks/bench_calibration.py [--n 128] [--batch-size 8]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from release_gate.assets import fetch  # noqa: E402
from release_gate.surgery.adapter import load_adapter  # noqa: E402
from release_gate.surgery.calibration import (  # noqa: E402
    CalibrationConfig,
    _Probe,
    answer_nll,
    encode,
    length_buckets,
    load_merged_model,
    per_example_sensitivities,
    read_examples,
)
from release_gate.surgery.edit import decompose  # noqa: E402

from factories import smollm2_adapter  # noqa: E402


def gsm8k_calibration(path: Path, out: Path, n: int) -> Path:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    out.write_text("".join(
        json.dumps({"prompt": f"Question: {r['question']}\nAnswer:", "answer": " " + r["answer"]}) + "\n" for r in rows
    ))
    return out


def naive_reference_loop(model_dir: str, adapter_dir: Path, encoded, spectra, batch_size: int = 2) -> dict:
    """The reference code's way: PEFT LoRA trainable, token-mean loss, batch-summed g."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True).train(False)
    named = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()}
    sums = {name: torch.zeros(s.rank, dtype=torch.float64) for name, s in spectra.items()}
    handles, inputs = [], {}
    for name, spectrum in spectra.items():
        U, V = spectrum.U.float(), spectrum.V.float()
        layer = named[name]

        def fwd(mod, args, out, name=name):
            inputs[name] = args[0].detach()

        def bwd(mod, grad_in, grad_out, name=name, U=U, V=V):
            g = ((grad_out[0] @ U) * (inputs[name] @ V)).sum(dim=(0, 1))
            sums[name] += g.double().cpu()  # host sync per module per batch

        handles += [layer.register_forward_hook(fwd), layer.register_full_backward_hook(bwd)]
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for b, e in enumerate(chunk):
            ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[b, : len(e.input_ids)] = 1
            labels[b, e.n_prompt : len(e.input_ids)] = torch.tensor(e.input_ids[e.n_prompt :])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    for handle in handles:
        handle.remove()
    return sums


def plain_forward_backward(model, encoded, first_module, batch_size: int, pad_id: int) -> None:
    """The same batches and loss as ours, without any sensitivity hooks."""
    handle = first_module.register_forward_pre_hook(_Probe.start_graph)
    try:
        for rows in length_buckets(encoded, batch_size):
            answer_nll(model, encoded, rows, pad_id).backward()
    finally:
        handle.remove()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-naive", action="store_true", help="time only our pass (quick check)")
    args = parser.parse_args()
    torch.manual_seed(0)
    assets = fetch()
    model_dir = str(assets.model_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-calib-"))
    adapter_dir = smollm2_adapter(Path(model_dir), work / "lora", seed=1, b_std=0.01)
    adapter = load_adapter(adapter_dir)
    spectra = decompose(adapter.select())
    cfg = CalibrationConfig(gsm8k_calibration(assets.gsm8k, work / "calib.jsonl", args.n), n=args.n)
    examples, _ = read_examples(cfg)
    model, tokenizer = load_merged_model(model_dir, adapter, "cpu", torch.float32)
    encoded = [encode(e, tokenizer, cfg) for e in examples]
    tokens = sum(len(e.input_ids) for e in encoded)
    print(f"workload: N={len(encoded)} GSM8K pairs, {tokens} tokens, {len(spectra)} edited modules, "
          f"r=16 on 7 projections, SmolLM2-135M float32, {torch.get_num_threads()} threads")

    per_example_sensitivities(model, encoded[:8], spectra, args.batch_size, tokenizer.pad_token_id)  # warm-up
    t_plain, _ = timed(plain_forward_backward, model, encoded, dict(model.named_modules())[next(iter(spectra))],
                       args.batch_size, tokenizer.pad_token_id)
    t_ours, per_example = timed(per_example_sensitivities, model, encoded, spectra, args.batch_size,
                                tokenizer.pad_token_id)
    print(f"plain forward+backward (same batches, bs={args.batch_size}): {t_plain:8.1f} s")
    print(f"ours, exact per-example g (bs={args.batch_size}):          {t_ours:8.1f} s   "
          f"hook overhead ×{t_ours / t_plain:.3f}")
    if args.skip_naive:
        return
    del model
    t_naive, sums = timed(naive_reference_loop, model_dir, adapter_dir, encoded, spectra, 2)
    print(f"naive reference loop (PEFT trainable, bs=2, batch sums):     {t_naive:8.1f} s")
    print(f"ratio ours / naive: {t_ours / t_naive:.3f}   (target ≤ 0.70)")
    # sanity: both see the same sensitivity directions (token-mean vs per-example-mean loss differ in weights)
    agree = np.mean([
        np.corrcoef(np.abs(per_example[name]).mean(0), np.abs(sums[name].numpy()))[0, 1] for name in spectra
    ])
    print(f"mean correlation of per-module |g| profiles, ours vs naive: {agree:.3f}")


if __name__ == "__main__":
    main()
