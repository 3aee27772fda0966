"""Builders for real models and real PEFT adapters used across the tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from release_gate.document import DecisionDocument
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


HELDOUT_TASK = OfflineTask("commonsense_qa_heldout", "commonsense_qa/default.yaml", "commonsense_qa", "validation",
                           (("training_split", None),))


def write_heldout_task(rows: list[dict], indices: range, directory: Path) -> Path:
    """lm-eval's own (letter-scored) CommonsenseQA over some rows only: one fast log-likelihood pass per item."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "commonsense_qa_heldout.jsonl"
    data.write_text("".join(json.dumps(rows[i]) + "\n" for i in indices), encoding="utf-8")
    write_json_task(HELDOUT_TASK, data, directory)
    return directory


def promote_in(document: dict, arm: str, sha256: str) -> DecisionDocument:
    """A stored run's ``decision.json`` turned into a PROMOTE of ``arm`` (the fields the gate sets on one).

    Used with the committed fixture run (a real run's outputs) where a test needs the PROMOTE branch of a
    writer or reader that takes the decision document as data; parsed as every reader parses it.
    """
    promoted = {**document, "outcome": "PROMOTE", "promoted": {"arm": arm, "sha256": sha256, "path": "promoted"}}
    promoted["reasons"] = [f"PROMOTE {arm}: test", *document["reasons"][1:]]
    return DecisionDocument.model_validate(promoted)


def loss_gradients(base_model: Path, adapter_dir: Path, rows_file: Path, n: int) -> dict[str, torch.Tensor]:
    """``∂L/∂W`` (float64, out×in) of every adapted module, at the adapter, over ``n`` chat-template rows.

    ``L`` is the product's calibration loss (summed mean answer NLL, :func:`answer_nll`); the gradient of a
    linear layer is ``Σ_t δ_t x_tᵀ``, accumulated by hooks on the merged model.
    """
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.calibration import (
        CalibrationConfig,
        answer_nll,
        encode,
        length_buckets,
        load_merged_model,
        read_examples,
    )

    adapter = load_adapter(adapter_dir)
    model, tokenizer = load_merged_model(str(base_model), adapter, "cpu", torch.float32)
    cfg = CalibrationConfig(rows_file, n=n, template="chat")
    encoded = [encode(e, tokenizer, cfg) for e in read_examples(cfg)[0]]
    named = dict(model.named_modules())
    grads = {m.name: torch.zeros(named[m.name].weight.shape, dtype=torch.float64) for m in adapter.modules.values()}
    inputs: dict[str, torch.Tensor] = {}

    def leaf_input(name: str):
        def hook(module, args):
            inputs[name] = args[0].detach()
            return (args[0] if args[0].requires_grad else inputs[name].requires_grad_(True), *args[1:])
        return hook

    def accumulate(name: str):
        def add(grad: torch.Tensor) -> None:
            grads[name] += torch.einsum("bto,bti->oi", grad.double(), inputs[name].double())

        def hook(module, args, output):
            output.register_hook(add)
        return hook

    handles = [h for name in grads for h in (named[name].register_forward_pre_hook(leaf_input(name)),
                                             named[name].register_forward_hook(accumulate(name)))]
    try:
        for rows in length_buckets(encoded, 8):
            answer_nll(model, encoded, rows, tokenizer.pad_token_id or 0).backward()
    finally:
        for handle in handles:
            handle.remove()
    return grads


#: One singular component ``σ·p qᵀ`` of a module's ΔW (``p``: out, ``q``: in; unit vectors).
Component = tuple[torch.Tensor, torch.Tensor, float]


def ascent_components(base_model: Path, adapter_dir: Path, rows_file: Path, *, n: int,
                      kappa: float) -> dict[str, Component]:
    """Per module, ``κ·σ₁·p qᵀ`` with ``(p, q)`` the top singular pair of ``∂L/∂W`` at the adapter.

    The direction in which the loss on ``rows_file`` rises fastest. Spectral Surgery's premise is that such
    a component shows a large positive sensitivity on *other* rows of the task (the gate's calibration
    slice), so grad_direction suppresses it while a random edit of the same size keeps it.
    """
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.spectral import thin_svd

    grads = loss_gradients(base_model, adapter_dir, rows_file, n)
    out = {}
    for module in load_adapter(adapter_dir).modules.values():
        sigma_1 = float(thin_svd(module.B, module.A, module.scale).sigma[0])
        p, _, qt = torch.linalg.svd(grads[module.name], full_matrices=False)
        out[module.name] = (p[:, 0], qt[0], kappa * sigma_1)
    return out


def trained_components(base_model: Path, adapter_dir: Path, rows_file: Path, work: Path, *,
                       epochs: int = 2) -> dict[str, Component]:
    """Per module, a rank-1 LoRA trained with PEFT on ``rows_file`` on top of the merged adapter.

    What a second fine-tune adds to an adapter (a house style, say), as one component per module that can
    be written into it: the demo's own trainer, at r 1 on the adapter's modules.
    """
    from release_gate.embedded_demo import TrainingRecipe, train_demo_adapter
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.calibration import load_merged_model

    adapter = load_adapter(adapter_dir)
    merged = work / "merged"
    model, tokenizer = load_merged_model(str(base_model), adapter, "cpu", torch.float32)
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name in adapter.modules}))
    trained = load_adapter(train_demo_adapter(merged, rows_file, work / "rank1",
                                              TrainingRecipe(r=1, lora_alpha=2, target_modules=targets,
                                                             epochs=epochs)))
    out = {}
    for name, module in trained.modules.items():
        b, a = module.B[:, 0].double() * module.scale, module.A[0].double()
        out[name] = (b / b.norm(), a / a.norm(), float(b.norm() * a.norm()))
    return out


def replace_smallest(adapter_dir: Path, out: Path, components: dict[str, list[Component]]) -> Path:
    """A copy of ``adapter_dir`` whose smallest singular components are replaced, module by module.

    ``components[module][0]`` takes the smallest slot, ``[1]`` the next, and so on: the same rank and config,
    so the engine serves it like the original (the new directions need not be orthogonal to the kept ones).
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE, load_adapter
    from release_gate.surgery.spectral import thin_svd

    adapter = load_adapter(adapter_dir)
    tensors = load_file(Path(adapter_dir) / SAFETENSORS_FILE)
    for module in adapter.modules.values():
        spectrum = thin_svd(module.B, module.A, module.scale)
        U, V, sigma = spectrum.U.clone(), spectrum.V.clone(), spectrum.sigma.clone()
        for slot, (p, q, s) in enumerate(components[module.name], start=1):
            U[:, -slot], V[:, -slot], sigma[-slot] = p, q, s
        # scale·B·A = U diag(σ) Vᵀ
        tensors[module.b_key] = (U * sigma / module.scale).to(tensors[module.b_key].dtype).contiguous()
        tensors[module.a_key] = V.T.to(tensors[module.a_key].dtype).contiguous()
    out.mkdir(parents=True)
    shutil.copy2(Path(adapter_dir) / CONFIG_FILE, out / CONFIG_FILE)
    save_file(tensors, out / SAFETENSORS_FILE, metadata={"format": "pt"})
    return out


@dataclass(frozen=True)
class Keys:
    """The gate's signing key and the serving host's public key, as PEM files."""

    private: Path
    public: Path


def key_pair(directory: Path, name: str = "gate") -> Keys:
    """A fresh P-256 key pair made for a test (unencrypted PKCS#8 and SubjectPublicKeyInfo PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return Keys(private, public)
