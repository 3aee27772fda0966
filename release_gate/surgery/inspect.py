"""Spectral diagnostics of an adapter (``release-gate inspect``), after the paper's Fig. 1.

Per module: the singular values, how concentrated their energy is and the
effective rank. Across layers, for each residual-writing projection: how
aligned the leading output directions ``u₁`` are and the top-m subspace
overlap ``Align_U = ‖U_aᵀU_b‖²_F / m`` (random subspaces give ≈ m/d); and,
within each layer, the o_proj vs down_proj overlap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .adapter import LoraAdapter, LoraModule
from .spectral import Spectrum, thin_svd

TOP_SHARE = 0.2
RESIDUAL_WRITERS = ("o_proj", "down_proj")


def energy_concentration(sigma: np.ndarray, share: float = TOP_SHARE) -> float:
    """Fraction of Σσ held by the top ``share`` of components (at least one)."""
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    k = max(1, math.ceil(share * sigma.size))
    return float(np.sort(sigma)[::-1][:k].sum() / total)


def effective_rank(sigma: np.ndarray) -> float:
    """Roy–Vetterli effective rank ``exp(H(σ/Σσ))``: r for a flat spectrum, 1 for one spike."""
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def subspace_overlap(U_a: torch.Tensor, U_b: torch.Tensor, m: int) -> float:
    """``Align_U`` of the top-m columns: the mean cos² of their principal angles."""
    return float((U_a[:, :m].T @ U_b[:, :m]).pow(2).sum() / m)


def _matrix(spectra: list[Spectrum], fn) -> list[list[float]]:
    return [[round(fn(a, b), 6) for b in spectra] for a in spectra]


def _mean_off_diagonal(matrix: list[list[float]]) -> float | None:
    n = len(matrix)
    values = [matrix[i][j] for i in range(n) for j in range(n) if i != j]
    return float(np.mean(values)) if values else None


def diagnose(adapter: LoraAdapter, top_m: int = 8) -> dict[str, Any]:
    """All diagnostics as a JSON-friendly dict (what ``inspect --json`` prints)."""
    modules = sorted(adapter.modules.values(), key=lambda m: (m.layer if m.layer is not None else -1, m.name))
    spectra = {m.name: thin_svd(m.B, m.A, m.scale) for m in modules}
    per_module = [_module_row(m, spectra[m.name]) for m in modules]
    by_kind: dict[str, list[LoraModule]] = defaultdict(list)
    for m in modules:
        if m.kind in RESIDUAL_WRITERS:
            by_kind[m.kind].append(m)
    alignment = {
        kind: _layer_alignment([spectra[m.name] for m in group], [m.layer for m in group], top_m)
        for kind, group in by_kind.items()
    }
    return {
        "adapter": str(adapter.path),
        "sha256": adapter.sha256,
        "n_modules": len(modules),
        "ranks": sorted({m.rank for m in modules}),
        "top_share": TOP_SHARE,
        "modules": per_module,
        "alignment": alignment,
        "cross_module": _cross_module(by_kind, spectra, top_m),
    }


def _module_row(module: LoraModule, spectrum: Spectrum) -> dict[str, Any]:
    sigma = spectrum.sigma.numpy()
    return {
        "name": module.name, "layer": module.layer, "kind": module.kind, "rank": module.rank,
        "shape": [module.d_out, module.d_in], "scale": module.scale,
        "sigma": [round(float(s), 8) for s in sigma],
        "energy_top": round(energy_concentration(sigma), 6),
        "effective_rank": round(effective_rank(sigma), 4),
    }


def _layer_alignment(spectra: list[Spectrum], layers: list[int | None], top_m: int) -> dict[str, Any]:
    m = max(1, min(top_m, *(s.rank for s in spectra)))
    d = spectra[0].U.shape[0]
    u1 = _matrix(spectra, lambda a, b: abs(float(a.U[:, 0] @ b.U[:, 0])))
    align = _matrix(spectra, lambda a, b: subspace_overlap(a.U, b.U, m))
    return {
        "layers": layers, "m": m, "d_model": d,
        "u1_abs_cos": u1, "align_u": align,
        "mean_u1_abs_cos": _mean_off_diagonal(u1), "mean_align_u": _mean_off_diagonal(align),
        "random_u1_abs_cos": math.sqrt(2.0 / (math.pi * d)), "random_align_u": m / d,
    }


def _cross_module(by_kind: dict[str, list[LoraModule]], spectra: dict[str, Spectrum], top_m: int) -> dict[str, Any] | None:
    """o_proj vs down_proj overlap within each layer (module synergy, Fig. 1c)."""
    if not all(k in by_kind for k in RESIDUAL_WRITERS):
        return None
    first = {m.layer: spectra[m.name] for m in by_kind[RESIDUAL_WRITERS[0]]}
    second = {m.layer: spectra[m.name] for m in by_kind[RESIDUAL_WRITERS[1]]}
    layers = sorted(set(first) & set(second), key=lambda x: -1 if x is None else x)
    if not layers:
        return None
    m = max(1, min(top_m, *(first[layer].rank for layer in layers), *(second[layer].rank for layer in layers)))
    d = first[layers[0]].U.shape[0]
    overlap = [round(subspace_overlap(first[layer].U, second[layer].U, m), 6) for layer in layers]
    return {"layers": layers, "m": m, "align_u": overlap, "mean_align_u": float(np.mean(overlap)), "random_align_u": m / d}


def format_text(report: dict[str, Any], max_sigma: int = 6, max_rows: int | None = None) -> str:
    """A terminal summary of :func:`diagnose` (the full numbers are in ``--json``).

    ``max_rows`` caps the per-module table (the alignment summary always shows).
    """
    lines = [
        f"adapter  {report['adapter']}",
        f"sha256   {report['sha256']}",
        f"modules  {report['n_modules']}   ranks {report['ranks']}",
        "",
        f"{'module':<44} {'rank':>4} {'σ₁':>9} {'top20%':>7} {'eff.rank':>8}  σ (first {max_sigma})",
    ]
    rows = report["modules"] if max_rows is None else report["modules"][:max_rows]
    for row in rows:
        sigma = row["sigma"]
        head = " ".join(f"{s:.3g}" for s in sigma[:max_sigma])
        lines.append(
            f"{row['name']:<44} {row['rank']:>4} {sigma[0] if sigma else 0:>9.4g} "
            f"{row['energy_top']:>7.1%} {row['effective_rank']:>8.2f}  {head}"
        )
    if len(rows) < len(report["modules"]):
        lines.append(f"… {len(report['modules']) - len(rows)} more modules (all numbers: inspect --json)")
    for kind, block in report["alignment"].items():
        lines += [
            "",
            f"{kind}: cross-layer alignment over {len(block['layers'])} layers (top-m = {block['m']}, d = {block['d_model']})",
            f"  mean |u₁ᵀu₁'| off-diagonal {_fmt(block['mean_u1_abs_cos'])}   random ≈ {block['random_u1_abs_cos']:.4f}",
            f"  mean Align_U off-diagonal  {_fmt(block['mean_align_u'])}   random ≈ m/d = {block['random_align_u']:.4f}",
        ]
    cross = report.get("cross_module")
    if cross:
        lines += [
            "",
            f"o_proj vs down_proj within a layer (top-m = {cross['m']}): mean Align_U {cross['mean_align_u']:.4f}"
            f"   random ≈ {cross['random_align_u']:.4f}",
        ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a (one layer)" if value is None else f"{value:.4f}"
