"""What a reviewer reads must be true: a point-mode PROMOTE's card, summary and JUnit, and file modes.

The point-mode documents come from the real gate (``decide`` with ``mode: point``) laid over a stored
run's ``decision.json``, then written by the run's own writer (``write_outputs``); the umask cases run
the writers under each umask, as a user's shell sets it. Also: the run's lm-eval results files, a
variant's published base model name, and ``release-gate lm-eval``'s per-adapter output folders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from huggingface_hub import ModelCard

from release_gate.document import DecisionDocument
from release_gate.files import directory_sha256
from release_gate.gate.decide import decide
from release_gate.gate.rules import GateRule, TaskRule
from release_gate.integrations.releases import ADAPTER_FILES, Trust, check_release
from release_gate.reporting.outputs import write_outputs
from release_gate.schema import DECISION_FILE, JUNIT_FILE, MODEL_CARD_FILE, PROMOTED_DIR, SUMMARY_FILE

from factories import make_adapter, promote_in, tiny_llama

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"
TARGET, GUARD = "commonsense_qa_heldout", "ifeval"
VARIANTS, CONTROLS = ["abs_select", "grad_direction"], ["random_index@0", "random_index@1"]


def point_promote(tmp_path: Path, tiny_adapter_dir: Path) -> tuple[Path, DecisionDocument, dict]:
    """A PROMOTE on point estimates that no test would back: +2.5 pts on 40 items (2 gained, 1 lost) and a
    guard unchanged. Returns the run dir, the document and its variant dirs."""
    rng = np.random.default_rng(0)
    baseline = {TARGET: (rng.random(40) < 0.5).astype(float), GUARD: (rng.random(12) < 0.5).astype(float)}
    lost, gained = np.flatnonzero(baseline[TARGET] == 1)[:1], np.flatnonzero(baseline[TARGET] == 0)[:2]
    better = baseline[TARGET].copy()
    better[lost], better[gained] = 0.0, 1.0
    scores = {"base": baseline, "baseline": baseline, "abs_select": {TARGET: better, GUARD: baseline[GUARD]},
              "grad_direction": baseline, **{c: baseline for c in CONTROLS}}
    rule = GateRule(mode="point")
    decision = decide(scores, [TaskRule(TARGET, "acc,none", "target")],
                      [TaskRule(GUARD, "prompt_level_strict_acc,none", "guard", max_drop=0.05)], rule, VARIANTS,
                      CONTROLS)
    assert decision.outcome == "PROMOTE" and decision.promoted == "abs_select"
    assert decision.verdicts["abs_select"].p_value > rule.alpha  # no test would promote it
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    variant = Path(shutil.copytree(tiny_adapter_dir, run_dir / "variants" / "abs_select", dirs_exist_ok=True))
    stored = json.loads((run_dir / DECISION_FILE).read_text())
    document = promote_in({**stored, **decision.document_fields()}, "abs_select", directory_sha256(variant, ADAPTER_FILES))
    return run_dir, document.model_copy(update={"reasons": decision.reasons}), {"abs_select": variant}


def test_a_point_mode_promote_claims_no_confidence_it_does_not_have(tmp_path, tiny_adapter_dir):
    run_dir, document, variants = point_promote(tmp_path, tiny_adapter_dir)
    write_outputs(run_dir, document, variants)
    card = (run_dir / PROMOTED_DIR / MODEL_CARD_FILE).read_text()
    why = card.split("## Why it was promoted", 1)[1].split("## Provenance", 1)[0]
    assert "LCB" not in why and "p = " not in why and "its level at look" not in why, why
    assert "point estimates" in why and "mode: point" in why
    assert "target reward +2.5 pts vs baseline (point estimate, needs > +0.0)" in why  # 2 gained, 1 lost of 40
    assert ModelCard(card).data.library_name == "peft"

    summary = (run_dir / SUMMARY_FILE).read_text()
    table = summary.split("| variant |", 1)[1]
    assert "LCB" not in table and "p ≤ level" not in table and "[" not in table, table
    assert "point estimates only" in summary and "exact tests" not in summary

    suite = ElementTree.parse(run_dir / JUNIT_FILE).getroot().find("testsuite")
    failed = {case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None}
    assert not any(name.startswith("abs_select:") for name in failed), failed  # the promoted arm failed nothing
    assert any(name.startswith("grad_direction:") for name in failed)  # unchanged: no gain on the point estimate


def test_a_statistical_promote_still_states_its_test(tmp_path, tiny_adapter_dir):
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    variant = Path(shutil.copytree(tiny_adapter_dir, run_dir / "variants" / "abs_select", dirs_exist_ok=True))
    document = promote_in(json.loads((run_dir / DECISION_FILE).read_text()), "abs_select",
                          directory_sha256(variant, ADAPTER_FILES))
    write_outputs(run_dir, document, {"abs_select": variant})
    why = (run_dir / PROMOTED_DIR / MODEL_CARD_FILE).read_text().split("## Why it was promoted", 1)[1]
    assert "LCB" in why and "its level at look 4 (Holm across the variants)" in why
    assert "[" in (run_dir / SUMMARY_FILE).read_text().split("| variant |", 1)[1]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_outputs_honour_the_umask(tmp_path, tiny_adapter_dir, umask):
    """Files 0666 and ``promoted/`` 0777 less the umask, as ``open``/``mkdir`` would make them (was 0600/0700)."""
    from release_gate.reporting.render import render_report

    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    variant = Path(shutil.copytree(tiny_adapter_dir, run_dir / "variants" / "abs_select", dirs_exist_ok=True))
    document = promote_in(json.loads((run_dir / DECISION_FILE).read_text()), "abs_select",
                          directory_sha256(variant, ADAPTER_FILES))
    previous = os.umask(umask)  # as a user's shell sets it; pytest runs tests one at a time
    try:
        write_outputs(run_dir, document, {"abs_select": variant})
        render_report(run_dir)
    finally:
        os.umask(previous)
    files = [run_dir / name for name in (DECISION_FILE, SUMMARY_FILE, JUNIT_FILE, "report.html")]
    files.append(run_dir / PROMOTED_DIR / MODEL_CARD_FILE)  # (the adapter files keep their variant's mode)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((run_dir / PROMOTED_DIR).stat().st_mode) == 0o777 & ~umask


def test_lm_eval_results_say_what_was_run(tmp_path, tiny_adapter_dir):
    """The run's lm-eval files: the chat template the prompts used, the adapter's real arguments and
    identity, the limit and sample seed, lm-eval's version, date and git hash; read back by lm-eval."""
    from lm_eval.utils import get_latest_filename, get_results_filenames

    from release_gate.assets import fetch
    from release_gate.evaluation import lm_eval_results
    from release_gate.evaluation.engine import Arm
    from release_gate.evaluation.runner import TaskRequest, resolve_task
    from release_gate.evaluation.store import Item
    from release_gate.evaluation.tasks import task_manager, write_offline_tasks

    assets = fetch()
    manager = task_manager([write_offline_tasks(assets, tmp_path / "tasks")])
    task = resolve_task(TaskRequest("commonsense_qa", "acc", limit=3, chat_template=True), manager, sample_seed=7)
    arms = [Arm.base(), Arm.from_adapter("abs_select", tiny_adapter_dir)]
    items = {(arm.name, "commonsense_qa"): [Item(i, {"acc,none": float(i % 2)}, "A", "A", "p") for i in range(3)]
             for arm in arms}
    root = lm_eval_results.write(tmp_path / "run", items, [task], arms, str(assets.model_dir))

    files = [str(p) for p in (root / "abs_select").rglob("*") if p.is_file()]
    results = json.loads(Path(get_latest_filename(get_results_filenames(files))).read_text())
    assert results["chat_template"] and "<|im_start|>" in results["chat_template"] and results["chat_template_sha"]
    assert results["config"]["model_args"] == {"pretrained": str(assets.model_dir), "lora": str(tiny_adapter_dir)}
    assert results["config"]["limit"] == 3 and results["model_name"] == "abs_select"
    assert results["release_gate"] == {"arm": "abs_select", "adapter_sha256": arms[1].sha256, "sample_seed": 7,
                                       "limit": {"commonsense_qa": 3}, "apply_chat_template": {"commonsense_qa": True}}
    assert results["lm_eval_version"] == "0.4.13" and results["date"] > 0 and "git_hash" in results
    assert results["results"]["commonsense_qa"]["acc,none"] == pytest.approx(1 / 3)
    base = json.loads(Path(get_latest_filename(get_results_filenames(
        [str(p) for p in (root / "base").rglob("*") if p.is_file()]))).read_text())
    assert base["config"]["model_args"] == {"pretrained": str(assets.model_dir)} and base["model_name"] == "base"


def test_a_variant_names_its_base_model_publicly_never_by_a_local_path(tmp_path, tiny_model_dir, tiny_adapter_dir):
    """An adapter trained on a local copy of a packaged model (``base_model_name_or_path`` a path): its
    variant, and so ``promoted/``, carries the Hub id; a Hub id already there stays byte for byte."""
    import release_gate
    from release_gate.surgery.adapter import CONFIG_FILE

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "cache" / "SmolLM2-135M-Instruct"))
    adapter = Path(shutil.copytree(tiny_adapter_dir, tmp_path / "adapter"))
    config = json.loads((adapter / CONFIG_FILE).read_text())
    (adapter / CONFIG_FILE).write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    variant, _ = release_gate.edit(str(base), adapter, "random_index", tmp_path / "variant")
    published = json.loads((Path(variant) / CONFIG_FILE).read_text())
    assert published["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {k: v for k, v in published.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in config.items() if k != "base_model_name_or_path"}

    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    document = promote_in(json.loads((run_dir / DECISION_FILE).read_text()), "abs_select",
                          directory_sha256(variant, ADAPTER_FILES))
    write_outputs(run_dir, document, {"abs_select": Path(variant)})
    card = ModelCard((run_dir / PROMOTED_DIR / MODEL_CARD_FILE).read_text())
    assert card.data.base_model == published["base_model_name_or_path"]
    trust = Trust(allow_unsigned="test")  # a server on the local folder still recognises its base model
    assert check_release(run_dir, str(base), trust)[0] == run_dir / PROMOTED_DIR
    assert "base model mismatch" in check_release(run_dir, str(tiny_model_dir), trust)[1]

    (adapter / CONFIG_FILE).write_text(json.dumps({**config, "base_model_name_or_path": "org/model"}))
    variant, _ = release_gate.edit(str(base), adapter, "random_index", tmp_path / "kept")
    assert (Path(variant) / CONFIG_FILE).read_bytes() == (adapter / CONFIG_FILE).read_bytes()


def test_same_named_adapters_get_their_own_lm_eval_output_folders(tmp_path, tiny_adapter_dir):
    """``release-gate lm-eval … lora=A/lora,lora=B/lora --output_path out``: one run and one folder each."""
    from release_gate.cli.lm_eval import per_adapter
    from release_gate.evaluation.engine import Arm

    first = Path(shutil.copytree(tiny_adapter_dir, tmp_path / "A" / "lora"))
    second = make_adapter(tiny_llama(), tmp_path / "B" / "lora", seed=2)
    runs = per_adapter(["--model", "release-gate", "--model_args", f"pretrained=m,lora={first},lora={second}",
                        "--output_path", str(tmp_path / "out")])
    outputs = [run[run.index("--output_path") + 1] for run in runs]
    shas = [Arm.from_adapter("lora", path).sha256 for path in (first, second)]
    assert outputs == [str(tmp_path / "out" / f"lora-{sha[:12]}") for sha in shas] and shas[0] != shas[1]
    assert all(f"adapters={first}|{second}" in run[run.index("--model_args") + 1] for run in runs)
