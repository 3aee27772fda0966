"""The CLI end to end on small real models: help, success paths, exit-2 errors that lose nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.files import directory_sha256

from factories import TINY, make_adapter

WEIGHTS = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def tiny_vocab_model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer (so calibration can tokenize)."""
    assets = fetch()
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": len(tokenizer)})).eval()
    path = tmp_path_factory.mktemp("tinyvocab") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    adapter = make_adapter(model, path.parent / "adapter")
    return path, adapter


@pytest.fixture()
def calib(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: 2+{i}=", "answer": f" {2 + i}"}) + "\n" for i in range(12)))
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["assets"], ["assets", "fetch"], ["policies"], ["inspect"], ["edit"], ["demo"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: release-gate" in capsys.readouterr().out


def test_policies_lists_all(capsys):
    code, out, _ = run(capsys, "policies", "--json")
    listing = json.loads(out)
    assert code == 0 and set(listing) >= {"abs_select", "smooth_abs", "grad_direction", "random_index"}
    assert listing["abs_select"]["amp_factor"] == 1.25


def test_inspect_json(tiny_adapter_dir, capsys):
    code, out, _ = run(capsys, "inspect", tiny_adapter_dir, "--json", "--top-m", "4")
    report = json.loads(out)
    assert code == 0 and report["n_modules"] == 8
    assert report["alignment"]["o_proj"]["m"] == 4 and len(report["alignment"]["o_proj"]["u1_abs_cos"]) == 2
    assert report["cross_module"]["layers"] == [0, 1]
    code, out, _ = run(capsys, "inspect", tiny_adapter_dir)
    assert code == 0 and "cross-layer alignment" in out


def test_edit_with_calibration_and_cache_reuse(tiny_vocab_model, calib, tmp_path, capsys):
    model, adapter = tiny_vocab_model
    before = directory_sha256(adapter, WEIGHTS)
    common = ["edit", "--base-model", model, "--adapter", adapter, "--calibration", calib,
              "--set", "calibration.n=10", "--set", "calibration.batch_size=4", "--cache-dir", tmp_path / "cache"]
    code, out, err = run(capsys, *common, "--policy", "abs_select", "--out", tmp_path / "a")
    assert code == 0, err
    assert "abs_select: edited 4/4 modules" in out
    code, out, err = run(capsys, *common, "--policy", "smooth_abs", "--set", "temperature=0.5", "--out", tmp_path / "b")
    assert code == 0, err
    first = json.loads((tmp_path / "a" / "spectral_edit.json").read_text())
    second = json.loads((tmp_path / "b" / "spectral_edit.json").read_text())
    assert first["calibration"]["cache_key"] == second["calibration"]["cache_key"]
    assert first["calibration"]["indices"] == list(range(10))
    assert second["policy"]["temperature"] == 0.5
    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 1
    assert directory_sha256(adapter, WEIGHTS) == before


def expect_bad_input(capsys, args, *fragments):
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("release-gate: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_bad_inputs_exit_2_and_lose_nothing(tiny_vocab_model, calib, tmp_path, capsys):
    model, adapter = tiny_vocab_model
    before = directory_sha256(adapter, WEIGHTS)
    edit = ["edit", "--base-model", model, "--adapter", adapter]
    expect_bad_input(capsys, ["edit", "--base-model", model, "--adapter", tmp_path / "nope", "--policy",
                              "abs_select", "--out", tmp_path / "o"], "adapter directory not found")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", calib, "--out", adapter / "v"],
                     "inside the input adapter")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", calib, "--out", adapter],
                     "inside the input adapter")
    expect_bad_input(capsys, [*edit, "--policy", "nope", "--out", tmp_path / "o"], "unknown policy 'nope'")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--set", "core_frac=2", "--calibration", calib,
                              "--out", tmp_path / "o"], "key 'core_frac'", "fraction in [0, 1]")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--out", tmp_path / "o"],
                     "policy 'abs_select' needs calibration data: pass --calibration FILE")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", calib, "--set", "calibration.nn=3",
                              "--out", tmp_path / "o"], "calibration.nn: unknown key")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", calib, "--set", "calibration.n=99",
                              "--out", tmp_path / "o"], "needs 99 rows")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", calib, "--targets", "gate_proj",
                              "--out", tmp_path / "o"], "none of the edit targets (gate_proj)")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "answer": \n')
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", broken, "--set", "calibration.n=1",
                              "--out", tmp_path / "o"], "broken.jsonl: line 2 is not valid JSON")
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"prompt": "What is the boiling point of water at sea level?", "answer": " 100"}) + "\n")
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"question": "what is the boiling point of water at sea level?"}) + "\n")
    expect_bad_input(capsys, [*edit, "--policy", "abs_select", "--calibration", leaky, "--set", "calibration.n=1",
                              "--eval-data", evaluation, "--out", tmp_path / "o"], "overlaps evaluation item")
    assert not (tmp_path / "o").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    expect_bad_input(capsys, [*edit, "--policy", "random_index", "--out", existing], "pass --overwrite")
    assert (existing / "mine.txt").read_text() == "keep me"
    other = tmp_path / "other-model"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    config["hidden_size"], config["head_dim"] = 128, 32
    (other / "config.json").write_text(json.dumps(config))
    expect_bad_input(capsys, ["edit", "--base-model", other, "--adapter", adapter, "--policy", "random_index",
                              "--out", tmp_path / "o"], "in the adapter but", "trained on another model")
    assert directory_sha256(adapter, WEIGHTS) == before


def test_overwrite_replaces_atomically(tiny_vocab_model, tmp_path, capsys):
    model, adapter = tiny_vocab_model
    out = tmp_path / "v"
    args = ["edit", "--base-model", model, "--adapter", adapter, "--policy", "random_index", "--out", out]
    assert run(capsys, *args)[0] == 0
    first = (out / "adapter_model.safetensors").read_bytes()
    assert run(capsys, *args, "--set", "seed=2", "--overwrite")[0] == 0
    assert (out / "adapter_model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temp or backup dirs left behind


# --- the Python API mirrors the CLI ------------------------------------------------------------------


def test_import_is_light_and_versioned():
    import subprocess
    import sys
    from importlib import metadata

    code = ("import sys, release_gate\nprint(release_gate.__version__)\n"
            "print(sorted(m for m in ('torch', 'vllm', 'lm_eval', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    version, heavy = done.stdout.splitlines()
    assert version == metadata.version("release-gate") and heavy == "[]"
    import tomllib
    from pathlib import Path

    import release_gate

    root = Path(release_gate.__file__).parent
    assert (root / "py.typed").is_file()  # and shipped in the wheel:
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["release_gate"]


def test_every_command_has_its_function():
    import importlib
    from pathlib import Path
    from types import ModuleType

    import release_gate
    from release_gate.cli import COMMANDS

    names = {c.__name__.rsplit(".", 1)[1] for c in COMMANDS} - {"assets", "lm_eval"}  # assets: a CLI chore
    assert names <= set(release_gate.__all__)
    root = Path(release_gate.__file__).parent
    for module in sorted(p.stem for p in root.iterdir() if not p.name.startswith("_") and
                         (p.suffix == ".py" or (p / "__init__.py").is_file())):
        importlib.import_module(f"release_gate.{module}")  # a submodule named like a function would replace it
    assert all(callable(getattr(release_gate, n)) and not isinstance(getattr(release_gate, n), ModuleType)
               for n in names)


def test_api_edit_writes_what_the_cli_writes(tiny_vocab_model, calib, tmp_path, capsys):
    import release_gate

    model, adapter = tiny_vocab_model
    settings = ["--set", "calibration.n=10", "--set", "calibration.batch_size=4"]
    code, _, err = run(capsys, "edit", "--base-model", model, "--adapter", adapter, "--calibration", calib, *settings,
                       "--policy", "smooth_abs", "--out", tmp_path / "cli", "--cache-dir", tmp_path / "c1")
    assert code == 0, err
    out, variant = release_gate.edit(str(model), adapter, "smooth_abs", tmp_path / "api",
                                     calibration={"file": calib, "n": 10, "batch_size": 4}, cache_dir=tmp_path / "c2")
    assert out == tmp_path / "api" and variant.name == "smooth_abs"
    assert directory_sha256(tmp_path / "api", WEIGHTS) == directory_sha256(tmp_path / "cli", WEIGHTS)


def test_api_inspect_schema_and_policies_equal_the_cli(tiny_adapter_dir, capsys):
    import release_gate

    code, out, _ = run(capsys, "inspect", tiny_adapter_dir, "--json", "--top-m", "4")
    assert json.loads(out) == json.loads(json.dumps(release_gate.inspect(tiny_adapter_dir, top_m=4)))
    code, out, _ = run(capsys, "config-schema")
    assert json.loads(out) == release_gate.config_schema()
    code, out, _ = run(capsys, "policies", "--json")
    assert json.loads(out) == json.loads(json.dumps(release_gate.policies()))


def test_api_bad_input_raises_before_anything_is_written(tmp_path, base_config):
    import yaml

    import release_gate

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base_config, "gate": {"alpha": 0.7}}))
    with pytest.raises(release_gate.BadInput, match="gate.alpha"):
        release_gate.run(path)
    assert not (tmp_path / "run").exists()
