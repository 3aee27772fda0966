"""Adapter + sensitivities + policy → a refined variant adapter with its sidecar.

The library entry point behind ``release-gate edit`` and, later, the run
pipeline: decompose the edit targets once, reuse one calibration for every
policy, and write each variant as a PEFT directory plus ``spectral_edit.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..assets import public_model_id
from ..constants import DEFAULT_TARGETS, EDIT_PACKAGES
from ..errors import BadInput, CalibrationMissing
from ..files import package_versions
from ..schema import SIDECAR_FILE
from ..validation import Section
from .adapter import (
    LoraAdapter,
    LoraModule,
    check_output_dir,
    check_servable,
    load_adapter,
    write_adapter,
)
from .calibration import CalibrationConfig, Sensitivities, calibrate, check_base_model
from .policies import ModuleSignal, Policy
from .policy_files import resolve_policy
from .spectral import Spectrum, rebuild_balanced, rebuild_gauge, thin_svd

SIDECAR_VERSION = 1
REBUILDS = ("gauge", "balanced")


@dataclass(frozen=True)
class ModuleEdit:
    """What a policy did to one module (the sidecar's per-module record)."""

    name: str
    layer: int | None
    kind: str
    rank: int
    scale: float
    sigma: np.ndarray
    sigma_new: np.ndarray
    alpha: np.ndarray
    raw_alpha: np.ndarray
    g_mean_abs: np.ndarray | None
    g_mean_signed: np.ndarray | None
    note: str | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


@dataclass
class Variant:
    """A refined adapter in memory: new tensors plus the record of every edit."""

    name: str
    policy: Policy
    rebuild: str
    tensors: dict[str, torch.Tensor]
    edits: list[ModuleEdit] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return [f"{e.name}: {e.note}" for e in self.edits if e.note]


def decompose(modules: list[LoraModule]) -> dict[str, Spectrum]:
    """Exact thin SVD of every module to edit, keyed by module name."""
    return {m.name: thin_svd(m.B, m.A, m.scale) for m in modules}


def make_variant(
    adapter: LoraAdapter,
    spectra: dict[str, Spectrum],
    policy: Policy,
    sensitivities: Sensitivities | None = None,
    rebuild: str = "gauge",
) -> Variant:
    """Apply ``policy`` to every module in ``spectra`` and rebuild the factors.

    ``gauge`` keeps ``B`` bit-identical and rewrites ``A``; ``balanced``
    splits √σ' evenly between new ``B`` and ``A``. Untouched tensors are
    shared with ``adapter`` (never modified in place).
    """
    if rebuild not in REBUILDS:
        raise BadInput(f"rebuild: must be one of {', '.join(REBUILDS)}, got {rebuild!r}")
    if policy.needs_calibration and sensitivities is None:
        raise CalibrationMissing(f"policy {policy.name!r} ({policy.kind}) needs calibration data")
    tensors = dict(adapter.tensors)
    edits = []
    for name, spectrum in spectra.items():
        module = adapter.modules[name]
        signal = ModuleSignal(
            name=name,
            sigma=spectrum.sigma.numpy(),
            mean_abs=None if sensitivities is None else sensitivities.mean_abs(name),
            mean_signed=None if sensitivities is None else sensitivities.mean_signed(name),
        )
        scaling = policy.apply(signal)
        alpha = torch.from_numpy(scaling.alpha)
        if rebuild == "gauge":
            tensors[module.a_key] = rebuild_gauge(module.A, spectrum, alpha).to(module.A.dtype)
        else:
            new_b, new_a = rebuild_balanced(spectrum, torch.from_numpy(scaling.sigma_new), module.scale)
            tensors[module.b_key] = new_b.to(module.B.dtype)
            tensors[module.a_key] = new_a.to(module.A.dtype)
        edits.append(ModuleEdit(
            name=name, layer=module.layer, kind=module.kind, rank=module.rank, scale=module.scale,
            sigma=signal.sigma, sigma_new=scaling.sigma_new, alpha=scaling.alpha,
            raw_alpha=scaling.raw_alpha, g_mean_abs=signal.mean_abs, g_mean_signed=signal.mean_signed,
            note=scaling.note,
        ))
    return Variant(policy.name, policy, rebuild, tensors, edits)


def sidecar(
    variant: Variant, adapter: LoraAdapter, base_model: str | None, sensitivities: Sensitivities | None
) -> dict[str, Any]:
    """The ``spectral_edit.json`` document: everything needed to audit or redo the edit."""
    calibration = None
    if sensitivities is not None:
        calibration = {k: v for k, v in sensitivities.provenance.items() if k != "cache_hit"}
    return {
        "schema_version": SIDECAR_VERSION,
        "variant": variant.name,
        "policy": {"name": variant.policy.name, **variant.policy.parameters()},
        "rebuild": variant.rebuild,
        "source_adapter": {"path": str(adapter.path), "sha256": adapter.sha256},
        "base_model": base_model,
        "calibration": calibration,
        "notes": variant.notes,
        "modules": [e.to_json() for e in variant.edits],
        "versions": package_versions(EDIT_PACKAGES),
    }


def write_variant(
    variant: Variant, adapter: LoraAdapter, out_dir: Path, base_model: str | None,
    sensitivities: Sensitivities | None,
) -> Path:
    """Write the variant as a PEFT directory with its sidecar, atomically."""
    document = sidecar(variant, adapter, base_model, sensitivities)
    return write_adapter(
        out_dir, published_config(adapter.config_bytes, base_model), variant.tensors,
        {SIDECAR_FILE: json.dumps(document, indent=1, ensure_ascii=False)},
    )


def published_config(config_bytes: bytes, base_model: str | None) -> bytes:
    """The source adapter's config as a variant carries it: the same bytes, unless its
    ``base_model_name_or_path`` is a local path, which becomes the base model's public name.

    A promoted variant is pushed to hubs and served on other machines, and its sha256 covers this file,
    so the name is fixed here, where the variant is made, not when it is published.
    """
    config = json.loads(config_bytes)
    named = config.get("base_model_name_or_path")
    if not isinstance(named, str) or not (named.startswith(("/", ".", "~")) or Path(named).exists()):
        return config_bytes
    config["base_model_name_or_path"] = public_model_id(base_model or named)
    return json.dumps(config, indent=2, ensure_ascii=False).encode()


class EditSettings(Section):
    """Which modules Spectral Surgery edits and how the factors are rebuilt (the run config's ``edit:``).

    ``gauge`` keeps B bit-identical and rewrites A; ``balanced`` splits √σ' between them.
    """

    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None
    rebuild: Literal["gauge", "balanced"] = "gauge"


class EditRequest(Section):
    """Everything ``release-gate edit`` needs (the Python API mirrors the CLI).

    ``eval_data``: evaluation JSONL files the calibration rows must not overlap.
    """

    base_model: str
    adapter: Path
    policy: str
    out: Path
    calibration: CalibrationConfig | None = None
    overrides: dict[str, Any] = {}
    settings: EditSettings = EditSettings()
    cache_dir: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    overwrite: bool = False
    policy_dirs: tuple[Path, ...] = ()
    eval_data: tuple[Path, ...] = ()


def refine(
    base_model: str,
    adapter: LoraAdapter,
    policies: list[Policy],
    out_dirs: dict[str, Path],
    *,
    calibration: CalibrationConfig | None,
    cache_dir: Path,
    settings: EditSettings | None = None,
    device: str = "auto",
    dtype: str = "auto",
    exclude: Sequence[Path] = (),
) -> list[tuple[Path, Variant]]:
    """Write one variant per policy arm, sharing one decomposition and one calibration.

    ``out_dirs`` maps each arm name (``policy.arms()``) to its directory.
    Calibration runs only when some policy needs it (its rows must not
    overlap the ``exclude`` files); otherwise the base model is shape-checked
    without loading its weights.
    """
    settings = settings or EditSettings()
    check_servable(adapter)
    spectra = decompose(adapter.select(settings.targets, settings.layers))
    sensitivities = None
    if any(p.needs_calibration for p in policies):
        if calibration is None:
            needy = next(p.name for p in policies if p.needs_calibration)
            raise CalibrationMissing(f"policy {needy!r} needs calibration data")
        sensitivities = calibrate(base_model, adapter, spectra, calibration, cache_dir, device, dtype, exclude)
    else:
        check_base_model(base_model, adapter)
    written = []
    for policy in policies:
        variant = make_variant(adapter, spectra, policy, sensitivities, settings.rebuild)
        used = sensitivities if policy.needs_calibration else None
        written.append((write_variant(variant, adapter, out_dirs[policy.name], base_model, used), variant))
    return written


def edit(request: EditRequest) -> tuple[Path, Variant]:
    """Refine one adapter with one policy and write the variant directory.

    Inputs are validated before any computation, and the output directory is
    checked before anything is written, so a bad call changes nothing on disk.
    """
    from ..assets import default_cache_dir

    policy = resolve_policy(request.policy, request.overrides, list(request.policy_dirs)).arms()[0]
    adapter = load_adapter(request.adapter)
    check_output_dir(request.out, [request.adapter], request.overwrite)
    [(out, variant)] = refine(
        request.base_model, adapter, [policy], {policy.name: request.out}, calibration=request.calibration,
        cache_dir=request.cache_dir or default_cache_dir(), settings=request.settings, device=request.device,
        dtype=request.dtype, exclude=request.eval_data,
    )
    return out, variant
