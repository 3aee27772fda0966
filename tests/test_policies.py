"""Policies against hand-computed cases, plus validation messages (SPEC §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from release_gate.errors import BadInput
from release_gate.surgery.policies import (
    AbsSelect,
    GradDirection,
    InvalidParameter,
    ModuleSignal,
    RandomIndex,
    SmoothAbs,
    build_policy,
    finalize,
)
from release_gate.surgery.policy_files import load_policy_files, resolve_policy


def signal(a=None, g=None, sigma=None, name="m"):
    r = len(a if a is not None else g)
    sigma = np.linspace(2.0, 1.0, r) if sigma is None else np.asarray(sigma, float)
    return ModuleSignal(name, sigma, None if a is None else np.asarray(a, float),
                        None if g is None else np.asarray(g, float))


NO_ENERGY = dict(preserve_energy="none")


def test_abs_select_top_and_bottom():
    alpha = AbsSelect(**NO_ENERGY).apply(signal([5, 1, 3, 2, 4])).alpha
    # r=5: k_core = max(round(1.0), 1) = 1 (index 0), k_noise = round(1.0) = 1 (index 1)
    np.testing.assert_allclose(alpha, [1.25, 0.8, 1.0, 1.0, 1.0])


def test_abs_select_counts_use_python_round():
    policy = AbsSelect(core_frac=0.25, noise_frac=0.35)
    assert policy.counts(10) == (2, 4)  # round(2.5) = 2, round(3.5) = 4 (banker's rounding)
    assert policy.counts(1) == (1, 0)  # min_core_k lifts round(0.25) = 0 to 1; no room for noise
    assert AbsSelect(core_frac=0.9, noise_frac=0.9).counts(10) == (9, 1)


def test_abs_select_ties_break_by_lower_index():
    alpha = AbsSelect(core_frac=0.25, noise_frac=0.25, **NO_ENERGY).apply(signal([2, 2, 1, 1])).alpha
    np.testing.assert_allclose(alpha, [1.25, 1.0, 1.0, 0.8])


@pytest.mark.parametrize("a", [[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
def test_all_equal_sensitivities_do_not_edit(a):
    scaled = AbsSelect().apply(signal(a))
    np.testing.assert_allclose(scaled.alpha, 1.0)
    assert "no edit" in scaled.note
    smooth = SmoothAbs().apply(signal(a))
    np.testing.assert_allclose(smooth.alpha, 1.0)
    assert smooth.note


def test_rank_one_is_left_alone():
    scaled = AbsSelect().apply(signal([0.7]))
    np.testing.assert_allclose(scaled.alpha, [1.0])


def test_zero_sigma_component_keeps_alpha_one():
    scaled = AbsSelect(**NO_ENERGY).apply(signal([9, 1, 5], sigma=[2.0, 1.0, 0.0]))
    # index 0 amplified, index 1 suppressed, index 2 has σ = 0: untouched
    np.testing.assert_allclose(scaled.alpha, [1.25, 0.8, 1.0])
    assert scaled.sigma_new[2] == 0.0


def test_smooth_abs_hand_computed():
    # a = [1, 2, 3] → x = [0.5, 1, 1.5]; Q(0.2) = 0.7, Q(0.8) = 1.3, τ = 0.35·0.6 = 0.21
    # align_mid: p = (1 − 0.8)/(1.25 − 0.8) = 4/9, μ = 1 − τ·logit(p)
    tau = 0.35 * 0.6
    mu = 1.0 - tau * math.log((4 / 9) / (5 / 9))
    expected = [0.8 + 0.45 / (1 + math.exp(-(x - mu) / tau)) for x in (0.5, 1.0, 1.5)]
    alpha = SmoothAbs(**NO_ENERGY).apply(signal([1, 2, 3])).alpha
    np.testing.assert_allclose(alpha, expected, rtol=1e-12)
    assert alpha[1] == pytest.approx(1.0, abs=1e-12)  # gate(center) = mid_factor
    assert expected[0] == pytest.approx(0.830993, abs=1e-5)


def test_smooth_abs_without_alignment_centres_on_median():
    alpha = SmoothAbs(align_mid=False, **NO_ENERGY).apply(signal([1, 2, 3])).alpha
    assert alpha[1] == pytest.approx(0.8 + 0.45 / 2)


def test_smooth_abs_quantile_fallback():
    # core 0.6 + noise 0.6 crosses: q_lo, q_hi fall back to 0.25, 0.75
    a = [1.0, 2.0, 4.0, 8.0]
    x = np.array(a) / np.mean(a)
    tau = 0.35 * (np.quantile(x, 0.75) - np.quantile(x, 0.25))
    mu = np.quantile(x, 0.5)
    expected = 0.8 + 0.45 / (1 + np.exp(-(x - mu) / tau))
    alpha = SmoothAbs(core_frac=0.6, noise_frac=0.6, align_mid=False, **NO_ENERGY).apply(signal(a)).alpha
    np.testing.assert_allclose(alpha, expected)


def test_grad_direction_asymmetric_and_symmetric():
    g = [1.0, -1.0, 2.0, -2.0]  # mean |g| = 1.5 → ĝ = [2/3, −2/3, 4/3, −4/3]
    asym = GradDirection(**NO_ENERGY).apply(signal(g=g)).alpha
    np.testing.assert_allclose(asym, np.exp([-4 / 3, 0.2 * 2 / 3, -8 / 3, 0.2 * 4 / 3]))
    sym = GradDirection(asymmetric=False, **NO_ENERGY).apply(signal(g=g)).alpha
    np.testing.assert_allclose(sym, np.exp([-0.2 * 2 / 3, 0.2 * 2 / 3, -0.2 * 4 / 3, 0.2 * 4 / 3]))
    powered = GradDirection(power=2.0, **NO_ENERGY).apply(signal(g=g)).alpha
    np.testing.assert_allclose(powered[2], math.exp(-2.0 * (4 / 3) ** 2))


@pytest.mark.parametrize("energy,order", [("l1", 1), ("l2", 2)])
def test_energy_preserved(energy, order):
    sigma = np.array([3.0, 2.0, 1.0, 0.5])
    scaled = finalize(sigma, [1.25, 0.8, 1.3, 0.1], energy=energy)
    assert np.linalg.norm(scaled.sigma_new, order) == pytest.approx(np.linalg.norm(sigma, order))
    np.testing.assert_allclose(scaled.sigma_new, scaled.alpha * sigma)


def test_clip_applies_before_energy():
    scaled = finalize(np.array([2.0, 1.0]), [1.0, 0.0], clip_min=0.5, energy="none")
    np.testing.assert_allclose(scaled.sigma_new, [2.0, 0.5])


def test_random_index_matched_counts_and_determinism():
    policy = RandomIndex(preserve_energy="none", seed=0)
    other = RandomIndex(preserve_energy="none", seed=1)
    patterns = set()
    for layer in range(20):
        name = f"model.layers.{layer}.self_attn.o_proj"
        alpha = policy.apply(signal(g=None, a=np.ones(16), name=name)).alpha
        assert np.isclose(alpha, 1.25).sum() == 3 and np.isclose(alpha, 0.8).sum() == 3  # k_core = k_noise = round(3.2)
        again = RandomIndex(preserve_energy="none", seed=0).apply(signal(a=np.ones(16), name=name)).alpha
        np.testing.assert_array_equal(alpha, again)
        patterns.add(tuple(alpha))
        assert not np.array_equal(alpha, other.apply(signal(a=np.ones(16), name=name)).alpha) or layer > 0
    assert len(patterns) > 15  # per-module seeds: modules draw different indices


def test_random_index_needs_no_calibration_and_expands_to_seed_arms():
    arms = resolve_policy("random_index").arms()
    assert [a.name for a in arms] == ["random_index@0", "random_index@1", "random_index@2"]
    assert not arms[0].needs_calibration
    assert RandomIndex(seed=1).apply(ModuleSignal("m", np.ones(8))).alpha.shape == (8,)


@pytest.mark.parametrize(
    "kind,params,key",
    [
        ("abs_select", {"core_frac": 1.5}, "core_frac"),
        ("abs_select", {"amp_factor": 0.5}, "amp_factor"),
        ("abs_select", {"bogus": 1}, "bogus"),
        ("grad_direction", {"eta_suppress": -1.0}, "eta_suppress"),
        ("smooth_abs", {"temperature": 0}, "temperature"),
        ("smooth_abs", {"mid_factor": 2.0}, "mid_factor"),
        ("abs_select", {"preserve_energy": "l3"}, "preserve_energy"),
        ("abs_select", {"min_core_k": 1.5}, "min_core_k"),
        ("random_index", {"seeds": "zero"}, "seeds"),
    ],
)
def test_invalid_parameters_name_the_key(kind, params, key):
    with pytest.raises(InvalidParameter) as info:
        build_policy(kind, params)
    assert info.value.key == key


def test_policy_files_ship_spec_defaults():
    files = load_policy_files()
    assert set(files) >= {"abs_select", "smooth_abs", "grad_direction", "random_index"}
    assert files["abs_select"].build() == AbsSelect(name="abs_select")
    assert files["grad_direction"].build() == GradDirection(name="grad_direction")
    assert files["smooth_abs"].build() == SmoothAbs(name="smooth_abs")
    assert files["random_index"].build().seeds == (0, 1, 2)


def test_user_policy_file_and_errors_name_file_and_key(tmp_path):
    strong = tmp_path / "strong.yaml"
    strong.write_text("name: strong_abs\nkind: abs_select\nparams:\n  amp_factor: 1.5\n")
    policy = resolve_policy("strong_abs", extra_dirs=[tmp_path])
    assert policy.amp_factor == 1.5 and policy.sup_factor == 0.8
    assert resolve_policy(str(strong), {"amp_factor": 2.0}).amp_factor == 2.0
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nkind: abs_select\nparams:\n  noise_frac: -0.1\n")
    with pytest.raises(BadInput, match=r"broken\.yaml.*'noise_frac'"):
        resolve_policy(str(broken))
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("name: x\nkind: [abs_select\n")
    with pytest.raises(BadInput, match=r"syntax\.yaml: YAML syntax error at line 3"):
        resolve_policy(str(syntax))
    with pytest.raises(BadInput, match="unknown policy 'nope'"):
        resolve_policy("nope")
    with pytest.raises(BadInput, match=r"--set: policy 'abs_select', key 'amp_factor': must be ≥ sup_factor"):
        resolve_policy("abs_select", {"sup_factor": 2.0})
