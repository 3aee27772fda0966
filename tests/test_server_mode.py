"""Server mode against a real `vllm serve` on 127.0.0.1 (started here, stopped by PID)."""

from __future__ import annotations

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
from release_gate.evaluation.runner import TaskRequest, evaluate, resolve_task
from release_gate.evaluation.store import ItemStore
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

from factories import smollm2_adapter
from servers import api_server

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

#: The server runs with --api-key: every request must carry it.
KEY = "test-key-not-a-secret"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assets = fetch()
    prepare_environment(assets)
    root = tmp_path_factory.mktemp("server")
    adapter = smollm2_adapter(assets.model_dir, root / "baseline", seed=5)
    big = smollm2_adapter(assets.model_dir, root / "rank32", seed=6, r=32, targets=("o_proj",))
    with api_server(assets.model_dir, root / "server.log", args=["--api-key", KEY]) as (url, process):
        yield {"assets": assets, "root": root, "adapter": adapter, "big": big, "process": process, "url": url,
               "server": server_mode.Server(url, str(assets.model_dir), str(assets.model_dir), api_key=KEY),
               "manager": task_manager([write_offline_tasks(assets, root / "tasks")])}


def test_server_scores_equal_in_process_scores(served):
    arms = [Arm.base(), Arm.from_adapter("baseline", served["adapter"])]
    tasks = [resolve_task(TaskRequest("commonsense_qa", "acc", limit=5), served["manager"])]
    via_server = server_mode.evaluate(served["server"], arms, tasks, ItemStore(served["root"] / "s"))
    # the adapter was unloaded after use: loading it again must succeed
    server_mode.load(served["server"], arms[1])
    server_mode.unload(served["server"], arms[1])
    served["process"].send_signal(signal.SIGSTOP)  # keep the server's CPU out of the in-process run
    try:
        with Engine(EngineSettings.for_arms(str(served["assets"].model_dir), arms, max_model_len=1024,
                                           dtype="float32")) as engine:  # the server's --dtype
            in_process = evaluate(SharedEngineLM(engine, arms[0]), arms, tasks,
                                  ItemStore(served["root"] / "p"))
    finally:
        served["process"].send_signal(signal.SIGCONT)
    for key, items in in_process.items():
        ours = np.array([i.choice_logprobs for i in items])
        theirs = np.array([i.choice_logprobs for i in via_server[key]])
        assert ours.shape == (5, 5)
        np.testing.assert_allclose(theirs, ours, atol=1e-3)
        assert [i.metrics for i in items] == [i.metrics for i in via_server[key]]


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
