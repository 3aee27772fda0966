"""PEFT LoRA adapter directories: validated reading, scaling, atomic writing.

The adapter a user hands us is never written to. Variants are written with
the same tensor keys, shapes, dtypes and ``adapter_config.json`` so PEFT and
vLLM load them exactly like the original.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..constants import DEFAULT_TARGETS, VLLM_MAX_LORA_RANK
from ..errors import BadInput
from ..files import atomic_directory, check_input_file, directory_sha256

#: PEFT's own file names.
CONFIG_FILE = CONFIG_NAME
SAFETENSORS_FILE = SAFETENSORS_WEIGHTS_NAME
BIN_FILE = WEIGHTS_NAME
PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass
class LoraModule:
    """One LoRA-adapted linear module: ``ΔW = scale · B · A``."""

    name: str
    key_prefix: str
    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def kind(self) -> str:
        """The projection name (``o_proj``), used to pick edit targets."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def layer(self) -> int | None:
        match = _LAYER.search(f".{self.name}.")
        return int(match.group(1)) if match else None

    @property
    def a_key(self) -> str:
        return f"{self.key_prefix}.lora_A.weight"

    @property
    def b_key(self) -> str:
        return f"{self.key_prefix}.lora_B.weight"


@dataclass
class LoraAdapter:
    """A loaded, validated PEFT LoRA adapter directory."""

    path: Path
    config: dict[str, Any]
    config_bytes: bytes
    tensors: dict[str, torch.Tensor]
    modules: dict[str, LoraModule]
    weights_file: Path
    sha256: str = field(repr=False, default="")

    @property
    def max_rank(self) -> int:
        return max(m.rank for m in self.modules.values())

    def select(self, targets: Iterable[str] = DEFAULT_TARGETS, layers: Iterable[int] | None = None) -> list[LoraModule]:
        """Modules whose projection name is in ``targets`` (and layer in ``layers``).

        Raises :class:`BadInput` naming what the adapter does have when no
        module matches, since editing nothing would silently reproduce the input.
        """
        wanted = set(targets)
        layer_set = None if layers is None else set(layers)
        chosen = [
            m for m in self.modules.values()
            if m.kind in wanted and (layer_set is None or m.layer in layer_set)
        ]
        if not chosen:
            have = ", ".join(sorted({m.kind for m in self.modules.values()}))
            raise BadInput(
                f"{self.path}: none of the edit targets ({', '.join(sorted(wanted))}) are present "
                f"in the adapter (it adapts: {have})"
            )
        return sorted(chosen, key=lambda m: (m.layer if m.layer is not None else -1, m.name))


def scaling(config: Mapping[str, Any], module_name: str, rank: int) -> float:
    """The LoRA scale PEFT uses for ``module_name``: alpha/r or alpha/√r (rsLoRA)."""
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module_name), config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


def configured_rank(config: Mapping[str, Any], module_name: str) -> int:
    rank_pattern = config.get("rank_pattern") or {}
    return int(rank_pattern.get(get_pattern_key(list(rank_pattern), module_name), config.get("r", 8)))


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read and validate a PEFT LoRA directory; every problem is a :class:`BadInput`."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: adapter directory not found")
    if not path.is_dir():
        raise BadInput(f"{path}: adapter must be a PEFT directory, not a file")
    try:
        os.listdir(path)
    except OSError as exc:
        raise BadInput(f"{path}: adapter directory cannot be read ({exc.strerror or exc})") from None
    config_path = path / CONFIG_FILE
    if not config_path.exists() and not config_path.is_symlink():
        raise BadInput(f"{path}: no {CONFIG_FILE} (not a PEFT adapter directory)")
    config_bytes = check_input_file(config_path, "adapter config").read_bytes()
    config = _read_config(config_path, config_bytes)
    weights_file, tensors = _read_weights(path)
    modules = _collect_modules(path, weights_file, config, tensors)
    adapter = LoraAdapter(path, config, config_bytes, tensors, modules, weights_file)
    _check_values(adapter)
    adapter.sha256 = directory_sha256(path, [CONFIG_FILE, weights_file.name])
    return adapter


def _read_config(config_path: Path, raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise BadInput(f"{config_path}: must hold a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise BadInput(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    if config.get("use_dora"):
        raise BadInput(
            f"{config_path}: use_dora is true; DoRA adapters are not supported "
            "(their magnitude vector is not a low-rank update)"
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise BadInput(f"{config_path}: key {key!r} must be a positive number, got {value!r}")
    return config


def _read_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safetensors_path = path / SAFETENSORS_FILE
    bin_path = path / BIN_FILE
    present = next((w for w in (safetensors_path, bin_path) if w.exists() or w.is_symlink()), None)
    if present is not None:  # the file that will be loaded: a permission or link problem named as such
        check_input_file(present, "adapter weights")
    if safetensors_path.is_file():
        try:
            return safetensors_path, load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{safetensors_path}: corrupt or truncated safetensors file ({exc})") from None
    if bin_path.is_file():
        try:
            state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad pickles
            raise BadInput(
                f"{bin_path}: cannot be loaded safely with weights_only=True ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); convert it to safetensors"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BadInput(f"{bin_path}: does not hold a state dict of tensors")
        return bin_path, state
    raise BadInput(f"{path}: no adapter weights ({SAFETENSORS_FILE} or {BIN_FILE})")


def _collect_modules(
    path: Path, weights_file: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, LoraModule]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise BadInput(
                f"{weights_file}: tensor {key!r} is not a LoRA factor (embedding LoRA, "
                "modules_to_save and trainable tokens are not supported)"
            )
        pairs.setdefault(match.group("module"), {})[match.group("which")] = tensor
    if not pairs:
        raise BadInput(f"{weights_file}: holds no LoRA factors")
    modules: dict[str, LoraModule] = {}
    for prefix, factors in pairs.items():
        if set(factors) != {"A", "B"}:
            missing = ({"A", "B"} - set(factors)).pop()
            raise BadInput(f"{weights_file}: module {prefix!r} has no lora_{missing} weight")
        A, B = factors["A"], factors["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise BadInput(
                f"{weights_file}: module {prefix!r} has factors that do not chain "
                f"(lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)})"
            )
        name = prefix[len(PEFT_PREFIX):] if prefix.startswith(PEFT_PREFIX) else prefix
        rank = int(A.shape[0])
        expected = configured_rank(config, name)
        if expected != rank:
            raise BadInput(
                f"{path / CONFIG_FILE}: rank for {name!r} resolves to {expected} (r/rank_pattern) "
                f"but its weights have rank {rank}"
            )
        modules[name] = LoraModule(name, prefix, A, B, scaling(config, name, rank))
    return modules


def _check_values(adapter: LoraAdapter) -> None:
    for module in adapter.modules.values():
        for key, tensor in ((module.a_key, module.A), (module.b_key, module.B)):
            if not torch.isfinite(tensor).all():
                raise BadInput(f"{adapter.weights_file}: {key} contains NaN or Inf values")
    if all(not module.A.any() or not module.B.any() for module in adapter.modules.values()):
        raise BadInput(
            f"{adapter.weights_file}: every LoRA module has an all-zero factor, so ΔW = 0 "
            "(an untrained adapter?): there is nothing to refine"
        )


def check_servable(adapter: LoraAdapter) -> None:
    """Refuse adapters vLLM cannot serve: variants of them could never be evaluated."""
    worst = max(adapter.modules.values(), key=lambda m: m.rank)
    if worst.rank > VLLM_MAX_LORA_RANK:
        raise BadInput(
            f"{adapter.path}: module {worst.name!r} has rank {worst.rank}, above vLLM's maximum LoRA rank "
            f"{VLLM_MAX_LORA_RANK}"
        )


def check_module_shapes(adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]], base: str) -> None:
    """Refuse adapters whose modules are absent from, or do not fit, the base model.

    ``shapes`` maps module names to ``(out_features, in_features)``.
    """
    for module in adapter.modules.values():
        if module.name not in shapes:
            raise BadInput(f"{adapter.path}: module {module.name!r} does not exist in base model {base}")
        out_features, in_features = shapes[module.name]
        if (module.d_out, module.d_in) != (out_features, in_features):
            raise BadInput(
                f"{adapter.path}: module {module.name!r} is {module.d_out}×{module.d_in} in the adapter "
                f"but {out_features}×{in_features} in base model {base} (adapter trained on another model?)"
            )


def check_output_dir(out_dir: Path, protected: Iterable[Path], overwrite: bool) -> None:
    """Refuse an output that is, is inside, or holds an input (it could be overwritten); refuse to clobber by default."""
    out = Path(out_dir).resolve()
    for source in protected:
        src = Path(source).resolve()
        if out == src or src in out.parents:
            raise BadInput(f"{out_dir}: output directory is inside the input adapter {source}; choose another")
        if out in src.parents:
            raise BadInput(f"{source}: input is inside the output directory {out_dir}, where it could be overwritten; "
                           "copy it elsewhere or choose another output directory")
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out_dir}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BadInput(f"{out_dir}: exists and is not empty; pass --overwrite to replace it")


def write_adapter(
    out_dir: Path,
    config_bytes: bytes,
    tensors: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write an adapter directory atomically (temp dir + rename).

    The config is copied byte for byte so PEFT and vLLM see the same rank,
    alpha and target modules as the source adapter.
    """
    with atomic_directory(Path(out_dir)) as tmp:
        (tmp / CONFIG_FILE).write_bytes(config_bytes)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / SAFETENSORS_FILE), {"format": "pt"})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)
