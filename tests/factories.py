"""Builders for real models and real PEFT adapters used across the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

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
