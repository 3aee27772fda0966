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
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..constants import CONTROL_SEEDS
from ..validation import Flag, Fraction, NonNegative, NonNegativeInt, Number, Section, check, explain

#: Denominator floor of the within-module normalizations (SPEC §4).
NORM_FLOOR = 1e-8
#: Singular values at or below this fraction of the largest are exact zeros
#: (rank-deficient factors): they are never rescaled.
ZERO_SIGMA_RTOL = 1e-10
#: A spread of normalized magnitudes below this counts as "all equal".
DEGENERATE_RANGE = 1e-12
EnergyNorm = Literal["l1", "l2", "none"]


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
    """Class decorator adding a policy model to :data:`POLICY_KINDS`; a kind is registered once."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if kind in POLICY_KINDS and POLICY_KINDS[kind] is not cls:
            raise ValueError(f"policy kind {kind!r} is already registered by {POLICY_KINDS[kind].__module__}")
        cls.kind = kind
        POLICY_KINDS[kind] = cls
        return cls

    return wrap


def _invalid(key: str, message: str, *related: str) -> PydanticCustomError:
    """A cross-parameter error that still names its key (see :func:`build_policy`)."""
    return PydanticCustomError("parameter", "{key}: {message}", {"key": key, "message": message, "related": related})


class Policy(Section):
    """Parameters shared by every policy: how the edited spectrum is bounded.

    ``sigma_clip_min`` floors every edited σ'; ``preserve_energy`` rescales
    σ' to the source's l1 (Σσ) or l2 (‖σ‖) norm, or not at all. The defaults of
    every parameter are declared here, on the model, once.
    """

    name: str = ""
    preserve_energy: EnergyNorm = "l1"
    sigma_clip_min: NonNegative = 0.0

    kind: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

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
        return {"kind": self.kind, **self.model_dump(mode="json")}


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


class _Factors(Policy):
    """The core / mid / noise fractions and factors that the sensitivity-ranked policies share."""

    core_frac: Fraction = 0.2
    noise_frac: Fraction = 0.2
    amp_factor: NonNegative = 1.25
    sup_factor: NonNegative = 0.80
    mid_factor: NonNegative = 1.0

    @model_validator(mode="after")
    def _amplification_above_suppression(self) -> _Factors:
        if self.amp_factor < self.sup_factor:
            raise _invalid("amp_factor", f"must be ≥ sup_factor ({self.amp_factor} < {self.sup_factor})", "sup_factor")
        return self


class _ThreeLevel(_Factors):
    """Shared parameters of the hard-selection policies (core / mid / noise)."""

    min_core_k: NonNegativeInt = 1

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
class RandomIndex(_ThreeLevel):
    """Matched random control: abs_select's counts and factors, random indices.

    The per-module generator is seeded from ``(seed, module name)`` so every
    module draws independently yet reproducibly. ``seeds`` lists the control
    arms; ``seed`` picks one of them.
    """

    seeds: tuple[int, ...] = CONTROL_SEEDS
    seed: int | None = None

    needs_calibration: ClassVar[bool] = False

    @model_validator(mode="after")
    def _some_seed(self) -> RandomIndex:
        if not self.seeds:
            raise _invalid("seeds", "needs at least one seed")
        return self

    def arms(self) -> list[Policy]:
        if self.seed is not None:
            return [self]
        base = self.name or self.kind
        return [self.model_copy(update={"seed": s, "name": f"{base}@{s}"}) for s in self.seeds]

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
class SmoothAbs(_Factors):
    """Sigmoid gate on normalized ``|g|`` between sup_factor and amp_factor.

    ``α = sup + (amp − sup)·sigmoid((x − μ)/τ)`` with ``μ`` a quantile of x
    and ``τ`` proportional to an inter-quantile range; ``align_mid`` shifts
    ``μ`` so that the gate equals ``mid_factor`` at the center quantile.
    """

    temperature: Annotated[Number, check(lambda v: v > 0, "must be > 0")] = 0.35
    center_q: Fraction = 0.5
    align_mid: Flag = True

    @model_validator(mode="after")
    def _mid_between_factors(self) -> SmoothAbs:
        aligned = self.align_mid and self.amp_factor > self.sup_factor
        if aligned and not self.sup_factor < self.mid_factor < self.amp_factor:
            raise _invalid("mid_factor", "must lie strictly between sup_factor and amp_factor when align_mid",
                           "sup_factor", "amp_factor", "align_mid")
        return self

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
class GradDirection(Policy):
    """Signed multiplicative update ``σ' = σ·exp(−g_eff)`` (a gradient step on log σ).

    Asymmetric (default): ``g_eff = η_sup·max(ĝ,0)^p − η_enh·max(−ĝ,0)``;
    symmetric: ``g_eff = η·ĝ``. This is the policy behind the paper's
    alignment-tax collapse, which is why the gate exists.
    """

    asymmetric: Flag = True
    eta_suppress: NonNegative = 2.0
    eta_enhance: NonNegative = 0.2
    power: Annotated[Number, check(lambda v: v > 0, "must be > 0")] = 1.0
    eta: NonNegative = 0.2

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
    if "name" in params:
        raise InvalidParameter("name", "is the policy's name, not a parameter")
    try:
        return cls.model_validate({**params, "name": name or kind})
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "parameter":
            ctx = error["ctx"]
            raise InvalidParameter(ctx["key"], ctx["message"], tuple(ctx["related"])) from None
        location, message = explain(error, cls)
        raise InvalidParameter(str(location[0]) if location else "params", f"{message} (for {kind})") from None


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
    "register",
    "module_seed",
    "normalized_magnitudes",
    "normalized_signed",
]
