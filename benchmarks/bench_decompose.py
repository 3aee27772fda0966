"""Decomposition + all four policies + rebuild for a Llama-3.1-8B-shaped rank-16 adapter.

Issue #2 workload: 32 layers, o_proj (4096×4096) and down_proj (4096×14336)
edited, random bf16 LoRA factors. The reference code does decomposition, the
four policies and the rebuild in 0.45 s on this 2-core machine; a dense
``torch.linalg.svd`` of ΔW takes ~1000 s per 32 modules. Dense SVD is timed
on one module of each shape and extrapolated to all 64.

Prints times and ratios measured in this one run (no assertions).
    python benchmarks/bench_decompose.py [--layers 32] [--skip-dense]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from release_gate.surgery.policies import ModuleSignal
from release_gate.surgery.policy_files import resolve_policy
from release_gate.surgery.spectral import rebuild_gauge, thin_svd

HIDDEN, INTERMEDIATE, RANK, ALPHA = 4096, 14336, 16, 32
REFERENCE_SECONDS = 0.45


def random_adapter(layers: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.down_proj": (HIDDEN, INTERMEDIATE)}
    out = {}
    for layer in range(layers):
        for suffix, (d_out, d_in) in shapes.items():
            B = (torch.randn(d_out, RANK, generator=gen) * 0.01).to(torch.bfloat16)
            A = (torch.randn(RANK, d_in, generator=gen) / d_in**0.5).to(torch.bfloat16)
            out[f"model.layers.{layer}.{suffix}"] = (B, A)
    return out


def surgery(factors, policies, sensitivities) -> int:
    """Decompose every module once, then apply every policy and rebuild A."""
    scale = ALPHA / RANK
    rebuilt = 0
    for name, (B, A) in factors.items():
        spectrum = thin_svd(B, A, scale)
        a, g = sensitivities[name]
        signal = ModuleSignal(name, spectrum.sigma.numpy(), a, g)
        for policy in policies:
            alpha = torch.from_numpy(policy.apply(signal).alpha)
            rebuild_gauge(A, spectrum, alpha).to(torch.bfloat16)
            rebuilt += 1
    return rebuilt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of our path (median reported)")
    args = parser.parse_args()
    factors = random_adapter(args.layers)
    rng = np.random.default_rng(0)
    sensitivities = {name: (np.abs(rng.normal(size=RANK)), rng.normal(size=RANK)) for name in factors}
    policies = [resolve_policy(p).arms()[0] for p in ("abs_select", "smooth_abs", "grad_direction", "random_index")]
    surgery(dict(list(factors.items())[:2]), policies, sensitivities)  # warm-up (allocator, BLAS)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        rebuilt = surgery(factors, policies, sensitivities)
        times.append(time.perf_counter() - start)
    ours = float(np.median(times))
    print(f"workload: {len(factors)} modules (o_proj {HIDDEN}×{HIDDEN}, down_proj {HIDDEN}×{INTERMEDIATE}), "
          f"rank {RANK}, bf16 factors, {torch.get_num_threads()} threads")
    print(f"ours: thin SVD + 4 policies + {rebuilt} rebuilds: median {ours:.3f} s, min {min(times):.3f} s "
          f"over {args.repeat} runs   (reference code 0.45 s here: ratio {ours / REFERENCE_SECONDS:.2f})")
    if args.skip_dense:
        return
    dense = 0.0
    for name in ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"):
        B, A = factors[name]
        delta = (ALPHA / RANK) * B.float() @ A.float()
        start = time.perf_counter()
        torch.linalg.svd(delta, full_matrices=False)
        dense += time.perf_counter() - start
    dense_all = dense * len(factors) / 2
    print(f"dense torch.linalg.svd (float32): {dense:.1f} s for 2 modules → {dense_all:.0f} s for "
          f"{len(factors)} (extrapolated)")
    print(f"ratio dense / ours: ×{dense_all / ours:,.0f}")


if __name__ == "__main__":
    main()
