"""Adapter I/O: PEFT-equal scaling, every adapter bad input of SPEC §13 (exit-2 errors)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from release_gate.errors import BadInput
from release_gate.surgery.adapter import check_output_dir, check_servable, load_adapter

from factories import make_adapter, tiny_llama


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(r=8, alpha=16),
        dict(r=8, alpha=16, use_rslora=True),
        dict(r=8, alpha=16, rank_pattern={"o_proj": 4, "layers.1.self_attn.q_proj": 2},
             alpha_pattern={"down_proj": 3, "v_proj": 40}),
    ],
)
def test_scaling_and_rank_match_peft(tmp_path, kwargs):
    path = make_adapter(tiny_llama(), tmp_path / "a", **kwargs)
    adapter = load_adapter(path)
    peft_model = PeftModel.from_pretrained(tiny_llama(), path)
    layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert set(layers) == set(adapter.modules)
    for name, module in adapter.modules.items():
        assert module.scale == pytest.approx(layers[name].scaling["default"], rel=1e-12), name
        assert module.rank == layers[name].r["default"], name


def test_selects_targets_and_layers(tiny_adapter_dir):
    adapter = load_adapter(tiny_adapter_dir)
    chosen = adapter.select()
    assert [m.name for m in chosen] == [
        "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj",
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj",
    ]
    assert [m.layer for m in adapter.select(["o_proj"], layers=[1])] == [1]
    with pytest.raises(BadInput, match=r"none of the edit targets \(gate_proj\).*it adapts: down_proj, o_proj, q_proj, v_proj"):
        adapter.select(["gate_proj"])


def copy_adapter(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_weights(path, fn):
    weights = load_file(str(path / "adapter_model.safetensors"))
    fn(weights)
    save_file(weights, str(path / "adapter_model.safetensors"))


def edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def first_key(weights, which="lora_A"):
    return next(k for k in weights if which in k)


def _missing_dir(p):
    shutil.rmtree(p)


def _no_config(p):
    (p / "adapter_config.json").unlink()


def _no_weights(p):
    (p / "adapter_model.safetensors").unlink()


def _truncated(p):
    data = (p / "adapter_model.safetensors").read_bytes()
    (p / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage(p):
    (p / "adapter_model.safetensors").write_bytes(b"\x00\x01not a safetensors file")


def _pickled_bin(p):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (p / "adapter_model.safetensors").unlink()
    torch.save({"x": Evil()}, p / "adapter_model.bin")


def _not_lora(p):
    edit_config(p, peft_type="IA3")


def _dora(p):
    edit_config(p, use_dora=True)


def _nan(p):
    edit_weights(p, lambda w: w[first_key(w)].view(-1).__setitem__(0, float("nan")))


def _inf(p):
    edit_weights(p, lambda w: w[first_key(w, "lora_B")].view(-1).__setitem__(3, float("inf")))


def _all_zero(p):
    edit_weights(p, lambda w: [t.zero_() for k, t in w.items() if "lora_B" in k])


def _rank_mismatch(p):
    edit_config(p, r=4)


def _unchained(p):
    edit_weights(p, lambda w: w.__setitem__(first_key(w), torch.zeros(3, 64)))


def _missing_b(p):
    edit_weights(p, lambda w: w.pop(first_key(w, "lora_B")))


def _bad_json(p):
    (p / "adapter_config.json").write_text("{not json")


@pytest.mark.parametrize(
    "damage,message",
    [
        (_missing_dir, "adapter directory not found"),
        (_no_config, "no adapter_config.json"),
        (_no_weights, r"no adapter weights \(adapter_model.safetensors or adapter_model.bin\)"),
        (_truncated, "corrupt or truncated safetensors"),
        (_garbage, "corrupt or truncated safetensors"),
        (_pickled_bin, "cannot be loaded safely with weights_only=True"),
        (_not_lora, "peft_type is 'IA3'; only LORA"),
        (_dora, "DoRA adapters are not supported"),
        (_nan, "contains NaN or Inf"),
        (_inf, "contains NaN or Inf"),
        (_all_zero, "all-zero factor, so ΔW = 0"),
        (_rank_mismatch, "resolves to 4 .* but its weights have rank 8"),
        (_unchained, "factors that do not chain"),
        (_missing_b, "has no lora_B weight"),
        (_bad_json, "not valid JSON"),
    ],
)
def test_adapter_bad_inputs(tmp_path, tiny_adapter_dir, damage, message, capsys):
    path = copy_adapter(tiny_adapter_dir, tmp_path / "adapter")
    damage(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()} if path.exists() else None
    with pytest.raises(BadInput, match=message) as info:
        load_adapter(path)
    assert str(path) in str(info.value)
    assert "pwned" not in capsys.readouterr().out
    if before is not None:
        assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_output_dir_inside_input_is_refused(tiny_adapter_dir, tmp_path):
    for out in (tiny_adapter_dir, tiny_adapter_dir / "variants" / "x"):
        with pytest.raises(BadInput, match="inside the input adapter"):
            check_output_dir(out, [tiny_adapter_dir], overwrite=True)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="exists and is not empty; pass --overwrite"):
        check_output_dir(existing, [tiny_adapter_dir], overwrite=False)


def test_rank_above_vllm_limit_is_refused(tmp_path):
    path = tmp_path / "huge"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 520, "lora_alpha": 16, "target_modules": ["o_proj"]}))
    save_file({
        "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight": torch.randn(520, 1024),
        "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight": torch.randn(1024, 520),
    }, str(path / "adapter_model.safetensors"))
    adapter = load_adapter(path)  # inspect can still read it
    with pytest.raises(BadInput, match="rank 520, above vLLM's maximum LoRA rank 512"):
        check_servable(adapter)
