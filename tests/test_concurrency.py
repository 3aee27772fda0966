"""Two real `release-gate run` processes on one cache: both finish, nothing is computed twice or torn.

Same adapter, overlapping arms (baseline, base, abs_select and the controls in both; grad_direction in one,
smooth_abs in the other), started together. The sensitivity pass runs once (the other run waits for its
lock and reads the result), every item is scored by exactly one of the two processes (the item store's
locks), every stored file is complete, and both decisions agree on the arms they share.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from release_gate.assets import fetch
from release_gate.embedded_demo import csqa_prompt
from release_gate.files import read_jsonl

from factories import smollm2_adapter, write_heldout_task

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CHUNK = re.compile(r"^(\S+): (\d+) new items for (.+)$")


def test_two_runs_share_one_cache(tmp_path):
    assets = fetch()
    rows = read_jsonl(assets.commonsense_qa)
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps(dict(zip(("prompt", "answer"), csqa_prompt(rows[i])))) + "\n"
                                   for i in range(512, 536)))
    tasks = write_heldout_task(rows, range(640, 680), tmp_path / "tasks")
    adapter = smollm2_adapter(assets.model_dir, tmp_path / "adapter", seed=11)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("models", "data", "nltk_data", "downloads", "manifest.json"):
        (cache / name).symlink_to(assets.root / name)
    processes, logs = [], []
    for index, extra in enumerate(("grad_direction", "smooth_abs")):
        config = {
            "base_model": str(assets.model_dir), "adapter": str(adapter), "output": {"dir": str(tmp_path / f"run{index}")},
            "cache_dir": str(cache), "calibration": {"file": str(calibration), "n": 24},
            "policies": ["abs_select", extra], "controls": {"seeds": [0, 1]},
            "evaluation": {"include_path": [str(tasks)], "max_model_len": 1024},
            "targets": [{"task": "commonsense_qa_heldout", "metric": "acc", "limit": 8}],
            "guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.5, "limit": 2,
                        "max_gen_toks": 16}],
            "gate": {"sequential": False},
        }
        path = tmp_path / f"config{index}.yaml"
        path.write_text(yaml.safe_dump(config))
        logs.append(tmp_path / f"run{index}.log")
        with open(logs[-1], "w") as handle:
            processes.append(subprocess.Popen([sys.executable, "-m", "release_gate.cli", "-v", "run", str(path),
                                               "--exit-zero"], stdout=handle, stderr=subprocess.STDOUT,
                                              env={**os.environ, "TQDM_DISABLE": "1"}))
    for process, log in zip(processes, logs):
        assert process.wait(timeout=1500) == 0, log.read_text()[-4000:]

    # every (arm, task, item) was scored by one process only
    scored: dict[tuple[str, str], int] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            match = CHUNK.match(line.strip())
            if match:
                task, count, arms = match.groups()
                for arm in arms.split(", "):
                    scored[(arm, task)] = scored.get((arm, task), 0) + int(count)
    limits = {"commonsense_qa_heldout": 8, "ifeval": 2}
    assert scored and all(count == limits[task] for (_, task), count in scored.items()), scored
    shared = {"base", "baseline", "abs_select", "random_index@0", "random_index@1"}
    assert {arm for arm, _ in scored} == shared | {"grad_direction", "smooth_abs"}

    # one sensitivity pass, read by both runs; every stored file complete
    assert len(list((cache / "sensitivity").glob("*.safetensors"))) == 1
    keys = {json.loads((tmp_path / f"run{i}" / "variants" / "abs_select" / "spectral_edit.json").read_text())
            ["calibration"]["cache_key"] for i in (0, 1)}
    assert len(keys) == 1
    for path in (cache / "items").rglob("*.jsonl"):
        assert read_jsonl(path)  # parses completely
    assert not list((cache / "items").rglob("*.tmp"))

    # both decisions agree on what they share
    first, second = (json.loads((tmp_path / f"run{i}" / "decision.json").read_text()) for i in (0, 1))
    for arm in shared:
        assert first["arms"][arm]["scores"] == second["arms"][arm]["scores"], arm
    assert first["variants"]["abs_select"]["criteria"][0]["estimate"] == \
        second["variants"]["abs_select"]["criteria"][0]["estimate"]
    assert Path(tmp_path / "run0" / "report.html").is_file() and Path(tmp_path / "run1" / "report.html").is_file()
