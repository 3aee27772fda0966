"""Signals that stop a run: SIGTERM unwinds like Ctrl-C, and neither is lost inside a finalizer.

Both must reach the main thread as an exception so that ``Engine.close`` runs: vLLM's engine core and worker
processes do not watch their parent.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill PID``, a cancelled CI job) unwind like Ctrl-C, so ``Engine.close`` runs; and make
    both survive a finalizer.

    Python's default SIGTERM action ends the process at once: vLLM's engine
    core and worker processes do not watch their parent and would keep
    running. Installed only over the default actions, from the main thread,
    and left in place: a ``SystemExit`` is an ordinary exit once the engine
    is gone. Ctrl-C keeps raising ``KeyboardInterrupt``.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def _raise_system_exit(signum: int, frame: Any) -> None:
    if not _redelivered_after_finalizer(signum, frame):
        raise SystemExit(128 + signum)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    if not _redelivered_after_finalizer(signum, frame):
        signal.default_int_handler(signum, frame)


def _redelivered_after_finalizer(signum: int, frame: Any) -> bool:
    """An exception raised inside ``__del__`` is printed ("Exception ignored in") and dropped, and the run would
    go on (seen for SIGTERM and Ctrl-C alike): inside one, deliver the signal again once the finalizer returned."""
    if not _in_finalizer(frame):
        return False
    threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
    return True


def _in_finalizer(frame: Any) -> bool:
    """Whether the interrupted code runs inside an object's ``__del__`` (garbage collection can call one anywhere)."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
