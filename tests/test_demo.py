"""`release-gate demo`: the embedded offline default gates the shipped adapter, re-uses its caches, and the
shipped adapter is what its recipe gives.

The gate test runs the demo's own code path with smaller slices (the default sizes take minutes on 2 cores);
the CLI's default is exercised by `make demo`. The shipped recipe is 32 training steps, so the retrain test
trains it in full through the same code as `demo --retrain` and scores it next to the shipped adapter.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import tomllib
from pathlib import Path

import pytest
from scipy.stats import binomtest

from release_gate.assets import HUB_IDS, default_cache_dir, fetch
from release_gate.cli import main
from release_gate.embedded_demo import (
    DEMO_CONTROL_PARAMS,
    DEMO_POLICIES,
    DEMO_RECIPE,
    DEMO_TRAIN_ROWS,
    GUARD_TASK,
    RECIPE_FILE,
    SHIPPED_ADAPTER,
    TARGET_METRIC,
    TARGET_TASK,
    DemoSize,
    DemoSlices,
    recipe_record,
    retrained_adapter,
    run_demo,
    shipped_recipe,
    write_generative_task,
    write_slice,
)
from release_gate.schema import EXIT_CODES
from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE, load_adapter

SMALL = DemoSize(target_limit=12, guard_limit=2, guard_max_gen_toks=16)


def _stored() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (default_cache_dir() / "items").rglob("*") if p.is_file()}


def test_the_shipped_adapter_is_its_recipe_named_by_hub_id_and_in_the_wheel():
    record = shipped_recipe()
    # --retrain reproduces exactly the recipe and rows the shipped adapter was trained with
    assert {k: record[k] for k in ("recipe", "train_rows")} == recipe_record(DEMO_RECIPE, DEMO_TRAIN_ROWS)
    config = json.loads((SHIPPED_ADAPTER / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == HUB_IDS["SmolLM2-135M-Instruct"]
    assert sorted(config["target_modules"]) == sorted(DEMO_RECIPE.target_modules)
    assert (SHIPPED_ADAPTER / SAFETENSORS_FILE).stat().st_size < 8 * 2**20
    assert len(load_adapter(SHIPPED_ADAPTER).modules) == 60
    effect = record["effect"]  # measured on the demo's target against the base model
    assert effect["metric"] == TARGET_METRIC and effect["p"] <= 0.001
    assert binomtest(effect["wins"], effect["wins"] + effect["losses"], alternative="greater").pvalue <= 0.001
    package_data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = package_data["tool"]["setuptools"]["package-data"]["release_gate"]
    assert sorted(p.name for p in SHIPPED_ADAPTER.iterdir()) == sorted([CONFIG_FILE, RECIPE_FILE, SAFETENSORS_FILE])
    shipped = [f"{SHIPPED_ADAPTER.name}/{p.name}" for p in SHIPPED_ADAPTER.iterdir()]
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in shipped), patterns


@pytest.mark.slow
@pytest.mark.vllm
def test_demo_runs_the_sequential_gate_and_reruns_from_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="release_gate")
    out = tmp_path / "demo"
    first = run_demo(out, size=SMALL)
    decision = json.loads((out / "decision.json").read_text())
    assert first.exit_code == EXIT_CODES[decision["outcome"]]
    assert set(decision["arms"]) == {"base", "baseline", *DEMO_POLICIES, "random_index@0", "random_index@1",
                                     "random_index@2"}
    assert decision["arms"]["baseline"]["path"] == str(SHIPPED_ADAPTER)
    assert decision["arms"]["random_index@0"]["policy"]["amp_factor"] == DEMO_CONTROL_PARAMS["amp_factor"]
    assert decision["tasks"][TARGET_TASK]["role"] == "target"
    assert decision["tasks"][GUARD_TASK]["role"] == "guard"
    assert decision["design"]["sequential"] and decision["design"]["looks"] == list(SMALL.looks) == [0.4, 1.0]
    for name in ("report.html", "summary.md", "junit.xml", "inspect.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "inspect.json").read_text())["n_modules"] == 60
    logged = caplog.text
    assert "cross-layer alignment" in logged and f"plan: target {TARGET_TASK}" in logged
    assert "demo adapter (shipped): r 8" in logged and "demo policies: abs_select_strong" in logged

    stored = _stored()
    second = run_demo(out, size=SMALL)  # cached: same adapter, calibration and scores
    assert second.document.comparisons == first.document.comparisons
    assert _stored() == stored


#: Items of the target (its sampled order) the retrain test scores, and how far a retrained adapter's exact
#: score may sit from the shipped one's there (the band: retraining on another CPU changes a few answers).
RETRAIN_N = 96
RETRAIN_BAND = 0.08


@pytest.mark.slow
@pytest.mark.vllm
def test_a_retrained_adapter_reaches_the_shipped_ones_band(tmp_path):
    from release_gate.evaluation.engine import Arm, EngineSettings
    from release_gate.evaluation.in_process import VllmBackend
    from release_gate.evaluation.runner import TaskRequest, resolve_task
    from release_gate.evaluation.session import EvaluationSession
    from release_gate.evaluation.store import ItemStore
    from release_gate.evaluation.tasks import prepare_environment, task_manager
    from release_gate.files import read_jsonl

    assets = fetch()
    rows = read_jsonl(assets.commonsense_qa)
    train = write_slice(rows, DEMO_TRAIN_ROWS, tmp_path / "train.jsonl")
    retrained = retrained_adapter(assets.model_dir, tmp_path, train, DEMO_RECIPE)  # what `demo --retrain` runs
    assert json.loads((retrained / CONFIG_FILE).read_text())["base_model_name_or_path"] == HUB_IDS["SmolLM2-135M-Instruct"]

    prepare_environment(assets)
    tasks = task_manager([write_generative_task(rows, DemoSlices().evaluation, tmp_path / "tasks")])
    task = resolve_task(TaskRequest(TARGET_TASK, TARGET_METRIC, limit=RETRAIN_N, chat_template=True), tasks)
    # the session checks that "baseline" is applied (its canary): the shipped adapter plays that part
    arms = [Arm.base(), Arm.from_adapter("baseline", str(SHIPPED_ADAPTER)), Arm.from_adapter("retrained", str(retrained))]
    settings = EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=1024)
    with EvaluationSession(arms, [task], ItemStore(tmp_path / "items"), VllmBackend(settings)) as session:
        scores = {arm: by_task[TARGET_TASK] for arm, by_task in
                  session.fetch({arm.name: {TARGET_TASK: RETRAIN_N} for arm in arms}).items()}
    for arm in ("baseline", "retrained"):  # both beat the base model clearly on these items alone
        wins, losses = int((scores[arm] > scores["base"]).sum()), int((scores[arm] < scores["base"]).sum())
        assert binomtest(wins, wins + losses, alternative="greater").pvalue <= 0.001, (arm, wins, losses)
    assert abs(scores["retrained"].mean() - scores["baseline"].mean()) <= RETRAIN_BAND, scores


def test_demo_refuses_a_foreign_output_dir(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "is not a release-gate run directory" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
