"""Builders for real models and real PEFT adapters used across the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from release_gate.evaluation.tasks import OfflineTask, write_json_task

TINY = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=97, max_position_embeddings=128, tie_word_embeddings=False,
)


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).to(dtype)
    return model.eval()


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    tiny_llama(seed).save_pretrained(path)
    return path


def make_adapter(
    model: torch.nn.Module,
    out: Path,
    *,
    r: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
    seed: int = 1,
    use_rslora: bool = False,
    rank_pattern: dict | None = None,
    alpha_pattern: dict | None = None,
    b_std: float = 0.05,
) -> Path:
    """A PEFT LoRA adapter with random non-zero A and B, saved by PEFT itself."""
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=use_rslora,
        rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {}, lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * b_std)
            elif "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
    peft_model.save_pretrained(out)
    peft_model.unload()
    return out


def smollm2_adapter(model_dir: Path, out: Path, *, seed: int, **kwargs) -> Path:
    """A random LoRA on the real SmolLM2 base (r 16, α 32, all seven projections by default)."""
    from transformers import AutoModelForCausalLM

    from release_gate.constants import LLAMA_PROJECTIONS

    options = {"r": 16, "alpha": 32, "targets": LLAMA_PROJECTIONS, "b_std": 0.02, **kwargs}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return make_adapter(base, out, seed=seed, **options)


def inflate_tail(adapter_dir: Path, out: Path, *, k: int, factor: float) -> Path:
    """A copy of ``adapter_dir`` whose ``k`` smallest singular components (per module) are ``factor``× larger.

    The corruption Spectral Surgery exists to repair (paper §3): directions that carry little of the
    adapter's signal now dominate its update. Written with the library's own exact thin SVD and gauge
    rebuild, so every other component is unchanged.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE, load_adapter
    from release_gate.surgery.spectral import rebuild_gauge, thin_svd

    adapter = load_adapter(adapter_dir)
    tensors = load_file(Path(adapter_dir) / SAFETENSORS_FILE)
    for module in adapter.modules.values():
        spectrum = thin_svd(module.B, module.A, module.scale)
        alpha = torch.ones(module.rank, dtype=torch.float64)
        alpha[module.rank - k:] = factor
        tensors[module.a_key] = rebuild_gauge(module.A, spectrum, alpha).to(tensors[module.a_key].dtype).contiguous()
    out.mkdir(parents=True)
    shutil.copy2(Path(adapter_dir) / CONFIG_FILE, out / CONFIG_FILE)
    save_file(tensors, out / SAFETENSORS_FILE, metadata={"format": "pt"})
    return out


HELDOUT_TASK = OfflineTask("commonsense_qa_heldout", "commonsense_qa/default.yaml", "commonsense_qa", "validation",
                           (("training_split", None),))


def write_heldout_task(rows: list[dict], indices: range, directory: Path) -> Path:
    """lm-eval's own (letter-scored) CommonsenseQA over some rows only: one fast log-likelihood pass per item."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "commonsense_qa_heldout.jsonl"
    data.write_text("".join(json.dumps(rows[i]) + "\n" for i in indices), encoding="utf-8")
    write_json_task(HELDOUT_TASK, data, directory)
    return directory


def promote_in(document: dict, arm: str, sha256: str) -> dict:
    """A stored run's ``decision.json`` turned into a PROMOTE of ``arm`` (the fields the gate sets on one).

    Used with the committed fixture run (a real run's outputs) where a test needs the PROMOTE branch of a
    writer or reader that takes the decision document as data.
    """
    promoted = {**document, "outcome": "PROMOTE", "promoted": {"arm": arm, "sha256": sha256, "path": "promoted"}}
    promoted["reasons"] = [f"PROMOTE {arm}: test", *document["reasons"][1:]]
    return promoted
