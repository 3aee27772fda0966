"""`release-gate edit` on SmolLM2-135M-Instruct: variants that PEFT and vLLM-CPU both load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from release_gate.assets import fetch
from release_gate.files import directory_sha256

from factories import smollm2_adapter

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "release_gate.cli"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    assets = fetch()
    root = tmp_path_factory.mktemp("smol")
    adapter = smollm2_adapter(assets.model_dir, root / "adapter", seed=3)
    rows = [json.loads(line) for line in assets.gsm8k.read_text().splitlines()[-16:]]
    calib = root / "calib.jsonl"
    calib.write_text("".join(
        json.dumps({"question": f"Question: {r['question']}\nAnswer:", "answer": " " + r["answer"]}) + "\n"
        for r in rows
    ))
    return assets, root, adapter, calib


def run_cli(*args, check=True):
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def variants(workspace):
    assets, root, adapter, calib = workspace
    before = directory_sha256(adapter, ["adapter_config.json", "adapter_model.safetensors"])
    out = {}
    for policy in ("abs_select", "grad_direction", "smooth_abs"):
        out[policy] = root / "variants" / policy
        run_cli("edit", "--base-model", assets.model_dir, "--adapter", adapter, "--policy", policy,
                "--calibration", calib, "--set", "calibration.n=16", "--set", "calibration.prompt_field=question",
                "--set", "calibration.batch_size=8", "--cache-dir", root / "cache", "--out", out[policy])
    out["random_index@1"] = root / "variants" / "random_index@1"
    run_cli("edit", "--base-model", assets.model_dir, "--adapter", adapter, "--policy", "random_index",
            "--set", "seed=1", "--out", out["random_index@1"])
    assert directory_sha256(adapter, ["adapter_config.json", "adapter_model.safetensors"]) == before
    return out


def test_one_calibration_is_shared_by_every_policy(workspace, variants):
    _, root, _, _ = workspace
    assert len(list((root / "cache" / "sensitivity").glob("*.safetensors"))) == 1
    sidecars = [json.loads((variants[p] / "spectral_edit.json").read_text()) for p in ("abs_select", "grad_direction")]
    assert sidecars[0]["calibration"]["indices"] == list(range(16))
    assert sidecars[0]["calibration"]["file_sha256"] == sidecars[1]["calibration"]["file_sha256"]
    assert len(sidecars[0]["modules"]) == 60  # o_proj + down_proj in 30 layers
    random_sidecar = json.loads((variants["random_index@1"] / "spectral_edit.json").read_text())
    assert random_sidecar["calibration"] is None and random_sidecar["policy"]["seed"] == 1


def test_peft_loads_variants_and_outputs_differ(workspace, variants):
    assets, _, adapter, _ = workspace
    ids = torch.tensor([[1, 9690, 198, 504, 3575, 282, 4649, 314]])

    def logits(path):
        base = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
        with torch.no_grad():
            return PeftModel.from_pretrained(base, path).eval()(input_ids=ids).logits

    original = logits(adapter)
    for name, path in variants.items():
        diff = (logits(path) - original).abs().max().item()
        assert diff > 1e-3, f"{name} did not change the model's outputs"


@pytest.mark.vllm
def test_vllm_serves_variants_and_outputs_differ(workspace, variants, tmp_path):
    assets, _, adapter, _ = workspace
    out = tmp_path / "logprobs.json"
    arms = [f"baseline={adapter}", *(f"{name}={path}" for name, path in variants.items() if name != "smooth_abs")]
    script = Path(__file__).with_name("vllm_logprobs.py")
    result = subprocess.run([sys.executable, str(script), str(assets.model_dir), str(out), *arms],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(out.read_text())
    flat = {name: np.concatenate([p["logprobs"] for p in prompts]) for name, prompts in scores.items()}
    assert not np.allclose(flat["baseline"], flat["base"], atol=1e-4), "adapter not applied by the engine"
    for name in ("abs_select", "grad_direction", "random_index@1"):
        assert not np.allclose(flat[name], flat["baseline"], atol=1e-4), f"{name} served like the baseline"
