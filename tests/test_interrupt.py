"""Ctrl-C, SIGTERM and kill -9 mid-evaluation: at most the chunk in flight is lost, no engine process survives.

A real run (tests/interrupted_run.py) in its own process group is
interrupted as soon as it stores a new chunk file, then resumed; the
store must hold only complete files, and a resumed run must leave stored
chunks untouched and compute only the missing ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupted_run import CHUNKED, REQUESTS, arms_from, resolve, settings

from release_gate.assets import fetch
from release_gate.constants import CHUNK_ITEMS
from release_gate.evaluation.store import ItemStore
from release_gate.files import read_jsonl

from factories import smollm2_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SCRIPT = Path(__file__).with_name("interrupted_run.py")
#: The runner's debug line for each chunk it begins to score.
CHUNK_BEGUN = re.compile(r"^(\S+): (\d+) new items for (.+)$", re.MULTILINE)
#: A vLLM log line: its own format (the engine's processes) or a record through Python logging.
VLLM_LINE = re.compile(r"(INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[|(INFO|WARNING) vllm[\w.]*: ")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[str]:
    model_dir = fetch().model_dir
    root = tmp_path_factory.mktemp("interrupt-adapters")
    return [f"a{seed}={smollm2_adapter(model_dir, root / f'a{seed}', seed=seed)}" for seed in (5, 6, 7)]


class Run:
    """One ``interrupted_run.py`` in its own process group (its id is the group id)."""

    def __init__(self, store: Path, tasks: Path, adapters: list[str], log: Path, options: tuple[str, ...] = ()) -> None:
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen([sys.executable, str(SCRIPT), *options, str(store), str(tasks), *adapters],
                                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, seconds: float) -> int:
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"run did not exit in {seconds} s:\n{self.log.read_text()[-3000:]}") from None

    def wait_for_new_file(self, store: Path, known: dict[Path, int], seconds: float = 600) -> None:
        deadline = time.monotonic() + seconds
        while not set(stored(store)) - set(known):
            if self.process.poll() is not None:
                raise AssertionError(f"run exited with {self.process.returncode} before storing a new pair:\n"
                                     f"{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise AssertionError("no new (arm, task) file")
            time.sleep(0.05)


def stored(store: Path) -> dict[Path, int]:
    """Stored (arm, task) files and their modification times (a rewrite changes it)."""
    return {path: path.stat().st_mtime_ns for path in store.rglob("*.jsonl")}


def group_members(group: int) -> list[str]:
    """Live processes (zombies are dead) in process group ``group``, read from /proc."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(f"{pid} {stat.split(' ', 2)[1]}")
    return members


def assert_no_survivors(group: int, grace: float = 15) -> None:
    deadline = time.monotonic() + grace
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(group) == [], "engine processes survived the interrupted run"


def test_interrupted_runs_lose_at_most_the_pair_in_flight(adapters, tmp_path):
    store_dir, task_dir = tmp_path / "store", tmp_path / "tasks"
    arms = arms_from(adapters)
    assets = fetch()
    tasks = resolve(assets, task_dir)
    engine_key = settings(assets, arms).key()
    store = ItemStore(store_dir)
    pairs = [(arm, task) for arm in arms for task in tasks]
    expected = {store.directory(arm, task.request.name, task.key, engine_key) for arm, task in pairs}
    assert len(expected) == len(arms) * len(REQUESTS)

    def check_store() -> dict[Path, int]:
        """Only the run's own chunk files, each complete and valid JSONL (writes are atomic); a .tmp is never read."""
        files = stored(store_dir)
        assert {path.parent for path in files} <= expected
        for arm, task in pairs:
            items = store.load(arm, task.request.name, task.key, engine_key)
            directory = store.directory(arm, task.request.name, task.key, engine_key)
            chunks = [path for path in files if path.parent == directory]
            assert len(chunks) <= 1, directory  # one chunk per (arm, task): the whole limit at once
            assert len(items) == (task.request.limit if chunks else 0), directory
            for path in chunks:
                assert all(json.loads(line) for line in path.read_text().splitlines())
        return files

    # Ctrl-C from a terminal: SIGINT to the whole foreground process group, engine processes included
    run = Run(store_dir, task_dir, adapters, tmp_path / "ctrl-c.log")
    run.wait_for_new_file(store_dir, {})
    os.killpg(run.process.pid, signal.SIGINT)
    assert run.wait(120) != 0
    assert_no_survivors(run.process.pid)
    first = check_store()
    assert 0 < len(first) < len(expected)

    # `kill PID` / a cancelled CI job: SIGTERM to the run alone; only its own shutdown can stop the engine
    run = Run(store_dir, task_dir, adapters, tmp_path / "sigterm.log")
    run.wait_for_new_file(store_dir, first)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(120) == 128 + signal.SIGTERM  # unwound through Engine.close, not killed outright
    assert_no_survivors(run.process.pid)
    second = check_store()
    assert {path: second[path] for path in first} == first  # resumed: stored pairs were not recomputed
    assert len(first) < len(second) < len(expected)

    # kill -9 of the whole group: nothing runs any cleanup, the store must still be sound
    run = Run(store_dir, task_dir, adapters, tmp_path / "kill-9.log")
    run.wait_for_new_file(store_dir, second)
    os.killpg(run.process.pid, signal.SIGKILL)
    run.wait(60)
    assert_no_survivors(run.process.pid)
    third = check_store()
    assert {path: third[path] for path in second} == second
    assert len(second) < len(third)

    run = Run(store_dir, task_dir, adapters, tmp_path / "resume.log")
    assert run.wait(900) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert_no_survivors(run.process.pid)
    final = check_store()
    assert {path.parent for path in final} == expected
    assert {path: final[path] for path in third} == third


def test_kill_9_of_the_main_process_alone_takes_the_engine_with_it(adapters, tmp_path):
    """SIGKILL to the run's own pid only (not its group): the watchdog kills the engine core and worker."""
    run = Run(tmp_path / "store", tmp_path / "tasks", adapters, tmp_path / "alone.log")
    deadline = time.monotonic() + 300
    while "engine started" not in run.log.read_text():
        assert run.process.poll() is None and time.monotonic() < deadline, run.log.read_text()[-3000:]
        time.sleep(0.2)
    engine = [member for member in group_members(run.process.pid) if not member.startswith(f"{run.process.pid} ")]
    assert engine, "vLLM started no engine processes to watch"
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(30)
    assert_no_survivors(run.process.pid, grace=10)


def begun(log: Path) -> dict[str, int]:
    """Items per arm whose scoring a ``--chunks`` run began (the runner logs each chunk as it starts it)."""
    items: dict[str, int] = {}
    for _, count, arms in CHUNK_BEGUN.findall(log.read_text()):
        for arm in arms.split(", "):
            items[arm] = items.get(arm, 0) + int(count)
    return items


def test_a_kill_9_mid_evaluation_costs_at_most_one_chunk_per_arm_and_the_terminal_stays_quiet(adapters, tmp_path):
    """The fixed design with cross-arm batching, on one task of three chunks: kill -9 once a first chunk is
    stored. Every file holds one chunk; the killed run had begun at most one chunk per arm that it did not
    store; the resumed run scores exactly what is missing. Its terminal shows no vLLM log line (its run log
    holds them, the engine process's included) and names vLLM's set-up warnings once, if there are any."""
    store_dir, task_dir, run_log = tmp_path / "store", tmp_path / "tasks", tmp_path / "run.log"
    named = [f"baseline={adapters[0].split('=', 1)[1]}", adapters[1]]
    arms = arms_from(named)
    assets = fetch()
    task = resolve(assets, task_dir, CHUNKED)[0]
    store, engine_key = ItemStore(store_dir), settings(assets, arms).key()
    assert task.size > 2 * CHUNK_ITEMS

    killed = Run(store_dir, task_dir, named, tmp_path / "killed.log", ("--chunks", str(tmp_path / "killed-run.log")))
    killed.wait_for_new_file(store_dir, {})
    os.killpg(killed.process.pid, signal.SIGKILL)
    killed.wait(60)
    assert_no_survivors(killed.process.pid)
    files = stored(store_dir)
    assert all(0 < len(read_jsonl(path)) <= CHUNK_ITEMS for path in files)
    kept = {arm.name: len(store.load(arm, task.request.name, task.key, engine_key)) for arm in arms}
    assert 0 < sum(kept.values()) < len(arms) * task.size, kept
    lost = {arm: begun(killed.log).get(arm, 0) - kept[arm] for arm in kept}
    assert all(0 <= n <= CHUNK_ITEMS for n in lost.values()), lost

    resumed = Run(store_dir, task_dir, named, tmp_path / "resumed.log", ("--chunks", str(run_log)))
    assert resumed.wait(900) == 0, resumed.log.read_text()[-3000:]
    assert_no_survivors(resumed.process.pid)
    assert {path: mtime for path, mtime in stored(store_dir).items() if path in files} == files
    assert begun(resumed.log) == {arm: task.size - n for arm, n in kept.items() if n < task.size}
    assert all(len(store.load(arm, task.request.name, task.key, engine_key)) == task.size for arm in arms)

    terminal, log = resumed.log.read_text(), run_log.read_text()
    assert "arm×items" in terminal and "items/s, ETA" in terminal  # the progress bar, with a rate once scored
    assert not VLLM_LINE.search(terminal), VLLM_LINE.search(terminal)
    assert VLLM_LINE.search(log) and "EngineCore" in log
    assert terminal.count("note: vLLM set-up:") == ("is not found in LD_PRELOAD" in log)
