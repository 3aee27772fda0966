"""MLflow tracking against a real local MLflow file store (no server, no network).

Here a finished REJECT run is recorded and every bad ``tracking.mlflow`` input is refused before
anything is written; the PROMOTE path (a registered model version under its alias) is in
``test_release_lifecycle.py``, on a release the gate's own writer produced.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from release_gate.cli import main
from release_gate.config import MlflowSection, load_run_config
from release_gate.document import DecisionDocument, read_decision
from release_gate.errors import BadInput
from release_gate.integrations import mlflow_tracking
from release_gate.schema import TRACKING_FILE

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"
#: The stored JSON, parsed as every reader parses it (the tests compare what MLflow logged with the JSON).
parsed = DecisionDocument.model_validate
README = Path(__file__).resolve().parent.parent / "README.md"


def test_a_reject_is_recorded_with_scores_and_artifacts_and_registers_nothing(tmp_path, file_store):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run_dir)
    document = json.loads((run_dir / "decision.json").read_text())
    settings = MlflowSection(tracking_uri=file_store, experiment="gates", registered_model="adapter",
                             tags={"team": "nlp"})
    recorded = mlflow_tracking.record(mlflow_tracking.connect(settings), run_dir, parsed(document))

    assert json.loads((run_dir / TRACKING_FILE).read_text()) == recorded
    assert recorded["version"] is None and recorded["registered_model"] is None
    client = MlflowClient(tracking_uri=file_store, registry_uri=file_store)
    run = client.get_run(recorded["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["release_gate.outcome"] == "REJECT" and run.data.tags["team"] == "nlp"
    assert run.data.tags["release_gate.adapter_sha256"] == document["provenance"]["adapter_sha256"]
    for arm, record in document["arms"].items():
        for task, score in record["scores"].items():
            assert run.data.metrics[mlflow_tracking.key("score", arm, task)] == pytest.approx(score["mean"])
            assert run.data.metrics[mlflow_tracking.key("n", arm, task)] == score["n"]
    for arm, verdict in document["variants"].items():
        assert run.data.metrics[mlflow_tracking.key("p_value", arm)] == pytest.approx(verdict["p_value"])
    assert run.data.metrics["promoted"] == 0
    assert run.data.params["gate.alpha"] == str(document["gate"]["alpha"])
    assert run.data.params["task.ifeval.max_drop"] == str(document["tasks"]["ifeval"]["max_drop"])
    logged = {a.path for a in client.list_artifacts(recorded["run_id"], mlflow_tracking.ARTIFACT_DIR)}
    assert {"release-gate/decision.json", "release-gate/summary.md"} <= logged
    assert not client.search_registered_models()  # nothing promoted, nothing registered


def test_each_tasks_real_settings_and_every_criterions_evidence_are_logged(tmp_path, file_store):
    """A guard scored through the chat template while ``evaluation.chat_template`` is off: the params say
    what each task ran with, and every criterion's estimate, bound, threshold and p-value is a metric."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run_dir)
    document = json.loads((run_dir / "decision.json").read_text())
    document["config"]["guards"][0]["chat_template"] = True
    recorded = mlflow_tracking.record(mlflow_tracking.connect(MlflowSection(tracking_uri=file_store)), run_dir,
                                      parsed(document))
    run = MlflowClient(tracking_uri=file_store).get_run(recorded["run_id"])
    params, logged = run.data.params, run.data.metrics
    assert "evaluation.chat_template" not in params
    assert params["task.ifeval.chat_template"] == "True"
    assert params["task.commonsense_qa_heldout.chat_template"] == "False"
    assert params["task.ifeval.limit"] == "3" and params["task.commonsense_qa_heldout.limit"] == "16"
    for arm, verdict in document["variants"].items():
        for criterion in verdict["criteria"]:
            for field in ("estimate", "lcb", "threshold", "p_value"):
                name = mlflow_tracking.key("criterion", arm, criterion["id"], field)
                assert logged[name] == pytest.approx(criterion[field]), name
    for comparison in (c for c in document["comparisons"] if c["reference"] == "baseline" and c["lcb"] is not None):
        assert logged[mlflow_tracking.key("delta_lcb", comparison["arm"], comparison["task"])] == pytest.approx(
            comparison["lcb"])
    for arm, record in document["arms"].items():
        for task, score in record["scores"].items():
            assert logged[mlflow_tracking.key("ci_high", arm, task)] == pytest.approx(score["ci_high"])


def test_a_database_uri_works_with_full_mlflow_or_says_what_to_install(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if importlib.util.find_spec("sqlalchemy") is None:  # the extra: mlflow-skinny has no database store
        with pytest.raises(BadInput, match=r"sqlite:///.*: a database store needs the full MLflow package "
                                           r"\(pip install mlflow\)"):
            mlflow_tracking.connect(MlflowSection(tracking_uri=uri))
        return
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    document = json.loads((run_dir / "decision.json").read_text())
    recorded = mlflow_tracking.record(mlflow_tracking.connect(MlflowSection(tracking_uri=uri)), run_dir,
                                      parsed(document))
    assert MlflowClient(tracking_uri=uri).get_run(recorded["run_id"]).info.status == "FINISHED"


def test_the_readme_example_records_as_the_readme_says(tmp_path, base_config, monkeypatch):
    """The README's ``tracking:`` block in a run config, with the opt-in the README names, records a run."""
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S) if "tracking:" in b)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base_config, **yaml.safe_load(block)}))
    settings = load_run_config(path).tracking.mlflow
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    recorded = mlflow_tracking.record(mlflow_tracking.connect(settings), run_dir, read_decision(run_dir))
    assert recorded["tracking_uri"] == (tmp_path / "mlruns").as_uri() and (tmp_path / "mlruns").is_dir()


def test_a_second_run_lands_in_the_same_experiment(tmp_path, file_store):
    settings = MlflowSection(tracking_uri=file_store)
    ids = set()
    for name in ("a", "b"):
        shutil.copytree(FIXTURE_RUN, tmp_path / name)
        document = read_decision(tmp_path / name)
        ids.add(mlflow_tracking.record(mlflow_tracking.connect(settings), tmp_path / name, document)["experiment_id"])
    assert len(ids) == 1


def test_the_file_store_without_its_opt_in_is_a_clear_bad_input(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(BadInput, match="tracking.mlflow.tracking_uri: .*MLFLOW_ALLOW_FILE_STORE=true is set; "
                                       "with release-gate.mlflow. .mlflow-skinny. use a tracking server"):
        mlflow_tracking.connect(MlflowSection(tracking_uri=(tmp_path / "mlruns").as_uri()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(BadInput, match="MLFLOW_TRACKING_URI is empty"):
        mlflow_tracking.connect(MlflowSection())


def test_a_local_directory_is_relative_to_the_config(tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"base_model": "m", "adapter": "a", "targets": [{"task": "t", "metric": "acc"}],
                                    "tracking": {"mlflow": {"tracking_uri": "../mlruns"}}}))
    assert load_run_config(path).tracking.mlflow.tracking_uri == (tmp_path / "mlruns").as_uri()


def test_a_bad_tracking_uri_stops_the_run_before_anything_is_written(tmp_path, base_config, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base_config, "tracking": {"mlflow": {"tracking_uri": "mlruns"}}}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: tracking.mlflow.tracking_uri" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()
