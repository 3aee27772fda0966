"""A release as the gate writes it, through its life.

PROMOTE writes ``promoted/`` (the adapter, the model card and the decision, signed as one, atomically; then
the run's decision beside it); the vLLM resolver serves exactly those files after checking the signature; the model card parses as a Hub card with no local path; MLflow
registers the promoted adapter as a model version under its alias; a later REJECT of the same run
withdraws ``promoted/`` and the resolver refuses it.

The decision documents are the committed fixture run's (a real SmolLM2 run's ``decision.json``) with the
PROMOTE fields the gate sets on one; every release file is written by the gate's own ``write_outputs``
(which calls ``promote``), so every branch runs in seconds; a PROMOTE decided by a real engine on SmolLM2 is
in ``test_gate_outcomes.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from mlflow import MlflowClient

from release_gate.config import MlflowSection
from release_gate.document import DecisionDocument
from release_gate.files import directory_sha256
from release_gate.integrations import mlflow_tracking
from release_gate.integrations.releases import ADAPTER_FILES, Trust, check_release
from release_gate.integrations.signing import SIGNATURE_FILE
from release_gate.integrations.vllm_resolver import ReleaseGateResolver
from release_gate.reporting.outputs import PROMOTED_FILES, write_outputs
from release_gate.schema import DECISION_FILE, MODEL_CARD_FILE, PROMOTED_DIR
from release_gate.surgery.adapter import CONFIG_FILE

from factories import promote_in

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"
BASE = "/models/base"
NAME = "support-bot"


@pytest.fixture
def release(tmp_path, tiny_adapter_dir) -> dict:
    """A finished REJECT run (the fixture) in a release directory, its first variant a real PEFT adapter."""
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "releases" / NAME))
    rejected = json.loads((run_dir / DECISION_FILE).read_text())
    arm = next(iter(rejected["variants"]))
    variant = Path(shutil.copytree(tiny_adapter_dir, run_dir / "variants" / arm, dirs_exist_ok=True))
    config = json.loads((variant / CONFIG_FILE).read_text())
    (variant / CONFIG_FILE).write_text(json.dumps({**config, "base_model_name_or_path": BASE}))
    promoted = promote_in(rejected, arm, directory_sha256(variant, ADAPTER_FILES))
    return {"run": run_dir, "arm": arm, "variant": variant, "promote": promoted,
            "reject": DecisionDocument.model_validate(rejected)}


def test_a_promote_is_served_and_a_later_reject_withdraws_it(release, gate_keys):
    run, trust = release["run"], Trust(gate_keys.public)
    write_outputs(run, release["promote"], {release["arm"]: release["variant"]}, gate_keys.private)
    files = run / PROMOTED_DIR
    assert sorted(p.name for p in files.iterdir()) == sorted([*PROMOTED_FILES, MODEL_CARD_FILE, DECISION_FILE,
                                                              SIGNATURE_FILE])
    assert not [p.name for p in run.iterdir() if p.name.startswith(f".{PROMOTED_DIR}.")]  # no temp dir left
    for name in PROMOTED_FILES:
        assert (files / name).read_bytes() == (release["variant"] / name).read_bytes()
    assert (files / DECISION_FILE).read_bytes() == (run / DECISION_FILE).read_bytes()
    assert json.loads((run / DECISION_FILE).read_text())["promoted"]["sha256"] == directory_sha256(files, ADAPTER_FILES)
    assert check_release(run, BASE, trust) == (
        files, f"PROMOTE (sha256 {directory_sha256(files, ADAPTER_FILES)}), signature verified")
    resolver = ReleaseGateResolver(run.parent, trust)  # owns its private copies while it lives
    request = asyncio.run(resolver.resolve_lora(BASE, NAME))
    assert request is not None and request.lora_name == NAME
    assert directory_sha256(Path(request.lora_path), ADAPTER_FILES) == directory_sha256(files, ADAPTER_FILES)

    write_outputs(run, release["reject"], {release["arm"]: release["variant"]})  # the same run, decided again
    assert not files.exists()
    assert check_release(run, BASE, trust) == (None, "outcome REJECT")
    assert asyncio.run(resolver.resolve_lora(BASE, NAME)) is None


def test_the_promoted_model_card_is_a_hub_card_without_local_paths(release):
    write_outputs(release["run"], release["promote"], {release["arm"]: release["variant"]})
    text = (release["run"] / PROMOTED_DIR / MODEL_CARD_FILE).read_text()
    card = ModelCard(text)
    assert card.data.library_name == "peft"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"release-gate", "spectral-surgery", "lora"} <= set(card.data.tags)
    document = release["promote"]
    scores = document.arms[release["arm"]].scores
    results = {r.task_name: r.metric_value for r in card.data.eval_results}
    assert results == pytest.approx({task: round(s.mean, 6) for task, s in scores.items()})
    assert card.data.model_name == release["arm"]
    for local in (str(Path.home()), "/tmp/", document.config["adapter"]):
        assert local not in text, local


def test_mlflow_registers_the_promoted_adapter_under_its_alias(release, file_store):
    run, document = release["run"], release["promote"]
    write_outputs(run, document, {release["arm"]: release["variant"]})
    settings = MlflowSection(tracking_uri=file_store, registered_model="support-bot-adapter")
    recorded = mlflow_tracking.record(mlflow_tracking.connect(settings), run, document)
    assert recorded["registered_model"] == "support-bot-adapter" and recorded["alias"] == "champion"
    client = MlflowClient(tracking_uri=file_store, registry_uri=file_store)
    version = client.get_model_version_by_alias("support-bot-adapter", "champion")
    assert str(version.version) == recorded["version"] and version.run_id == recorded["run_id"]
    mlflow_run = client.get_run(recorded["run_id"])
    assert mlflow_run.data.metrics["promoted"] == 1
    assert mlflow_run.data.tags["release_gate.promoted_sha256"] == document.promoted.sha256
    logged = {a.path for a in client.list_artifacts(recorded["run_id"], PROMOTED_DIR)}  # the version's source
    assert logged == {f"{PROMOTED_DIR}/{name}" for name in (*PROMOTED_FILES, MODEL_CARD_FILE, DECISION_FILE)}
