"""Server mode against real `vllm serve` processes on 127.0.0.1 (started here, stopped by PID).

One server answers most tests; a second one (its own API key) joins for the fleet: two live
endpoints and a dead one share the items of every chunk, the dead one's share goes to the others,
and every item scores exactly as on one server.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading

import numpy as np
import pytest

from release_gate.assets import fetch
from release_gate.errors import BadInput, RuntimeFailure
from release_gate.evaluation import server as server_mode
from release_gate.evaluation.backend import SharedEngineLM
from release_gate.evaluation.engine import Arm, Engine, EngineSettings
from release_gate.evaluation.fleet import ServerBackend
from release_gate.evaluation.in_process import VllmBackend
from release_gate.evaluation.runner import TaskRequest, resolve_task
from release_gate.evaluation.scoring import evaluate
from release_gate.evaluation.session import same_items
from release_gate.evaluation.store import ItemStore
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

from factories import smollm2_adapter
from servers import api_server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

#: The servers run with --api-key: every request must carry it (each server its own).
KEY = "test-key-not-a-secret"
SECOND_KEY = "second-test-key-not-a-secret"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assets = fetch()
    prepare_environment(assets)
    root = tmp_path_factory.mktemp("server")
    adapter = smollm2_adapter(assets.model_dir, root / "baseline", seed=5)
    big = smollm2_adapter(assets.model_dir, root / "rank32", seed=6, r=32, targets=("o_proj",))
    manager = task_manager([write_offline_tasks(assets, root / "tasks")])
    with api_server(assets.model_dir, root / "server.log", args=["--api-key", KEY]) as (url, process):
        yield {"assets": assets, "root": root, "adapter": adapter, "big": big, "process": process, "url": url,
               "server": server_mode.Server(url, str(assets.model_dir), str(assets.model_dir), api_key=KEY),
               "arms": [Arm.base(), Arm.from_adapter("baseline", adapter)],
               "tasks": [resolve_task(TaskRequest("commonsense_qa", "acc", limit=5), manager)]}


@pytest.fixture(scope="module")
def one_server(served):
    """Every arm's items through the one server, as the single-``url`` config scores them."""
    with contextlib.closing(ServerBackend([served["server"]])) as backend:
        return evaluate(backend, served["arms"], served["tasks"], ItemStore(served["root"] / "one"))


@pytest.fixture(scope="module")
def second(served):
    """A second replica of the same base model, with an API key of its own."""
    model = str(served["assets"].model_dir)
    with api_server(served["assets"].model_dir, served["root"] / "second.log", args=["--api-key", SECOND_KEY]) as (
            url, _process):
        yield server_mode.Server(url, model, model, api_key=SECOND_KEY)


def test_server_scores_equal_in_process_scores(served, one_server):
    arms, tasks = served["arms"], served["tasks"]
    # the backend unloaded the adapter when it closed: loading it again must succeed
    server_mode.load(served["server"], arms[1])
    server_mode.unload(served["server"], arms[1])
    served["process"].send_signal(signal.SIGSTOP)  # keep the server's CPU out of the in-process run
    try:
        with Engine(EngineSettings.for_arms(str(served["assets"].model_dir), arms, max_model_len=1024,
                                            dtype="float32")) as engine:  # the server's --dtype
            in_process = evaluate(VllmBackend.around(SharedEngineLM(engine, arms[0])), arms, tasks,
                                  ItemStore(served["root"] / "p"))
    finally:
        served["process"].send_signal(signal.SIGCONT)
    for key, items in in_process.items():
        ours = np.array([i.choice_logprobs for i in items])
        theirs = np.array([i.choice_logprobs for i in one_server[key]])
        assert ours.shape == (5, 5)
        np.testing.assert_allclose(theirs, ours, atol=1e-3)
        assert [i.metrics for i in items] == [i.metrics for i in one_server[key]]


def test_two_servers_share_each_chunk_score_as_one_and_take_over_a_dead_ones_share(served, one_server, second):
    """Endpoints [live, dead, live]: the dead one's share of every chunk goes to the others (it is dropped on its
    first failure); each adapter is loaded on both live servers and unloaded on close; every item is scored
    exactly as the one server scores it."""
    model = str(served["assets"].model_dir)
    dead = server_mode.Server(f"http://127.0.0.1:{free_port()}", model, model, retries=0, timeout=10)
    backend = ServerBackend([served["server"], dead, second])
    with contextlib.closing(backend):
        fleet = evaluate(backend, served["arms"], served["tasks"], ItemStore(served["root"] / "fleet"))
        assert backend.live == [served["server"], second]
        assert all(served["arms"][1].lora_name in s.served_models() for s in (served["server"], second))
    assert served["arms"][1].lora_name not in second.served_models()
    assert fleet.keys() == one_server.keys()
    assert all(same_items(fleet[key], one_server[key]) for key in fleet)  # answers, metrics, log-likelihoods
    assert backend.store_key() != ServerBackend([served["server"]]).store_key()
    with contextlib.closing(ServerBackend([dead])) as alone, pytest.raises(RuntimeFailure, match="every evaluation "
                                                                                               "server failed"):
        evaluate(alone, served["arms"], served["tasks"], ItemStore(served["root"] / "none"))


def test_server_refuses_rank_above_its_limit(served):
    with pytest.raises(BadInput, match="above the server's --max-lora-rank"):
        server_mode.load(served["server"], Arm.from_adapter("rank32", served["big"]))


def test_unknown_adapter_name_and_unreachable_server_are_clear(served):
    with pytest.raises(RuntimeFailure, match="refused to unload"):
        server_mode.unload(served["server"], Arm("ghost", served["adapter"], "0" * 64, 16))
    with pytest.raises(RuntimeFailure, match="not reachable"):
        server_mode.load(server_mode.Server("http://127.0.0.1:9", "m", "t", timeout=2),
                         Arm("x", served["adapter"], "1" * 64, 16))


def test_the_api_key_is_required_and_sent(served, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    arm = Arm.from_adapter("baseline", served["adapter"])
    keyless = server_mode.Server(served["url"], str(served["assets"].model_dir), str(served["assets"].model_dir))
    with pytest.raises(BadInput, match="refused the API key"):
        server_mode.load(keyless, arm)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default when the config names no key
    server_mode.load(keyless, arm)
    assert arm.lora_name in keyless.served_models()
    server_mode.unload(keyless, arm)
    assert KEY not in repr(served["server"])


def test_server_errors_are_parsed_not_searched():
    error = server_mode.parse_error(400, '{"error": {"message": "bad", "type": "InvalidUserInput", "code": 400}}')
    assert (error.status, error.type, error.message) == (400, "InvalidUserInput", "bad")
    assert server_mode.parse_error(502, "<html>gateway</html>").type == "HTTPError"
    assert isinstance(server_mode.refused(server_mode.ServerError(401, "Unauthorized", "no"), "x"), BadInput)
    assert isinstance(server_mode.refused(server_mode.ServerError(500, "InternalServerError", "boom"), "x"),
                      RuntimeFailure)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script."""

    def do_GET(self):
        status, body = self.server.script.pop(0)
        self.server.seen += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setattr(server_mode, "BACKOFF_SECONDS", 0.01)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    httpd.script, httpd.seen = [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, server_mode.Server(f"http://127.0.0.1:{httpd.server_port}", "m", "t", retries=2)
    httpd.shutdown()
    httpd.server_close()


def test_busy_answers_are_retried_and_refusals_are_not(scripted):
    httpd, server = scripted
    busy = {"error": {"message": "busy", "type": "ServiceUnavailable", "code": 503}}
    httpd.script = [(503, busy), (429, busy), (200, {"data": [{"id": "base"}]})]
    assert server.served_models() == {"base"} and httpd.seen == 3
    httpd.script, httpd.seen = [(400, {"error": {"message": "bad", "type": "BadRequest", "code": 400}})], 0
    with pytest.raises(server_mode.ServerError, match="HTTP 400 BadRequest: bad"):
        server.request("/v1/models")
    assert httpd.seen == 1
    httpd.script, httpd.seen = [(503, busy)] * 4, 0
    with pytest.raises(server_mode.ServerError, match="HTTP 503"):
        server.request("/v1/models")
    assert httpd.seen == 3  # the first attempt and `retries` more
