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
"""

from __future__ import annotations

import json
import logging
import random
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import BadInput
from ..files import (
    check_input_file,
    content_key,
    file_lock,
    file_sha256,
    read_jsonl_numbered,
    write_bytes_atomic,
    write_json_atomic,
)
from ..validation import Count, Flag, Integer, NonNegativeInt, Section, Text
from .adapter import LoraAdapter, check_module_shapes
from .spectral import Spectrum

CACHE_VERSION = 1

logger = logging.getLogger(__name__)


class CalibrationConfig(Section):
    """Where calibration examples come from and how they are turned into tokens (the ``calibration:`` section).

    ``separator`` is inserted between prompt and answer in the ``raw``
    template; ``chat`` wraps the prompt (or all but the last of ``messages``)
    in the tokenizer's chat template with a generation prompt, as vLLM does.
    """

    file: Path
    template: Literal["raw", "chat"] = "raw"
    prompt_field: Text = "prompt"
    answer_field: Text = "answer"
    messages_field: Text = "messages"
    separator: Text = ""
    n: Count = 128
    seed: Integer = 0
    shuffle: Flag = False
    offset: NonNegativeInt = 0
    batch_size: Count = 8
    max_length: Count = 1024

    def __init__(self, file: Path | str | None = None, /, **values: Any) -> None:
        """``CalibrationConfig(path, n=64)`` as well as ``CalibrationConfig(file=path, n=64)``."""
        super().__init__(**({"file": file} if file is not None else {}), **values)

    def selection(self) -> dict[str, Any]:
        """The fields that decide which tokens are seen (part of the cache key)."""
        return self.model_dump(mode="json", exclude={"file", "batch_size"})  # per-example values ignore batching


@dataclass(frozen=True)
class Example:
    """One calibration row: ``prompt`` is text (raw) or a message list (chat)."""

    index: int
    line: int
    prompt: str | list[dict[str, str]]
    answer: str


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + answer (+EOS); the loss covers ids[n_prompt:]."""

    input_ids: list[int]
    n_prompt: int


def read_examples(cfg: CalibrationConfig) -> tuple[list[Example], list[int]]:
    """Parse and validate the JSONL file, then select ``n`` rows.

    Returns the selected examples and their row indices (for provenance).
    """
    path = check_input_file(Path(cfg.file), "calibration file")
    rows = read_jsonl_numbered(path)
    if not rows:
        raise BadInput(f"{path}: calibration file is empty")
    examples = [_parse_row(path, i, line_no, row, cfg) for i, (line_no, row) in enumerate(rows)]
    order = list(range(len(examples)))
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(order)
    chosen = order[cfg.offset : cfg.offset + cfg.n]
    if len(chosen) < cfg.n:
        raise BadInput(
            f"{path}: calibration needs {cfg.n} rows after offset {cfg.offset}, "
            f"but the file has {len(examples)} rows"
        )
    return [examples[i] for i in chosen], chosen


def _parse_row(path: Path, index: int, line_no: int, row: Any, cfg: CalibrationConfig) -> Example:
    where = f"{path}: line {line_no}"
    if not isinstance(row, dict):
        raise BadInput(f"{where}: expected a JSON object")
    if cfg.messages_field in row and cfg.prompt_field not in row:
        return _parse_messages(where, index, line_no, row[cfg.messages_field], cfg)
    for key in (cfg.prompt_field, cfg.answer_field):
        if key not in row:
            raise BadInput(f"{where}: missing field {key!r}")
        if not isinstance(row[key], str):
            raise BadInput(f"{where}: field {key!r} must be a string")
    if not row[cfg.answer_field].strip():
        raise BadInput(f"{where}: field {cfg.answer_field!r} is empty (nothing to compute a loss on)")
    return Example(index, line_no, row[cfg.prompt_field], row[cfg.answer_field])


def _parse_messages(where: str, index: int, line_no: int, messages: Any, cfg: CalibrationConfig) -> Example:
    if cfg.template != "chat":
        raise BadInput(f"{where}: {cfg.messages_field!r} rows need calibration.template: chat")
    valid = isinstance(messages, list) and len(messages) >= 2 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not valid:
        raise BadInput(f"{where}: {cfg.messages_field!r} must be a list of ≥2 {{role, content}} messages")
    if messages[-1]["role"] != "assistant":
        raise BadInput(f"{where}: the last message must be the assistant's answer")
    if not messages[-1]["content"].strip():
        raise BadInput(f"{where}: the assistant answer is empty (nothing to compute a loss on)")
    return Example(index, line_no, [dict(m) for m in messages[:-1]], messages[-1]["content"])


#: Text fields of evaluation rows compared against calibration prompts.
EVAL_TEXT_FIELDS = ("question", "prompt", "input", "text", "problem", "instruction")
#: Shorter evaluation texts are too generic to count as overlap.
MIN_OVERLAP_CHARS = 24


def normalize_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for overlap checks."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_no_overlap(examples: Sequence[Example], eval_files: Sequence[Path]) -> None:
    """Refuse calibration rows that contain an evaluation item's text.

    Calibrating on evaluation items would leak the test set into the edit and
    inflate the gate's evidence. An evaluation row overlaps when its
    normalized question/prompt text appears inside a normalized calibration
    prompt or answer.
    """
    haystacks = [
        (e, normalize_text(_example_text(e))) for e in examples
    ]
    for path in eval_files:
        for line_no, text in _eval_texts(Path(path)):
            needle = normalize_text(text)
            if len(needle) < MIN_OVERLAP_CHARS:
                continue
            for example, hay in haystacks:
                if needle in hay:
                    raise BadInput(
                        f"calibration row at line {example.line} overlaps evaluation item "
                        f"{path}: line {line_no} ({text[:60]!r}…); calibration and evaluation must be disjoint"
                    )


def _example_text(example: Example) -> str:
    prompt = example.prompt if isinstance(example.prompt, str) else "\n".join(m["content"] for m in example.prompt)
    return f"{prompt}\n{example.answer}"


def _eval_texts(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise BadInput(f"{path}: evaluation data file not found")
    return [(line_no, row[k]) for line_no, row in read_jsonl_numbered(path) if isinstance(row, dict)
            for k in EVAL_TEXT_FIELDS if isinstance(row.get(k), str)]


def encode(example: Example, tokenizer: Any, cfg: CalibrationConfig) -> Encoded:
    """Teacher-forcing ids: prompt (with BOS as the tokenizer adds it) + answer + EOS."""
    if cfg.template == "chat":
        messages = example.prompt if isinstance(example.prompt, list) else [
            {"role": "user", "content": example.prompt}
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(str(example.prompt) + cfg.separator)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    budget = cfg.max_length - len(answer_ids)
    if budget < 1:  # keep one prompt token so the first answer token has a context
        answer_ids, budget = answer_ids[: cfg.max_length - 1], 1
    prompt_ids = prompt_ids[-budget:] if len(prompt_ids) > budget else prompt_ids
    return Encoded(list(prompt_ids) + list(answer_ids), len(prompt_ids))


def length_buckets(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Batches of example positions with similar lengths (less padding)."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].input_ids), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
