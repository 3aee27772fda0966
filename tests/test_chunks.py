"""Chunks of items and the evaluation's progress: fixed cuts, arm × items, a rate from scored items only.

The engine side (a kill -9 mid-evaluation costs at most one chunk per arm; a quiet terminal) is in
test_interrupt.py, on real processes.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time

import pytest

from release_gate.cli import configure_logging
from release_gate.constants import CHUNK_ITEMS
from release_gate.evaluation.progress import Progress
from release_gate.evaluation.runner import chunks, sample_order
from release_gate.runlog import engine_output, run_log, terminal_echo


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_chunks_are_cut_at_fixed_positions_of_the_sampled_order():
    order = sample_order(300, seed=3, task="t")
    small, large = chunks(order[:100]), chunks(order[:200])
    assert [len(c) for c in small] == [CHUNK_ITEMS, 100 - CHUNK_ITEMS]
    assert [len(c) for c in large] == [CHUNK_ITEMS] * 3 + [200 - 3 * CHUNK_ITEMS]
    assert large[0] == small[0] and large[1][: len(small[1])] == small[1]  # a later look finds the earlier cuts
    assert [d for c in large for d in c] == list(order[:200]) and chunks([]) == []


def progress(clock: Clock) -> tuple[Progress, io.StringIO]:
    screen = io.StringIO()
    return Progress(clock=clock, file=screen), screen


def test_rate_and_eta_come_from_scored_items_only():
    clock = Clock()
    bar, screen = progress(clock)
    bar.expect({("base", "t"): 200, ("baseline", "t"): 200})
    bar.add("base", "t", range(150), scored=False)  # from the store: counted, but no rate from it
    assert (bar.bar.n, bar.bar.total) == (150, 400)
    assert bar.rate is None and bar.eta() is None and "ETA" not in bar.postfix()
    with bar.scoring("base / t"):
        assert "rate and ETA after the first chunk" in bar.postfix()
        clock.now += 3600  # one slow first chunk (the engine warming up) ...
    bar.add("base", "t", range(150, 200), scored=True)
    for start in range(0, 200, CHUNK_ITEMS):  # ... then chunks at 64 items/s
        with bar.scoring("baseline / t"):
            clock.now += len(range(start, min(200, start + CHUNK_ITEMS))) / 64
        bar.add("baseline", "t", range(start, min(200, start + CHUNK_ITEMS)), scored=True)
    assert bar.bar.n == bar.bar.total == 400
    assert bar.rate == 250 / (3600 + 200 / 64)  # cumulative over the scoring time, not the last update
    bar.add("base", "t", range(200), scored=False)  # asked again at a later look: counted once
    assert bar.bar.n == 400
    bar.close()
    assert "arm×items" in screen.getvalue()


def test_the_total_shrinks_when_the_gate_stops_asking_for_an_arm():
    clock = Clock()
    bar, _ = progress(clock)
    bar.expect({("base", "t"): 100, ("futile", "t"): 100})
    for arm in ("base", "futile"):
        with bar.scoring(f"{arm} / t"):
            clock.now += 5
        bar.add(arm, "t", range(25), scored=True)
    assert bar.eta() == "0:00:30"  # 150 left at 5 items/s
    bar.expect({("base", "t"): 100})  # the next look: the futile arm is done at 25
    assert bar.bar.total == 125 and bar.eta() == "0:00:15"  # 75 left
    bar.close()


@pytest.fixture
def cli_logging():
    """The CLI's logging set up afresh on this test's stderr (and undone after it)."""
    loggers = [logging.getLogger("release_gate"), logging.getLogger()]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers = [h for h in lg.handlers if not getattr(h, "release_gate", False)]
    yield configure_logging
    for lg, handlers, level in saved:
        lg.handlers = handlers
        lg.setLevel(level)


def test_third_party_logs_reach_the_run_log_and_the_terminal_only_with_verbose(tmp_path, capfd, cli_logging):
    vllm = logging.getLogger("vllm.test_chunks")
    cli_logging(verbose=False, quiet=False)
    assert not terminal_echo()
    with run_log(tmp_path / "run.log"):
        vllm.warning("vllm set-up warning")
        logging.getLogger("release_gate.test_chunks").info("plan: the library's own line")
    assert "vllm set-up warning" in (tmp_path / "run.log").read_text()
    assert "plan: the library's own line" in (tmp_path / "run.log").read_text()
    err = capfd.readouterr().err
    assert "vllm set-up warning" not in err and "plan: the library's own line" in err
    cli_logging(verbose=True, quiet=False)
    assert terminal_echo()
    with run_log(tmp_path / "verbose.log"):
        vllm.info("vllm info line")
        logging.getLogger("release_gate.test_chunks").info("once")
    err = capfd.readouterr().err
    assert "vllm info line" in err and err.count("once") == 1


def test_engine_processes_print_into_the_run_log_and_setup_warnings_are_named_once(tmp_path, capfd, cli_logging):
    """What a process started inside ``engine_output`` prints (vLLM's engine core: its own stdout handler) goes
    to the run log, also after the start; its LD_PRELOAD warnings become one terminal line."""
    cli_logging(verbose=False, quiet=False)
    script = ("import sys, time; print('WARNING 12-03 18:00:00 [cpu_worker.py:114] libtcmalloc is not found in "
              "LD_PRELOAD. For best performance, ...', flush=True); print('INFO engine ready', file=sys.stderr, "
              "flush=True); time.sleep(1); print('INFO later, while scoring', flush=True)")
    with run_log(tmp_path / "run.log"):
        with engine_output():
            child = subprocess.Popen([sys.executable, "-c", script])
            time.sleep(0.8)
        print("the decision", flush=True)
        assert child.wait(30) == 0
        time.sleep(0.2)
    log = (tmp_path / "run.log").read_text()
    assert "libtcmalloc is not found" in log and "INFO engine ready" in log and "INFO later, while scoring" in log
    out, err = capfd.readouterr()
    assert out == "the decision\n"
    assert "engine ready" not in err and "later" not in err
    assert err.count("note: vLLM set-up: libtcmalloc is not found in LD_PRELOAD") == 1
