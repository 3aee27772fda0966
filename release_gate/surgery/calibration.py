"""Calibration: per-example spectral sensitivities ``g_k = u_kᵀ (∂L/∂ΔW) v_k``.

``∂L/∂ΔW = Σ_t δ_t x_tᵀ`` for a linear module with input ``x_t`` and output
gradient ``δ_t``, so ``g_k = Σ_t (u_k·δ_t)(v_k·x_t)`` needs only two ``r``-wide
projections per token and never the ``d_out×d_in`` gradient. A batch is
one forward + one backward of ``Σ_i L_i`` (``L_i`` = mean NLL over example
i's answer tokens); examples do not interact, so each example's projections
give its own exact ``g``. Levers over a naive PEFT loop: the adapter is
merged into the weights and no parameter needs a gradient, logits are taken
only at answer positions, batches are length-bucketed, and results stay on
the device until the end (no per-module host syncs).

The rows and their tokens come from :mod:`.calibration_data`; its names used here
(``CalibrationConfig``, ``read_examples``, ``encode`` …) stay importable from this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import BadInput
from ..files import content_key, file_lock, file_sha256, write_bytes_atomic, write_json_atomic
from .adapter import LoraAdapter, check_module_shapes
from .calibration_data import (
    CalibrationConfig,
    Encoded,
    Example,
    check_no_overlap,
    encode,
    length_buckets,
    read_examples,
)
from .spectral import Spectrum

CACHE_VERSION = 1

logger = logging.getLogger(__name__)


class _Probe:
    """Forward/backward hooks on one linear module accumulating per-example g."""

    def __init__(self, module: torch.nn.Module, spectrum: Spectrum, n: int, dtype: torch.dtype) -> None:
        device = module.weight.device
        self.U = spectrum.U.to(device=device, dtype=dtype)
        self.V = spectrum.V.to(device=device, dtype=dtype)
        self.dtype = dtype
        self.out = torch.zeros(n, spectrum.rank, dtype=dtype, device=device)
        self.rows: torch.Tensor | None = None
        self._q: torch.Tensor | None = None
        self._handles = [
            module.register_forward_pre_hook(self.start_graph),
            module.register_forward_hook(self._post),
        ]

    @staticmethod
    def start_graph(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        # The first probed module starts the autograd graph: no parameter
        # requires a gradient, so its input is made a leaf that does.
        x = args[0]
        if torch.is_grad_enabled() and not x.requires_grad:
            return (x.detach().requires_grad_(True), *args[1:])
        return None

    def _post(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self._q = args[0].detach().to(self.dtype) @ self.V  # (b, T, r): v_k·x_t
        output.register_hook(self._backward)

    def _backward(self, grad: torch.Tensor) -> None:
        p = grad.to(self.dtype) @ self.U  # (b, T, r): u_k·δ_t
        self.out.index_copy_(0, self.rows, (p * self._q).sum(dim=1))
        self._q = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def per_example_sensitivities(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    spectra: dict[str, Spectrum],
    batch_size: int = 8,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Exact per-example ``g`` (N×r, float64) for every module in ``spectra``.

    ``model`` is a causal LM whose named modules include the keys of
    ``spectra`` and whose weights already hold ``W + ΔW``.
    """
    named = dict(model.named_modules())
    param = next(model.parameters())
    acc_dtype = torch.promote_types(param.dtype, torch.float32)
    probes = {name: _Probe(named[name], spec, len(encoded), acc_dtype) for name, spec in spectra.items()}
    try:
        for rows in length_buckets(encoded, batch_size):
            row_index = torch.tensor(rows, device=param.device)
            for probe in probes.values():
                probe.rows = row_index.to(probe.out.device)
            answer_nll(model, encoded, rows, pad_id).backward()
            if progress:
                progress(len(rows))
    finally:
        for probe in probes.values():
            probe.remove()
    return {name: probe.out.to("cpu", torch.float64).numpy() for name, probe in probes.items()}


def answer_nll(model: torch.nn.Module, encoded: Sequence[Encoded], rows: list[int], pad_id: int) -> torch.Tensor:
    """``Σ_i L_i`` over the batch, ``L_i`` = mean NLL of example i's answer tokens.

    Logits are computed only at positions that predict an answer token,
    which skips most of the vocabulary projection for long prompts.
    """
    device = next(model.parameters()).device
    ids, mask, batch_idx, pos_idx, targets, weights = _batch(encoded, rows, pad_id, device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.get_output_embeddings()(hidden[batch_idx, pos_idx]).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return (nll * weights).sum()


def _batch(
    encoded: Sequence[Encoded], rows: list[int], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Right-padded ids and the flat (example, position, target, weight) of answer tokens."""
    width = max(len(encoded[i].input_ids) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    b_idx, p_idx, tgt, wts = [], [], [], []
    for b, i in enumerate(rows):
        seq = encoded[i].input_ids
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        first = max(encoded[i].n_prompt, 1)
        positions = range(first - 1, len(seq) - 1)
        b_idx += [b] * len(positions)
        p_idx += list(positions)
        tgt += seq[first:]
        wts += [1.0 / len(positions)] * len(positions)
    to = {"device": device}
    return (
        ids.to(**to), mask.to(**to), torch.tensor(b_idx, **to), torch.tensor(p_idx, **to),
        torch.tensor(tgt, **to), torch.tensor(wts, dtype=torch.float32, **to),
    )


@dataclass
class Sensitivities:
    """Per-example sensitivities of every edited module, with provenance.

    Both aggregates of SPEC §3 derive from the stored N×r matrices:
    ``mean_abs`` (magnitude policies) and ``mean_signed`` (grad_direction).
    """

    per_example: dict[str, np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)

    def mean_abs(self, name: str) -> np.ndarray:
        return np.abs(self.per_example[name]).mean(axis=0)

    def mean_signed(self, name: str) -> np.ndarray:
        return self.per_example[name].mean(axis=0)

    def save(self, stem: Path) -> None:
        """Write ``stem.safetensors`` + ``stem.json`` atomically, tensors first: metadata marks a complete entry."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(stem.with_suffix(".safetensors"), save(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.per_example.items()}))
        write_json_atomic(stem.with_suffix(".json"), self.provenance)

    @classmethod
    def load(cls, stem: Path) -> Sensitivities | None:
        meta, data = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        if not (meta.is_file() and data.is_file()):
            return None
        try:
            tensors = load_file(str(data))
            provenance = json.loads(meta.read_text())
        except Exception:  # a damaged cache entry is recomputed, not trusted
            return None
        return cls({k: v.numpy() for k, v in tensors.items()}, provenance)


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA when present, else CPU; float32 on CPU, bf16 on GPU (never fp16)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
    if dtype == "auto":
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in names:
        raise BadInput(f"calibration dtype {dtype!r} is not supported (use {', '.join(names)}; fp16 needs loss scaling)")
    return device, names[dtype]


def load_merged_model(base_model: str, adapter: LoraAdapter, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The base model with every LoRA module of ``adapter`` merged in, frozen, in eval mode.

    Merging is exact (``W + s·B·A``) and removes LoRA's extra matmuls; a model
    larger than one GPU is spread by accelerate's ``device_map="auto"``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=dtype, device_map="auto" if device.startswith("cuda") else None
        )
    except OSError as exc:
        raise BadInput(f"base model {base_model!r} cannot be loaded: {str(exc).splitlines()[0]}") from None
    if not device.startswith("cuda"):
        model.to(device)
    model.eval().requires_grad_(False)
    check_module_shapes(adapter, linear_shapes(model), base_model)
    merge_adapter(model, adapter)
    return model, tokenizer


def merge_adapter(model: torch.nn.Module, adapter: LoraAdapter) -> torch.nn.Module:
    """Add every module's ``ΔW = s·B·A`` to the model's weights in place (float32 math, weight dtype kept).

    The sensitivity pass then needs no LoRA layers and no parameter gradients.
    """
    named = dict(model.named_modules())
    with torch.no_grad():
        for module in adapter.modules.values():
            weight = named[module.name].weight
            delta = module.scale * (module.B.to(weight.device, torch.float32) @ module.A.to(weight.device, torch.float32))
            weight.copy_((weight.float() + delta).to(weight.dtype))
    return model


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``(out_features, in_features)`` of every linear module, by name."""
    return {
        name: (m.out_features, m.in_features)
        for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }


def check_base_model(base_model: str, adapter: LoraAdapter) -> None:
    """Shape-check ``adapter`` against ``base_model`` without loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise BadInput(f"base model {base_model!r} cannot be loaded: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    check_module_shapes(adapter, linear_shapes(model), base_model)


def calibrate(
    base_model: str,
    adapter: LoraAdapter,
    spectra: dict[str, Spectrum],
    cfg: CalibrationConfig,
    cache_dir: Path,
    device: str = "auto",
    dtype: str = "auto",
    exclude: Sequence[Path] = (),
) -> Sensitivities:
    """Sensitivities for ``spectra``'s modules, from the cache when the inputs match.

    ``exclude`` lists evaluation JSONL files the selected rows must not overlap (a guard: it refuses
    rows, it never changes them, so it is not part of the cache key).

    The cache key covers the adapter and calibration file contents, the base
    model's config, the selection and template, the modules and the dtype, so
    every policy (and any re-run) reuses one calibration pass.
    """
    run_device, run_dtype = resolve_device(device, dtype)
    examples, indices = read_examples(cfg)
    check_no_overlap(examples, exclude)
    data_sha = file_sha256(Path(cfg.file))
    parts = {
        "adapter": adapter.sha256, "base_model": _model_identity(base_model), "data": data_sha,
        "selection": cfg.selection(), "modules": sorted(spectra), "dtype": str(run_dtype),
    }
    stem = Path(cache_dir) / "sensitivity" / content_key({"version": CACHE_VERSION, **parts}, 32)
    with file_lock(stem.with_suffix(".lock")):  # a second run on the same cache waits, then reads the result
        return _cached_or_computed(stem, base_model, adapter, spectra, cfg, examples, indices, data_sha,
                                   run_device, run_dtype)


def _cached_or_computed(stem: Path, base_model: str, adapter: LoraAdapter, spectra: dict[str, Spectrum],
                        cfg: CalibrationConfig, examples: list[Example], indices: list[int], data_sha: str,
                        run_device: str, run_dtype: torch.dtype) -> Sensitivities:
    cached = Sensitivities.load(stem)
    if cached is not None and set(cached.per_example) == set(spectra):
        logger.info("calibration: sensitivities of %d modules over %d examples from the cache", len(spectra),
                    len(examples))
        cached.provenance["cache_hit"] = True
        return cached
    started = time.perf_counter()
    model, tokenizer = load_merged_model(base_model, adapter, run_device, run_dtype)
    encoded = [encode(e, tokenizer, cfg) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = _progress_bar(len(encoded))
    try:
        per_example = per_example_sensitivities(
            model, encoded, spectra, cfg.batch_size, pad_id, progress=bar.update,
        )
    finally:
        bar.close()
    provenance = {
        "file": str(cfg.file), "file_sha256": data_sha, "indices": indices, "seed": cfg.seed,
        "selection": cfg.selection(), "base_model": base_model, "adapter_sha256": adapter.sha256,
        "device": run_device, "dtype": str(run_dtype), "n_tokens": sum(len(e.input_ids) for e in encoded),
        "n_answer_tokens": sum(len(e.input_ids) - e.n_prompt for e in encoded),
        "seconds": round(time.perf_counter() - started, 3), "cache_key": stem.name,
    }
    result = Sensitivities(per_example, provenance)
    result.save(stem)
    logger.info("calibration: sensitivities of %d modules over %d examples in %.1f s", len(spectra), len(examples),
                provenance["seconds"])
    result.provenance["cache_hit"] = False
    return result


def _model_identity(base_model: str) -> str:
    """A local model dir by its config's hash and weight file sizes; a hub id by name."""
    root = Path(base_model)
    if not (root / "config.json").is_file():
        return base_model
    sizes = sorted((p.name, p.stat().st_size) for p in root.glob("*.safetensors"))
    return f"{file_sha256(root / 'config.json')}:{sizes}"


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibration", unit="ex", leave=False)
