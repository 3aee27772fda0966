"""Thin SVD and rebuilds against dense references (SPEC §12 exactness)."""

from __future__ import annotations

import math

import pytest
import torch

from release_gate.surgery.policies import finalize
from release_gate.surgery.spectral import rebuild_balanced, rebuild_gauge, thin_svd


def _factors(d_out: int, d_in: int, r: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d_out, r, generator=gen).to(dtype), torch.randn(r, d_in, generator=gen).to(dtype)


@pytest.mark.parametrize("shape", [(64, 48, 8), (48, 200, 16), (96, 40, 1), (33, 33, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_thin_svd_matches_dense(shape, dtype):
    d_out, d_in, r = shape
    B, A = _factors(d_out, d_in, r, dtype=dtype)
    scale = 2.0
    spec = thin_svd(B, A, scale)
    dense = scale * B.double() @ A.double()
    U_d, S_d, Vh_d = torch.linalg.svd(dense, full_matrices=False)
    torch.testing.assert_close(spec.sigma, S_d[:r], rtol=1e-5, atol=0)
    # singular vectors agree up to one shared sign per component
    cos_u = (spec.U * U_d[:, :r]).sum(0)
    cos_v = (spec.V * Vh_d[:r].T).sum(0)
    torch.testing.assert_close(cos_u.abs(), torch.ones(r, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(cos_u, cos_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(spec.dense(), dense, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(spec.U.T @ spec.U, torch.eye(r, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e5, 1e9])
def test_thin_svd_orthonormal_across_conditioning(cond):
    """Both routes (Gram/Cholesky and the Householder fallback) give orthonormal frames."""
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(500, 8, generator=gen, dtype=torch.float64))
    B = q * torch.logspace(0, math.log10(cond), 8, dtype=torch.float64)
    A = torch.randn(8, 300, generator=gen, dtype=torch.float64)
    spec = thin_svd(B, A, 1.0)
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(spec.U.T @ spec.U, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(spec.V.T @ spec.V, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(spec.dense(), B @ A, atol=1e-9 * (B @ A).abs().max().item(), rtol=0)


def test_thin_svd_of_ill_conditioned_factors_matches_dense():
    gen = torch.Generator().manual_seed(11)
    B = torch.randn(64, 8, generator=gen, dtype=torch.float64) * torch.logspace(0, -7, 8, dtype=torch.float64)
    A = torch.randn(8, 48, generator=gen, dtype=torch.float64)
    spec = thin_svd(B, A, 1.0)
    dense = torch.linalg.svdvals(B @ A)[:8]
    torch.testing.assert_close(spec.sigma, dense, rtol=1e-5, atol=0)


def test_thin_svd_rejects_rank_above_dimensions():
    B, A = _factors(4, 10, 6)
    with pytest.raises(ValueError, match="exceeds"):
        thin_svd(B, A, 1.0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-6), (torch.bfloat16, 1e-6)])
def test_gauge_rebuild_is_exact_and_keeps_identity(dtype, tol):
    B, A = _factors(40, 30, 6, seed=3, dtype=dtype)
    spec = thin_svd(B, A, 0.5)
    alpha = torch.tensor([1.25, 0.8, 1.0, 1.1, 0.0, 2.0], dtype=torch.float64)
    A_new = rebuild_gauge(A, spec, alpha)
    assert A_new.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)  # never bf16 math
    edited = 0.5 * B.double() @ A_new.double()
    expected = (spec.U * (alpha * spec.sigma)) @ spec.V.T
    torch.testing.assert_close(edited, expected, rtol=tol, atol=tol * expected.abs().max().item())
    identity = rebuild_gauge(A, spec, torch.ones(6, dtype=torch.float64))
    assert torch.equal(identity, A)  # exact: B and A are untouched by an identity edit
    torch.testing.assert_close(spec.AV, A.double() @ spec.V, rtol=1e-9, atol=1e-12)


def test_balanced_rebuild_is_exact():
    B, A = _factors(40, 30, 6, seed=4)
    spec = thin_svd(B, A, 3.0)
    sigma_new = spec.sigma * torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    B_new, A_new = rebuild_balanced(spec, sigma_new, 3.0)
    torch.testing.assert_close(3.0 * B_new @ A_new, (spec.U * sigma_new) @ spec.V.T, rtol=1e-9, atol=1e-10)
    # balanced: both factors carry the same column / row norms
    torch.testing.assert_close(B_new.norm(dim=0), A_new.norm(dim=1), rtol=1e-9, atol=0)


def test_rank_deficient_factors_get_alpha_one():
    B, A = _factors(30, 20, 4, seed=5)
    B[:, 3] = B[:, 0]  # duplicated column: rank 3
    A[3] = 0.0
    spec = thin_svd(B, A, 1.0)
    assert spec.sigma[-1] < 1e-10 * spec.sigma[0]
    scaled = finalize(spec.sigma.numpy(), [2.0, 1.0, 1.0, 5.0], clip_min=0.1, energy="l1")
    assert scaled.alpha[-1] == 1.0 and scaled.sigma_new[-1] == 0.0
