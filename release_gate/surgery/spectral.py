"""Exact spectral decomposition of a LoRA update and its rebuild (pure math).

A LoRA module contributes ``ΔW = s·B·A`` with ``B ∈ R^{d_out×r}``,
``A ∈ R^{r×d_in}``. Forming ``ΔW`` densely and running an SVD costs
``O(d_out·d_in·min(d_out, d_in))``; instead we take thin QR factorizations
of ``B`` and ``Aᵀ`` and an SVD of the ``r×r`` core, which is exact and costs
``O((d_out + d_in)·r²)``. Nothing here touches files or models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Spectrum:
    """Thin SVD ``ΔW = U diag(sigma) Vᵀ`` of one LoRA module, in float64.

    ``U`` is ``d_out×r`` and ``V`` is ``d_in×r`` with orthonormal columns;
    ``sigma`` is sorted in descending order. ``AV = A·V`` (r×r) falls out of
    the QR for free and makes every gauge rebuild a single small product.
    """

    U: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor
    AV: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.sigma.numel())

    def transposed_V(self, dtype: torch.dtype) -> torch.Tensor:
        """``Vᵀ`` as a contiguous matrix of ``dtype``, cached (every rebuild of a module reuses it)."""
        cache = self.__dict__.setdefault("_vt", {})
        if dtype not in cache:
            cache[dtype] = self.V.T.to(dtype).contiguous()
        return cache[dtype]

    def dense(self) -> torch.Tensor:
        """``U diag(sigma) Vᵀ`` (for tests and small diagnostics only)."""
        return (self.U * self.sigma) @ self.V.T


def _canonical_signs(U: torch.Tensor) -> torch.Tensor:
    """Signs that flip (u_k, v_k) pairs jointly so the largest-magnitude entry of u_k is positive.

    The SVD fixes each pair only up to a shared sign; a deterministic choice
    makes sidecars and diagnostics reproducible. ``u_k v_kᵀ`` — and hence
    every sensitivity ``g_k = u_kᵀ G v_k`` — is unchanged by the flip.
    """
    idx = U.abs().argmax(dim=0)
    signs = torch.sign(U[idx, torch.arange(U.shape[1])])
    signs[signs == 0] = 1.0
    return signs


#: Above this condition estimate (ratio of the Cholesky factor's diagonal)
#: the Gram route would lose orthogonality (error ≈ eps·κ²): use Householder.
GRAM_MAX_COND = 1e4


def _triangular_factor(W: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """For a wide float64 ``W`` (r×d, d ≫ r) with ``Wᵀ = Q R``: ``R`` (r×r, upper) and ``X ↦ (Q X)ᵀ``.

    For well-conditioned ``W``, ``R`` comes from a Cholesky factorization of
    the r×r Gram matrix and ``(Q X)ᵀ = (R⁻¹X)ᵀ W`` is one row-major GEMM,
    never forming ``Q`` (BLAS-3, several times faster than Householder QR for
    LoRA shapes); otherwise Householder QR is used.
    """
    L, info = torch.linalg.cholesky_ex(W @ W.T)
    diag = L.diagonal()
    if int(info) == 0 and diag.min() > diag.max() / GRAM_MAX_COND:
        R = L.T
        return R, lambda X: torch.linalg.solve_triangular(R, X, upper=True).T @ W
    Q, R = torch.linalg.qr(W.T, mode="reduced")
    return R, lambda X: (Q @ X).T


def thin_svd(B: torch.Tensor, A: torch.Tensor, scale: float) -> Spectrum:
    """Exact thin SVD of ``scale·B·A`` without forming the product.

    With ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a``, ``scale·B·A = Q_b (scale·R_b R_aᵀ) Q_aᵀ``
    and the SVD of the r×r core ``U_c Σ V_cᵀ`` lifts to ``U = Q_b U_c``,
    ``V = Q_a V_c``.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"LoRA factors do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
    r = B.shape[1]
    if r > min(B.shape[0], A.shape[1]):
        raise ValueError(f"rank {r} exceeds the module's dimensions {B.shape[0]}×{A.shape[1]}")
    r_b, lift_b = _triangular_factor(B.detach().to(torch.float64).T.contiguous())
    r_a, lift_a = _triangular_factor(A.detach().to(torch.float64))
    u_c, sigma, v_ct = torch.linalg.svd(float(scale) * (r_b @ r_a.T))
    U = lift_b(u_c).T
    signs = _canonical_signs(U)
    v_c = v_ct.T * signs
    # A·V = R_aᵀ Q_aᵀ Q_a V_c = R_aᵀ V_c
    return Spectrum(U=U * signs, sigma=sigma, V=lift_a(v_c).T, AV=r_a.T @ v_c)


def rebuild_gauge(A: torch.Tensor, spectrum: Spectrum, alpha: torch.Tensor) -> torch.Tensor:
    """Rewrite ``A`` so that ``s·B·A' = U diag(α·σ) Vᵀ`` with ``B`` unchanged.

    ``A' = A + A·V·diag(α−1)·Vᵀ``: since ``s·B·A = U Σ Vᵀ``, right-multiplying
    by ``I + V diag(α−1) Vᵀ`` scales each singular direction by ``α_k``.
    Keeping ``B`` bit-identical keeps the adapter's gauge, and an identity
    edit (α ≡ 1) returns ``A`` exactly. The update is computed in float32
    (float64 for float64 factors), never in bf16.
    """
    work = torch.promote_types(A.dtype, torch.float32)
    coefficients = (spectrum.AV * (alpha.to(torch.float64) - 1.0)).to(work)
    return torch.addmm(A.detach().to(work), coefficients, spectrum.transposed_V(work))


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
