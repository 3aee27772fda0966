"""Merged-weight LoRA arms on the CPU: ``W + ΔW`` written into the running engine, base restored after.

vLLM-CPU applies LoRA per wrapped module on every forward pass; on a small model that dispatch, not the
arithmetic, dominates (a rank-8 o/down LoRA arm decoded at 0.43× the base model, though it adds < 1% of
the FLOPs). An arm evaluated with its update merged into the weights costs what the base model costs.

This is a vLLM *worker extension* (``LLM(worker_extension_cls=…)``, the in-place weight-update path RLHF
frameworks use to sync weights into a live engine), called through ``LLM.collective_rpc``. vLLM-CPU
prepacks every linear weight for its GEMM kernel at load time and drops the plain weight, so the
extension keeps its own copy of each edited module's base weight (read once from the model's
safetensors) and re-runs vLLM's own CPU GEMM dispatch after writing ``W + s·B·A``. Only modules that map
one-to-one onto a vLLM layer can be merged (``o_proj``, ``down_proj``; not the packed ``qkv_proj`` or
``gate_up_proj``): :func:`mergeable` says whether an adapter qualifies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Projections whose vLLM layer holds exactly the PEFT module's weight (not packed with others).
MERGEABLE_PROJECTIONS = frozenset({"o_proj", "down_proj"})


def mergeable(projections: Iterable[str]) -> bool:
    """Whether an adapter on these projections can be evaluated with merged weights."""
    kinds = set(projections)
    return bool(kinds) and kinds <= MERGEABLE_PROJECTIONS


class MergedLoraExtension:
    """Mixed into vLLM's worker: ``release_gate_merge(path)`` writes an adapter in, ``None`` restores base."""

    def release_gate_merge(self, adapter: str | None) -> int:
        """Write ``W_base + ΔW`` for every module of ``adapter`` (base weights back where it has none).

        Returns the number of layers written. Deterministic: every call starts from the saved base.
        """
        import torch

        from ..surgery.adapter import load_adapter

        layers = self._release_gate_layers()
        deltas: dict[str, Any] = {}
        if adapter is not None:
            for module in load_adapter(adapter).modules.values():
                if module.name not in layers:
                    raise ValueError(f"merged LoRA: module {module.name} is not a mergeable layer of this model")
                deltas[module.name] = module.scale * (module.B.double() @ module.A.double())
        written = 0
        touched = set(deltas) | getattr(self, "_release_gate_dirty", set())
        for name in sorted(touched):
            layer, base = layers[name], self._release_gate_base(name)
            weight = base if name not in deltas else (base.double() + deltas[name]).to(base.dtype)
            layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            _dispatch(layer)
            written += 1
        self._release_gate_dirty = set(deltas)
        return written

    def _release_gate_layers(self) -> dict[str, Any]:
        if not hasattr(self, "_release_gate_modules"):
            model = self.model_runner.get_model()
            # in a LoRA-enabled engine the layer is wrapped: the weights live in its ``base_layer``
            self._release_gate_modules = {name: getattr(module, "base_layer", module)
                                          for name, module in model.named_modules()
                                          if name.rsplit(".", 1)[-1] in MERGEABLE_PROJECTIONS}
        return self._release_gate_modules

    def _release_gate_base(self, name: str) -> Any:
        """The base weight of one layer, read from the checkpoint once and kept in the engine's dtype."""
        if not hasattr(self, "_release_gate_bases"):
            self._release_gate_bases = {}
        if name not in self._release_gate_bases:
            self._release_gate_bases.update(_read_base_weights(Path(self.model_config.model),
                                                               self._release_gate_layers(), self.model_config.dtype))
        return self._release_gate_bases[name]


def _read_base_weights(model_dir: Path, layers: dict[str, Any], dtype: Any) -> dict[str, Any]:
    from safetensors import safe_open

    wanted = {f"{name}.weight": name for name in layers}
    out = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 — safe_open is not a mapping
                if key in wanted:
                    out[wanted[key]] = handle.get_tensor(key).to(dtype)
    missing = sorted(set(layers) - set(out))
    if missing:
        raise ValueError(f"merged LoRA: {len(missing)} base weights not in {model_dir} (first: {missing[0]})")
    return out


def _dispatch(layer: Any) -> None:
    """Re-pack the layer's weight for vLLM-CPU's GEMM kernel, as vLLM does after loading."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
