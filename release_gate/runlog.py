"""The run's log file: vLLM, transformers and lm-eval talk there, so the terminal shows the plan, progress and decision.

A run writes ``RUN/run.log``: every log record of the run at INFO and above (release-gate's own,
vLLM's, transformers', lm-eval's, Python warnings) and everything the vLLM engine's processes print.
Third-party records reach the terminal only through a handler the application puts on the root
logger (the CLI's ``-v``), the standard arrangement for a library. vLLM and transformers print on
handlers of their own, so for the run those are taken off and their records sent up to the root.
The engine's processes inherit stdout and stderr; while the engine starts, both point at a relay
that copies what they print to the log (and to the terminal under such a root handler) and notes
the set-up warnings that matter, summarised once in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: Third-party loggers that print on handlers of their own (not the root's).
OWN_HANDLERS = ("vllm", "transformers")
#: Set-up warnings worth a line on the terminal: the engine runs without these, only slower.
SETUP_WARNINGS = re.compile(r"lib\w+ is not found in LD_PRELOAD")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """The log file of one run, and the set-up warnings the engine printed into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.setup_warnings: dict[str, None] = {}  # in order of appearance, once each
        self.restores: list[Callable[[], None]] = []

    def relay(self, pipe: int, terminal: int | None) -> None:
        """Copy the engine processes' output to the log (and ``terminal``) until they all exit.

        Never stops reading before the end: a full pipe would block the engine.
        """
        with open(pipe, "rb") as source, open(self.path, "ab", buffering=0) as sink:
            for line in source:
                for fd in (sink.fileno(), terminal):
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.write(fd, line)
                found = SETUP_WARNINGS.search(line.decode(errors="replace"))
                if found:
                    self.setup_warnings.setdefault(found.group(0))
        if terminal is not None:
            os.close(terminal)

    def summarise(self) -> None:
        """The set-up warnings the engine printed, in one terminal line."""
        if self.setup_warnings:
            logger.warning("note: vLLM set-up: %s (it runs, possibly slower; details in %s)",
                           "; ".join(self.setup_warnings), self.path)


_ACTIVE: list[RunLog] = []


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[RunLog]:
    """Send every log record of the run (INFO and above) to ``path``; third-party ones nowhere else unless the
    root logger has a terminal handler."""
    log = RunLog(Path(path))
    handler = logging.FileHandler(log.path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level or logging.INFO, logging.INFO))
    logging.captureWarnings(True)
    log.restores.append(reroute(OWN_HANDLERS))
    if not terminal_echo():
        log.restores.append(hide_library_bars())
    _ACTIVE.append(log)
    try:
        yield log
    finally:
        _ACTIVE.remove(log)
        for restore in reversed(log.restores):
            restore()
        logging.captureWarnings(False)
        root.setLevel(level)
        root.removeHandler(handler)
        handler.close()


def reroute(names: tuple[str, ...]) -> Callable[[], None]:
    """Take the named loggers' own handlers off and let their records reach the root; returns the undo."""
    saved = {}
    for name in names:
        named = logging.getLogger(name)
        if named.handlers or not named.propagate:
            saved[name] = (named.handlers, named.propagate)
            named.handlers, named.propagate = [], True

    def restore() -> None:
        for name, (handlers, propagate) in saved.items():
            named = logging.getLogger(name)
            named.handlers, named.propagate = handlers, propagate

    return restore


def hide_library_bars() -> Callable[[], None]:
    """datasets' "Generating split" and transformers' "Loading weights" bars are not the run's progress: hidden
    unless ``-v`` (the terminal then shows everything); returns the undo."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    shown = (datasets_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    datasets_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    def restore() -> None:
        if shown[0]:
            datasets_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()

    return restore


def console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (stdout or stderr)."""
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


def terminal_echo() -> bool:
    """Whether the application shows third-party logs: a terminal handler on the root logger (``-v``)."""
    return any(console(h) for h in logging.getLogger().handlers)


@contextlib.contextmanager
def engine_output() -> Iterator[None]:
    """While the engine starts, stdout and stderr point at the run log's relay: its processes inherit them.

    Outside a run (:func:`run_log`) nothing changes. vLLM sets up its logger on import, during the
    start, so it is rerouted afterwards too.
    """
    if not _ACTIVE:
        yield
        return
    log = _ACTIVE[-1]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    read, write = os.pipe()
    terminal = os.dup(saved[1]) if terminal_echo() else None
    threading.Thread(target=log.relay, args=(read, terminal), name="engine-output", daemon=True).start()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, original in zip((1, 2), saved):
            os.dup2(original, fd)
            os.close(original)
        log.restores.append(reroute(OWN_HANDLERS))
    if not terminal_echo():
        log.restores.append(hide_library_bars())
        log.summarise()
