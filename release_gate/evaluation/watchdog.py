"""The engine dies with its parent, whatever kills the parent (kill -9 included).

vLLM's engine core and worker processes do not watch their parent: after SIGKILL of the main process
alone they live on (measured: 3 GB and most of a core). ``PR_SET_PDEATHSIG`` would have to be set
inside vLLM's own children, so instead a small watchdog process runs beside the engine, in a session of
its own (a signal to the run's process group does not reach it). It holds the read end of a pipe whose
only write end the parent holds, and records the parent's descendants every 0.2 s. When the pipe
reaches end of file without a ``stop`` word — the parent is gone, by whatever means — it kills every
recorded descendant still alive. ``Engine.close`` says ``stop`` first, so a normal exit kills nothing.

Python's resource trackers (``multiprocessing``'s and loky's) are spared: each one unlinks the shared
memory (``/dev/shm/psm_*``) and semaphores its dead clients leave once the last of them is gone, and exits;
killing it would leave those files behind until the next reboot.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from contextlib import suppress

STOP = b"stop\n"
REFRESH_SECONDS = 0.2


class Watchdog:
    """A running watchdog over this process's descendants; :meth:`stop` before a normal exit."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "release_gate.evaluation.watchdog", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def stop(self) -> None:
        """Tell the watchdog the engine was shut down normally, and let it exit."""
        if self.process.poll() is None and self.process.stdin is not None:
            with suppress(OSError):
                self.process.stdin.write(STOP)
                self.process.stdin.close()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def watch(parent_pid: int, pipe: int) -> int:
    """Record ``parent_pid``'s descendants until ``pipe`` closes; kill them unless told ``stop``."""
    import psutil

    me = os.getpid()
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    received = b""
    while True:
        ready, _, _ = select.select([pipe], [], [], REFRESH_SECONDS)
        with suppress(psutil.Error):
            known.update({p.pid: p for p in parent.children(recursive=True) if p.pid != me})
        if ready:
            chunk = os.read(pipe, 64)
            if chunk:
                received += chunk
                continue
            break  # end of file: the parent closed the pipe, or died
    if STOP in received:
        return 0
    for process in known.values():
        with suppress(psutil.Error):
            if process.is_running() and not is_resource_tracker(process):
                process.send_signal(signal.SIGKILL)
    return 0


def is_resource_tracker(process) -> bool:  # noqa: ANN001 - a psutil.Process (imported lazily)
    """Whether ``process`` runs a Python resource tracker, which cleans up after its clients by itself."""
    import psutil

    with suppress(psutil.Error):
        return any("resource_tracker" in part for part in process.cmdline())
    return False


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    sys.exit(watch(int(sys.argv[1]), sys.stdin.fileno()))
