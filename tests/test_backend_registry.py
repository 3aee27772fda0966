"""Evaluation backends: one module and one registry line make a backend; the store, canary and looks are shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from answer_length import AnswerLength

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.config import load_run_config
from release_gate.errors import BadInput, RuntimeFailure
from release_gate.evaluation import protocol
from release_gate.evaluation.engine import Arm
from release_gate.evaluation.runner import TaskRequest, resolve_task
from release_gate.evaluation.session import EvaluationSession
from release_gate.evaluation.store import ItemStore
from release_gate.evaluation.tasks import task_manager
from release_gate.files import read_jsonl

from factories import HELDOUT_TASK, write_heldout_task

ARMS = [Arm.base(), Arm("baseline", Path("/adapters/baseline"), "ab" * 32, 8),
        Arm("variant", Path("/adapters/variant"), "cd" * 32, 8)]
SECRET = "endpoint-key-not-a-secret"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """lm-eval's letter-scored CommonsenseQA over 12 local rows (no model, no network)."""
    directory = write_heldout_task(read_jsonl(fetch().commonsense_qa), range(12), tmp_path_factory.mktemp("tasks"))
    return resolve_task(TaskRequest(HELDOUT_TASK.name, "acc", limit=10), task_manager([directory]))


def test_a_backend_is_one_module_and_one_registry_line(task, tmp_path):
    assert protocol.backend_class("answer-length") is AnswerLength
    store, backend = ItemStore(tmp_path / "items"), AnswerLength()
    with EvaluationSession(ARMS, [task], store, backend) as session:
        first = session.fetch({arm.name: {task.request.name: 4} for arm in ARMS})
        later = session.fetch({arm.name: {task.request.name: 10} for arm in ARMS[1:]})  # a second look
    assert backend.starts == 1 and {len(ids) for _, ids in backend.scored} == {4, 6}
    assert [len(first[arm.name][task.request.name]) for arm in ARMS] == [4, 4, 4]
    assert len(later["variant"][task.request.name]) == 10
    assert session.canary == {"probe": "not run by the answer-length backend (per-item check only)"}
    assert session.record == {"answer-length": {"ignore_adapters": False}}

    again = AnswerLength()  # a re-run: every item and the canary come from the store, nothing starts
    with EvaluationSession(ARMS, [task], store, again) as rerun:
        answers = rerun.fetch({arm.name: {task.request.name: 4} for arm in ARMS})
    assert again.starts == 0 and again.scored == [] and rerun.canary == session.canary
    assert all((answers[a][task.request.name] == first[a][task.request.name]).all() for a in answers)


def test_the_per_item_canary_catches_a_backend_that_drops_the_adapter(task, tmp_path):
    with EvaluationSession(ARMS, [task], ItemStore(tmp_path / "items"), AnswerLength(ignore_adapters=True)) as session, \
            pytest.raises(RuntimeFailure, match="adapter not applied"):
        session.fetch({arm.name: {task.request.name: 4} for arm in ARMS})


def test_the_registry_refuses_a_second_backend_of_the_same_name():
    protocol.backend_class("server")
    with pytest.raises(BadInput, match="'server' is registered twice: by release_gate.evaluation.fleet.ServerBackend"):
        protocol.register_backend("server")(AnswerLength)
    with pytest.raises(BadInput, match="unknown backend 'nope' \\(known: answer-length, server, vllm\\)"):
        protocol.backend_class("nope")


def test_an_installed_package_offers_a_backend_through_its_entry_point(tmp_path, monkeypatch):
    """A real distribution on sys.path (its metadata and module), found through the entry-point group."""
    (tmp_path / "third_party_backend.py").write_text(
        "from answer_length import AnswerLength\nfrom release_gate.evaluation.protocol import register_backend\n\n"
        "@register_backend('third-party')\nclass ThirdParty(AnswerLength):\n    pass\n")
    info = tmp_path / "third_party_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{protocol.ENTRY_POINT_GROUP}]\nthird-party = third_party_backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(protocol, "_REGISTRY", dict(protocol._REGISTRY))
    assert "third-party" in protocol.backend_names()
    assert protocol.backend_class("third-party").__name__ == "ThirdParty"


def _config(tmp_path: Path, base_config: dict, evaluation: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base_config, "evaluation": evaluation}))
    return path


def test_a_server_config_selects_the_server_backend_and_a_url_is_a_list_of_one(tmp_path, base_config, monkeypatch):
    monkeypatch.setenv("KEY_B", "b-secret")
    single = load_run_config(_config(tmp_path, base_config, {"server": {"url": "http://a:8000", "api_key": SECRET}}))
    assert single.evaluation.backend == "server"
    assert [(e.url, e.concurrency, e.api_key) for e in single.evaluation.server.endpoint_list()] == [
        ("http://a:8000", 8, SECRET)]
    fleet = load_run_config(_config(tmp_path, base_config, {"backend": "server", "server": {"api_key": SECRET, "endpoints": [
        {"url": "http://a:8000", "concurrency": 2}, {"url": "http://b:8000", "api_key_env": "KEY_B"}]}}))
    endpoints = fleet.evaluation.server.endpoint_list()
    assert [(e.url, e.concurrency, e.api_key, e.api_key_env) for e in endpoints] == [
        ("http://a:8000", 2, SECRET, "OPENAI_API_KEY"), ("http://b:8000", 8, None, "KEY_B")]
    assert SECRET not in str(fleet.to_json()) and load_run_config(_config(tmp_path, base_config, {})).evaluation.backend == "vllm"


BAD = [
    ({"backend": "nope"}, "evaluation.backend: unknown backend 'nope' (known: "),
    ({"backend": "server"}, "evaluation.server.url: required by backend server (or endpoints"),
    ({"backend": "vllm", "server": {"url": "http://a:1"}}, "evaluation.backend: vllm scores in this process"),
    ({"server": {"url": "http://a:1", "endpoints": [{"url": "http://b:1"}]}}, "evaluation.server.endpoints: give url"),
    ({"server": {"endpoints": [{"url": "http://b:1", "concurrency": 0}]}},
     "evaluation.server.endpoints[0].concurrency: must be ≥ 1"),
    ({"server": {"url": "http://a:1", "lora_api": "tgi"}}, "evaluation.server.lora_api: must be one of"),
]


@pytest.mark.parametrize(("evaluation", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_a_bad_backend_config_names_the_key(tmp_path, base_config, capsys, evaluation, message):
    assert main(["run", str(_config(tmp_path, base_config, evaluation))]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
