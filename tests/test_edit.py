"""Variants: reconstruction exactness through PEFT, sidecar, untouched inputs (SPEC §3, §12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from release_gate.files import directory_sha256
from release_gate.schema import SIDECAR_FILE as SIDECAR
from release_gate.surgery.adapter import load_adapter
from release_gate.surgery.calibration import Encoded, Sensitivities, per_example_sensitivities
from release_gate.surgery.edit import decompose, make_variant, write_variant
from release_gate.surgery.policies import AbsSelect, GradDirection, RandomIndex, SmoothAbs

from factories import tiny_llama


def sensitivities_for(adapter, spectra) -> Sensitivities:
    model = tiny_llama()
    named = dict(model.named_modules())
    with torch.no_grad():
        for m in adapter.modules.values():
            named[m.name].weight += m.scale * m.B @ m.A
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    examples = [Encoded(torch.randint(1, 97, (12,), generator=gen).tolist(), 5) for _ in range(6)]
    return Sensitivities(per_example_sensitivities(model, examples, spectra, batch_size=3), {"n": 6})


@pytest.fixture(scope="module")
def prepared(tiny_adapter_dir):
    adapter = load_adapter(tiny_adapter_dir)
    spectra = decompose(adapter.select())
    return adapter, spectra, sensitivities_for(adapter, spectra)


def peft_logits(adapter_dir, ids):
    model = PeftModel.from_pretrained(tiny_llama(), adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])


def test_identity_policy_reproduces_adapter(prepared, tmp_path, tiny_adapter_dir):
    adapter, spectra, sens = prepared
    identity = AbsSelect(name="identity", amp_factor=1.0, sup_factor=1.0, mid_factor=1.0)
    variant = make_variant(adapter, spectra, identity, sens)
    out = write_variant(variant, adapter, tmp_path / "identity", "tiny", sens)
    new, old = load_file(str(out / "adapter_model.safetensors")), adapter.tensors
    assert set(new) == set(old)
    for key in old:
        assert new[key].dtype == old[key].dtype and new[key].shape == old[key].shape
        if "lora_B" in key or "q_proj" in key or "v_proj" in key:
            assert torch.equal(new[key], old[key]), key  # bit-identical
    torch.testing.assert_close(peft_logits(out, IDS), peft_logits(tiny_adapter_dir, IDS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rebuild", ["gauge", "balanced"])
@pytest.mark.parametrize("policy", [AbsSelect(), SmoothAbs(), GradDirection(), RandomIndex(seed=2)])
def test_peft_forward_equals_base_plus_edited_update(prepared, tmp_path, rebuild, policy):
    adapter, spectra, sens = prepared
    variant = make_variant(adapter, spectra, policy, sens, rebuild=rebuild)
    out = write_variant(variant, adapter, tmp_path / "v", "tiny", sens)
    model = PeftModel.from_pretrained(tiny_llama(), out).eval()
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    edits = {e.name: e for e in variant.edits}
    changed = 0
    for name, spectrum in spectra.items():
        layer = layers[name]
        x_in = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(2)) if name.endswith("down_proj") else x
        with torch.no_grad():
            lora_out = (layer(x_in) - layer.base_layer(x_in)).double()
        sigma_new = torch.from_numpy(edits[name].sigma_new)
        expected = x_in.double() @ ((spectrum.U * sigma_new) @ spectrum.V.T).T
        torch.testing.assert_close(lora_out, expected, rtol=1e-4, atol=1e-5)
        changed += not np.allclose(edits[name].alpha, 1.0)
    assert changed > 0  # the policy really edited something


def test_sidecar_records_everything(prepared, tmp_path):
    adapter, spectra, sens = prepared
    before = directory_sha256(adapter.path, ["adapter_config.json", "adapter_model.safetensors"])
    variant = make_variant(adapter, spectra, GradDirection(name="grad_direction"), sens)
    out = write_variant(variant, adapter, tmp_path / "gd", "tiny-base", sens)
    doc = json.loads((out / SIDECAR).read_text())
    assert doc["policy"]["kind"] == "grad_direction" and doc["policy"]["eta_suppress"] == 2.0
    assert doc["source_adapter"]["sha256"] == adapter.sha256 == before
    assert doc["base_model"] == "tiny-base" and doc["calibration"] == {"n": 6}
    assert {"torch", "peft", "transformers"} <= set(doc["versions"])
    assert len(doc["modules"]) == 4
    record = doc["modules"][0]
    for key in ("sigma", "sigma_new", "alpha", "raw_alpha", "g_mean_abs", "g_mean_signed", "layer", "scale"):
        assert key in record
    np.testing.assert_allclose(record["sigma"], spectra[record["name"]].sigma.numpy())
    np.testing.assert_allclose(sum(record["sigma_new"]), sum(record["sigma"]))  # l1 energy
    np.testing.assert_allclose(record["g_mean_abs"], sens.mean_abs(record["name"]))
    # the adapter config is copied byte for byte; the input adapter is untouched
    assert (out / "adapter_config.json").read_bytes() == adapter.config_bytes
    assert directory_sha256(adapter.path, ["adapter_config.json", "adapter_model.safetensors"]) == before
