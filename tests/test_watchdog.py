"""Stopping a run cleanly, on real processes and before any engine (issue 21).

Killed alone with SIGKILL, a process's children die by the watchdog's hand, but Python's resource tracker
is spared, so it unlinks the ``/dev/shm/psm_*`` segment its dead client left (vLLM's were left). SIGTERM
during calibration, before the engine, ends a run with 143 like it does once the engine is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

#: A process that owns a shared-memory segment and a child, under the watchdog, then waits to be killed.
CLIENT = """
import subprocess, sys, time
from multiprocessing import shared_memory
from release_gate.evaluation.watchdog import Watchdog
segment = shared_memory.SharedMemory(create=True, size=4096)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
watchdog = Watchdog()
time.sleep(1)  # the watchdog records descendants every 0.2 s
print(segment.name, child.pid, flush=True)
time.sleep(600)
"""


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_kill_9_kills_the_children_and_leaves_no_shared_memory():
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True)
    name, child = client.stdout.readline().split()
    segment = Path("/dev/shm") / name.lstrip("/")
    trackers = [p for p in psutil.Process(client.pid).children() if "resource_tracker" in " ".join(p.cmdline())]
    assert segment.exists() and trackers, "the client made no segment or no resource tracker"
    os.kill(client.pid, signal.SIGKILL)
    client.wait(10)
    assert wait_until(lambda: not psutil.pid_exists(int(child)) or psutil.Process(int(child)).status() == "zombie",
                      10), "the watchdog did not kill the child"
    assert wait_until(lambda: not segment.exists(), 10), f"{segment} left behind"
    assert wait_until(lambda: not any(t.is_running() and t.status() != "zombie" for t in trackers), 10)


def test_sigterm_during_calibration_exits_143(tmp_path, base_config):
    # the real SmolLM2 base: calibration takes seconds there (the tiny model has no tokenizer, so its run could
    # end on that error before the signal arrived)
    from release_gate.assets import fetch

    from factories import smollm2_adapter

    model = fetch().model_dir
    adapter = smollm2_adapter(model, tmp_path / "adapter", seed=1, r=8, alpha=16, targets=("o_proj", "down_proj"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**base_config, "base_model": str(model), "adapter": str(adapter),
                                      "policies": ["grad_direction"]}))
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        run = subprocess.Popen([sys.executable, "-m", "release_gate.cli", "run", str(config)], stdout=handle,
                               stderr=subprocess.STDOUT)
    assert wait_until(lambda: "plan:" in log.read_text() or run.poll() is not None, 300), log.read_text()
    run.send_signal(signal.SIGTERM)  # the plan is announced: calibration and the variants come next
    assert run.wait(120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "starting the vLLM engine" not in log.read_text()


@pytest.mark.parametrize("signum, returncode", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_a_signal_inside_a_finalizer_still_stops_the_run(tmp_path, signum, returncode):
    """A signal handled while garbage collection runs a ``__del__`` (seen: regex's ``SetBase.__del__`` during
    calibration for SIGTERM, a Ctrl-C mid-evaluation) raised its exception into the finalizer, where Python prints
    and drops it: the run went on."""
    script = tmp_path / "finalizer.py"
    script.write_text(
        "import os, signal, time\n"
        "from release_gate.evaluation.signals import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        "class Collected:\n"
        "    def __del__(self):\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "        time.sleep(0.01)  # the handler runs here, inside the finalizer\n"
        "Collected()\n"
        "time.sleep(10)\n"
        "print('the run went on')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == returncode, done.stdout + done.stderr
    assert "the run went on" not in done.stdout
