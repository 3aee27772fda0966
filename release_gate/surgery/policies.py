"""Spectral editing policies (pure math on per-module vectors).

A policy maps one module's singular values and aggregated sensitivities to
per-component scales ``α``; every policy then goes through the same clip
and energy-preservation step (:func:`finalize`). Policies are plain frozen
dataclasses registered by ``kind`` so that ``policies/*.yaml`` files — data,
not code — choose a kind and its parameters (see :mod:`.policy_files`).
"""

from __future__ import annotations

import hashlib
import math
import typing
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

#: Denominator floor of the within-module normalizations (SPEC §4).
NORM_FLOOR = 1e-8
#: Singular values at or below this fraction of the largest are exact zeros
#: (rank-deficient factors): they are never rescaled.
ZERO_SIGMA_RTOL = 1e-10
#: A spread of normalized magnitudes below this counts as "all equal".
DEGENERATE_RANGE = 1e-12
ENERGY_NORMS = ("l1", "l2", "none")


class InvalidParameter(ValueError):
    """A policy parameter is out of range; ``key`` names it for the user."""

    def __init__(self, key: str, message: str, related: tuple[str, ...] = ()) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.related = related


@dataclass(frozen=True)
class ModuleSignal:
    """What a policy sees of one module.

    ``mean_abs`` is the mean over calibration examples of ``|g_k|`` and
    ``mean_signed`` the mean of signed ``g_k``; both are ``None`` for
    policies that need no calibration.
    """

    name: str
    sigma: np.ndarray
    mean_abs: np.ndarray | None = None
    mean_signed: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.sigma.shape[0])


@dataclass(frozen=True)
class Scaling:
    """A policy's verdict on one module.

    ``raw_alpha`` is the policy's own output; ``alpha = sigma_new / sigma``
    after clip and energy preservation (1 on zero components).
    """

    raw_alpha: np.ndarray
    alpha: np.ndarray
    sigma_new: np.ndarray
    note: str | None = None


POLICY_KINDS: dict[str, type[Policy]] = {}


def register(kind: str):
    """Class decorator adding a policy dataclass to :data:`POLICY_KINDS`."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        cls.kind = kind
        POLICY_KINDS[kind] = cls
        return cls

    return wrap


@dataclass(frozen=True)
class Policy:
    """Parameters shared by every policy: how the edited spectrum is bounded.

    ``sigma_clip_min`` floors every edited σ'; ``preserve_energy`` rescales
    σ' to the source's l1 (Σσ) or l2 (‖σ‖) norm, or not at all.
    """

    name: str = ""
    preserve_energy: str = "l1"
    sigma_clip_min: float = 0.0

    kind: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.preserve_energy not in ENERGY_NORMS:
            raise InvalidParameter("preserve_energy", f"must be one of {', '.join(ENERGY_NORMS)}")
        _non_negative(self, "sigma_clip_min")

    def raw_alpha(self, signal: ModuleSignal) -> tuple[np.ndarray, str | None]:
        """Per-component scales before clip/energy, and a note when degenerate."""
        raise NotImplementedError

    def apply(self, signal: ModuleSignal) -> Scaling:
        alpha, note = self.raw_alpha(signal)
        return finalize(signal.sigma, alpha, self.sigma_clip_min, self.preserve_energy, note)

    def arms(self) -> list[Policy]:
        """The concrete policies this one stands for (one per seed for controls)."""
        return [self]

    def parameters(self) -> dict[str, Any]:
        """Every parameter, for sidecars and listings (JSON-friendly)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _non_negative(policy: Policy, *keys: str) -> None:
    for key in keys:
        if getattr(policy, key) < 0:
            raise InvalidParameter(key, f"must be ≥ 0, got {getattr(policy, key)}")


def _fraction(policy: Policy, *keys: str) -> None:
    for key in keys:
        value = getattr(policy, key)
        if not 0.0 <= value <= 1.0:
            raise InvalidParameter(key, f"must be a fraction in [0, 1], got {value}")


def _factors(policy: Policy) -> None:
    """amp/sup/mid factors are non-negative and amplification is not below suppression."""
    _non_negative(policy, "amp_factor", "sup_factor", "mid_factor")
    if policy.amp_factor < policy.sup_factor:
        raise InvalidParameter(
            "amp_factor", f"must be ≥ sup_factor ({policy.amp_factor} < {policy.sup_factor})", ("sup_factor",)
        )


def finalize(
    sigma: np.ndarray,
    alpha: np.ndarray,
    clip_min: float = 0.0,
    energy: str = "l1",
    note: str | None = None,
) -> Scaling:
    """Apply ``σ' = α·σ``, the clip ``σ' ≥ clip_min`` and energy preservation.

    Zero (rank-deficient) components are left at σ' = 0 with α = 1: scaling
    them is meaningless and clipping them up would invent new directions.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    raw = np.asarray(alpha, dtype=np.float64)
    live = sigma > sigma.max(initial=0.0) * ZERO_SIGMA_RTOL
    new = np.where(live, np.maximum(raw * sigma, clip_min), 0.0)
    if energy != "none" and live.any():
        order = 1 if energy == "l1" else 2
        target = np.linalg.norm(sigma[live], ord=order)
        current = np.linalg.norm(new[live], ord=order)
        if current > 0:
            new = new * (target / current)
        else:
            note = _join(note, "edited spectrum is all zero: energy cannot be restored")
    final_alpha = np.ones_like(sigma)
    np.divide(new, sigma, out=final_alpha, where=live)
    return Scaling(raw_alpha=raw, alpha=final_alpha, sigma_new=new, note=note)


def _join(first: str | None, second: str) -> str:
    return second if not first else f"{first}; {second}"


def normalized_magnitudes(mean_abs: np.ndarray) -> np.ndarray:
    """``x_k = a_k / mean_j a_j`` (SPEC §4), with a floor on the denominator."""
    a = np.asarray(mean_abs, dtype=np.float64)
    return a / max(float(a.mean()), NORM_FLOOR)


def normalized_signed(mean_signed: np.ndarray) -> np.ndarray:
    """``ĝ_k = ḡ_k / mean_j |ḡ_j|`` (SPEC §4), with a floor on the denominator."""
    g = np.asarray(mean_signed, dtype=np.float64)
    return g / max(float(np.abs(g).mean()), NORM_FLOOR)


def _require(signal: ModuleSignal, attr: str, policy: Policy) -> np.ndarray:
    value = getattr(signal, attr)
    if value is None:
        raise ValueError(f"policy {policy.name or policy.kind} needs calibration sensitivities")
    return np.asarray(value, dtype=np.float64)


@dataclass(frozen=True)
class _ThreeLevel(Policy):
    """Shared parameters of the hard-selection policies (core / mid / noise)."""

    core_frac: float = 0.2
    noise_frac: float = 0.2
    amp_factor: float = 1.25
    sup_factor: float = 0.80
    mid_factor: float = 1.0
    min_core_k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self, "core_frac", "noise_frac")
        _non_negative(self, "min_core_k")
        _factors(self)

    def counts(self, r: int) -> tuple[int, int]:
        """``(k_core, k_noise)`` with Python ``round`` as in the reference code."""
        k_core = min(r, max(round(r * self.core_frac), self.min_core_k))
        k_noise = min(r - k_core, round(r * self.noise_frac))
        return k_core, k_noise

    def three_level(self, r: int, core: np.ndarray, noise: np.ndarray) -> np.ndarray:
        alpha = np.full(r, self.mid_factor, dtype=np.float64)
        alpha[noise] = self.sup_factor
        alpha[core] = self.amp_factor
        return alpha


@register("abs_select")
@dataclass(frozen=True)
class AbsSelect(_ThreeLevel):
    """Amplify the k_core most sensitive components, suppress the k_noise least.

    Ranking is by normalized ``|g|`` descending with ties broken by lower
    index (a stable sort), so the result is deterministic.
    """

    def raw_alpha(self, signal: ModuleSignal) -> tuple[np.ndarray, str | None]:
        x = normalized_magnitudes(_require(signal, "mean_abs", self))
        r = signal.rank
        if r == 0 or np.ptp(x) < DEGENERATE_RANGE:
            return np.ones(r), "all sensitivities equal: no edit"
        order = np.argsort(-x, kind="stable")
        k_core, k_noise = self.counts(r)
        return self.three_level(r, order[:k_core], order[r - k_noise :]), None


@register("random_index")
@dataclass(frozen=True)
class RandomIndex(_ThreeLevel):
    """Matched random control: abs_select's counts and factors, random indices.

    The per-module generator is seeded from ``(seed, module name)`` so every
    module draws independently yet reproducibly. ``seeds`` lists the control
    arms; ``seed`` picks one of them.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    seed: int | None = None

    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.seeds:
            raise InvalidParameter("seeds", "needs at least one seed")

    def arms(self) -> list[Policy]:
        if self.seed is not None:
            return [self]
        base = self.name or self.kind
        return [replace(self, seed=s, name=f"{base}@{s}") for s in self.seeds]

    def raw_alpha(self, signal: ModuleSignal) -> tuple[np.ndarray, str | None]:
        r = signal.rank
        seed = self.seeds[0] if self.seed is None else self.seed
        rng = np.random.default_rng(module_seed(seed, signal.name))
        perm = rng.permutation(r)
        k_core, k_noise = self.counts(r)
        return self.three_level(r, perm[:k_core], perm[k_core : k_core + k_noise]), None


def module_seed(seed: int, module: str) -> int:
    """A 64-bit generator seed derived from the arm seed and the module name."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@register("smooth_abs")
@dataclass(frozen=True)
class SmoothAbs(Policy):
    """Sigmoid gate on normalized ``|g|`` between sup_factor and amp_factor.

    ``α = sup + (amp − sup)·sigmoid((x − μ)/τ)`` with ``μ`` a quantile of x
    and ``τ`` proportional to an inter-quantile range; ``align_mid`` shifts
    ``μ`` so that the gate equals ``mid_factor`` at the center quantile.
    """

    core_frac: float = 0.2
    noise_frac: float = 0.2
    amp_factor: float = 1.25
    sup_factor: float = 0.80
    mid_factor: float = 1.0
    temperature: float = 0.35
    center_q: float = 0.5
    align_mid: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction(self, "core_frac", "noise_frac", "center_q")
        _factors(self)
        if self.temperature <= 0:
            raise InvalidParameter("temperature", f"must be > 0, got {self.temperature}")
        aligned = self.align_mid and self.amp_factor > self.sup_factor
        if aligned and not self.sup_factor < self.mid_factor < self.amp_factor:
            raise InvalidParameter(
                "mid_factor", "must lie strictly between sup_factor and amp_factor when align_mid",
                ("sup_factor", "amp_factor", "align_mid"),
            )

    def raw_alpha(self, signal: ModuleSignal) -> tuple[np.ndarray, str | None]:
        x = normalized_magnitudes(_require(signal, "mean_abs", self))
        r = signal.rank
        if r == 0 or np.ptp(x) < DEGENERATE_RANGE:
            return np.full(r, self.mid_factor), "all sensitivities equal: α ≡ mid_factor"
        if self.amp_factor == self.sup_factor:
            return np.full(r, self.amp_factor), None
        q_lo, q_hi = self.noise_frac, 1.0 - self.core_frac
        if q_hi <= q_lo:
            q_lo, q_hi = 0.25, 0.75
        tau = self.temperature * float(np.quantile(x, q_hi) - np.quantile(x, q_lo))
        tau = max(tau, NORM_FLOOR)
        mu = float(np.quantile(x, self.center_q))
        if self.align_mid:
            p = (self.mid_factor - self.sup_factor) / (self.amp_factor - self.sup_factor)
            mu = mu - tau * math.log(p / (1.0 - p))
        gate = 1.0 / (1.0 + np.exp(-(x - mu) / tau))
        return self.sup_factor + (self.amp_factor - self.sup_factor) * gate, None


@register("grad_direction")
@dataclass(frozen=True)
class GradDirection(Policy):
    """Signed multiplicative update ``σ' = σ·exp(−g_eff)`` (a gradient step on log σ).

    Asymmetric (default): ``g_eff = η_sup·max(ĝ,0)^p − η_enh·max(−ĝ,0)``;
    symmetric: ``g_eff = η·ĝ``. This is the policy behind the paper's
    alignment-tax collapse, which is why the gate exists.
    """

    asymmetric: bool = True
    eta_suppress: float = 2.0
    eta_enhance: float = 0.2
    power: float = 1.0
    eta: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative(self, "eta_suppress", "eta_enhance", "eta")
        if self.power <= 0:
            raise InvalidParameter("power", f"must be > 0, got {self.power}")

    def raw_alpha(self, signal: ModuleSignal) -> tuple[np.ndarray, str | None]:
        g = normalized_signed(_require(signal, "mean_signed", self))
        if self.asymmetric:
            g_eff = self.eta_suppress * np.maximum(g, 0.0) ** self.power - self.eta_enhance * np.maximum(
                -g, 0.0
            )
        else:
            g_eff = self.eta * g
        return np.exp(-g_eff), None


def build_policy(kind: str, params: dict[str, Any], name: str = "") -> Policy:
    """Construct a policy of ``kind`` from raw (YAML) parameters.

    Raises :class:`InvalidParameter` naming the offending key for unknown
    keys, wrong types and out-of-range values.
    """
    if kind not in POLICY_KINDS:
        raise InvalidParameter("kind", f"unknown policy kind {kind!r} (known: {', '.join(sorted(POLICY_KINDS))})")
    cls = POLICY_KINDS[kind]
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in fields(cls)} - {"name"}
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key not in allowed:
            raise InvalidParameter(key, f"unknown parameter for {kind} (known: {', '.join(sorted(allowed))})")
        values[key] = _coerce(key, raw, hints[key])
    return cls(name=name or kind, **values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against a dataclass field type (bool/int/float/str/tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidParameter(key, f"must be a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidParameter(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidParameter(key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidParameter(key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {hint!r} for {key}")  # pragma: no cover


__all__ = [
    "POLICY_KINDS",
    "AbsSelect",
    "GradDirection",
    "InvalidParameter",
    "ModuleSignal",
    "Policy",
    "RandomIndex",
    "Scaling",
    "SmoothAbs",
    "build_policy",
    "finalize",
    "module_seed",
    "normalized_magnitudes",
    "normalized_signed",
]
