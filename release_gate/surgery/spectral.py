"""Exact spectral decomposition of a LoRA update and its rebuild (pure math).

A LoRA module contributes ``ΔW = s·B·A`` with ``B ∈ R^{d_out×r}``,
``A ∈ R^{r×d_in}``. Forming ``ΔW`` densely and running an SVD costs
``O(d_out·d_in·min(d_out, d_in))``; instead we take thin QR factorizations
of ``B`` and ``Aᵀ`` and an SVD of the ``r×r`` core, which is exact and costs
``O((d_out + d_in)·r²)``. Nothing here touches files or models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Spectrum:
    """Thin SVD ``ΔW = U diag(sigma) Vᵀ`` of one LoRA module, in float64.

    ``U`` is ``d_out×r`` and ``V`` is ``d_in×r`` with orthonormal columns;
    ``sigma`` is sorted in descending order.
    """

    U: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.sigma.numel())

    def dense(self) -> torch.Tensor:
        """``U diag(sigma) Vᵀ`` (for tests and small diagnostics only)."""
        return (self.U * self.sigma) @ self.V.T


def _canonical_signs(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (u_k, v_k) pairs jointly so the largest-magnitude entry of u_k is positive.

    The SVD fixes each pair only up to a shared sign; a deterministic choice
    makes sidecars and diagnostics reproducible. ``u_k v_kᵀ`` — and hence
    every sensitivity ``g_k = u_kᵀ G v_k`` — is unchanged by the flip.
    """
    idx = U.abs().argmax(dim=0)
    signs = torch.sign(U[idx, torch.arange(U.shape[1])])
    signs[signs == 0] = 1.0
    return U * signs, V * signs


def thin_svd(B: torch.Tensor, A: torch.Tensor, scale: float) -> Spectrum:
    """Exact thin SVD of ``scale·B·A`` without forming the product.

    ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a`` give
    ``scale·B·A = Q_b (scale·R_b R_aᵀ) Q_aᵀ``; the SVD of the small core
    ``U_c Σ V_cᵀ`` lifts to ``U = Q_b U_c``, ``V = Q_a V_c``.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"LoRA factors do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
    r = B.shape[1]
    if r > min(B.shape[0], A.shape[1]):
        raise ValueError(f"rank {r} exceeds the module's dimensions {B.shape[0]}×{A.shape[1]}")
    B64 = B.detach().to(torch.float64)
    A64 = A.detach().to(torch.float64)
    q_b, r_b = torch.linalg.qr(B64, mode="reduced")
    q_a, r_a = torch.linalg.qr(A64.T, mode="reduced")
    core = float(scale) * (r_b @ r_a.T)
    u_c, sigma, v_ct = torch.linalg.svd(core)
    U, V = _canonical_signs(q_b @ u_c, q_a @ v_ct.T)
    return Spectrum(U=U, sigma=sigma, V=V)


def rebuild_gauge(A: torch.Tensor, V: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Rewrite ``A`` so that ``s·B·A' = U diag(α·σ) Vᵀ`` with ``B`` unchanged.

    ``A' = A + A·V·diag(α−1)·Vᵀ``: since ``s·B·A = U Σ Vᵀ``, right-multiplying
    by ``I + V diag(α−1) Vᵀ`` scales each singular direction by ``α_k``.
    Keeping ``B`` bit-identical keeps the adapter's gauge, so an identity edit
    (α ≡ 1) returns ``A`` up to float64→storage rounding.
    """
    A64 = A.detach().to(torch.float64)
    V64 = V.to(torch.float64)
    a64 = alpha.to(torch.float64)
    return A64 + ((A64 @ V64) * (a64 - 1.0)) @ V64.T


def rebuild_balanced(
    spectrum: Spectrum, sigma_new: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """New factors ``B' = U diag(√(σ'/s))``, ``A' = diag(√(σ'/s)) Vᵀ``.

    Splits the edited spectrum evenly between the factors, which keeps both of
    them well conditioned (useful before further fine-tuning); the rank and
    the scaling ``s`` stay those of the source adapter.
    """
    root = torch.sqrt(sigma_new.to(torch.float64).clamp_min(0.0) / float(scale))
    return spectrum.U * root, root[:, None] * spectrum.V.T
