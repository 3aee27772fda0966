"""``decision.json`` is one typed model: what a real run wrote parses, the printed schema validates it,
the keys on disk stay the ones readers already know, and a damaged document is refused with its key named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import yaml

import release_gate
from release_gate.cli import main
from release_gate.config import load_run_config
from release_gate.document import DecisionDocument, read_decision
from release_gate.errors import BadInput
from release_gate.evaluation.engine import Arm
from release_gate.evaluation.store import Item
from release_gate.gate.decide import decide
from release_gate.gate.rules import GateRule, TaskRule
from release_gate.run_record import Evaluated, Timer, build_document
from release_gate.schema import DECISION_FILE, Role, Standing

from factories import promote_in

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"


def stored() -> dict:
    return json.loads((FIXTURE_RUN / DECISION_FILE).read_text(encoding="utf-8"))


def printed_schema(capsys) -> dict:
    assert main(["decision-schema"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_printed_schema_validates_a_real_runs_decision_and_refuses_a_damaged_one(capsys):
    schema = printed_schema(capsys)
    assert schema == release_gate.decision_schema()
    jsonschema.validate(stored(), schema)
    jsonschema.validate(promote_in(stored(), "abs_select", "0" * 64).to_json(), schema)
    damaged = stored()
    damaged["variants"]["abs_select"]["passed"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(damaged, schema)


def test_the_keys_on_disk_are_the_ones_readers_know():
    """Parsing and writing back keeps every key and value; only keys added since (with defaults) appear."""
    data = stored()
    written = read_decision(FIXTURE_RUN).to_json()
    assert set(written) == set(data) | {"history"}
    grown = {"design", "variants"}  # fields added since the fixture was written, with their defaults
    assert {k: v for k, v in written.items() if k in data and k not in grown} == {
        k: v for k, v in data.items() if k not in grown}
    assert written["design"].items() >= data["design"].items()
    for arm, verdict in data["variants"].items():
        criteria = verdict.pop("criteria")
        assert written["variants"][arm].items() >= verdict.items()
        assert all(w.items() >= c.items() for w, c in zip(written["variants"][arm]["criteria"], criteria))


def test_a_gate_decision_is_a_valid_document(capsys):
    """The gate's own part of the document (built by :meth:`Decision.document_fields`) passes the schema."""
    rng = np.random.default_rng(1)
    base = {"t": (rng.random(60) < 0.5).astype(float), "g": (rng.random(30) < 0.7).astype(float)}
    scores = {"base": base, "baseline": base, "v": base, "random_index@0": base}
    decision = decide(scores, [TaskRule("t", "acc,none", "target")],
                      [TaskRule("g", "acc,none", "guard", max_drop=0.05)], GateRule(), ["v"], ["random_index@0"])
    document = DecisionDocument(**{**stored(), **decision.document_fields(), "arms": {}, "samples": {}})
    jsonschema.validate(document.to_json(), printed_schema(capsys))
    assert document.outcome == decision.outcome and document.variants["v"].status == decision.verdicts["v"].status


def test_a_run_builds_the_document_from_the_gates_decision(tmp_path, base_config, tiny_adapter_dir, capsys):
    """The run's part (arms and roles, canary, config, provenance, samples) around the gate's: a valid document,
    the arms' roles typed, an unsigned PROMOTE warned about, an arm with baseline's adapter content marked."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config))
    config = load_run_config(path)
    rng = np.random.default_rng(3)
    base = {"commonsense_qa": (rng.random(400) < 0.4).astype(float), "ifeval": (rng.random(400) < 0.8).astype(float)}
    better = {**base, "commonsense_qa": np.maximum(base["commonsense_qa"], rng.random(400) < 0.5)}
    scores = {"base": base, "baseline": base, "v": better, "random_index@0": base}
    decision = decide(scores, [TaskRule("commonsense_qa", "acc", "target")],
                      [TaskRule("ifeval", "acc", "guard", max_drop=0.05)], GateRule(), ["v"], ["random_index@0"])
    assert decision.outcome == "PROMOTE"
    baseline = Arm.from_adapter("baseline", tiny_adapter_dir)
    arms = [Arm.base(), baseline, Arm("v", tmp_path / "v", "cd" * 32, 8),
            Arm("random_index@0", tiny_adapter_dir, baseline.sha256, 8)]
    resolved = [SimpleNamespace(request=SimpleNamespace(name=task), sample_seed=1234, available=n, size=n)
                for task, n in (("commonsense_qa", 400), ("ifeval", 400))]
    items = {(arm.name, task.request.name): [Item(0, {"acc": 1.0}, "A", "A", "q")] for arm in arms for task in resolved}
    items["v", "commonsense_qa"] = [Item(0, {"acc": 1.0}, "A", "B", "q")]  # another answer, the same score
    evaluated = Evaluated(arms, items, {"baseline_differs_from_base": True}, {"model": "tiny"}, resolved)
    document = build_document(config, decision, evaluated, [], Timer())
    jsonschema.validate(document.to_json(), printed_schema(capsys))
    assert {name: arm.role for name, arm in document.arms.items()} == {
        "base": Role.BASE, "baseline": Role.BASELINE, "v": Role.VARIANT, "random_index@0": Role.CONTROL}
    assert document.promoted.arm == "v" and document.promoted.signed_by is None
    assert document.warnings[-1].startswith("promoted/ is unsigned")
    assert document.canary.identical_to_baseline == ["random_index@0"]
    assert document.provenance.adapter_sha256 == baseline.sha256 and document.provenance.engine == {"model": "tiny"}
    assert document.samples["ifeval"].evaluated == decision.tasks["ifeval"].n


def test_standing_is_derived_once_for_every_arm():
    document = promote_in(stored(), "abs_select", "0" * 64)
    assert document.standing("abs_select") == Standing.WINNER
    assert {document.standing(a) for a in document.with_role(Role.CONTROL)} == {Standing.CONTROL}
    verdict = document.variants["grad_direction"]
    assert document.standing("grad_direction") == (Standing.PASS if verdict.passed else Standing.POINT
                                                   if verdict.passed_point else Standing.FAIL)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d.update(surprise=1), "surprise: Extra inputs are not permitted"),
    (lambda d: d["arms"]["base"].update(role="teacher"), "arms.base.role: Input should be"),
    (lambda d: d.update(outcome="PROMOTE"), "only a PROMOTE names a promoted arm, and every PROMOTE does"),
    (lambda d: d.update(schema_version=3), "schema_version 3 is not 2"),
])
def test_a_damaged_document_is_refused_with_its_key(tmp_path, damage, message):
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    data = stored()
    damage(data)
    (run_dir / DECISION_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BadInput, match=message):
        read_decision(run_dir)
