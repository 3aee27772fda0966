"""`release-gate demo`: the embedded offline default runs the whole gate and re-uses its caches.

The test runs the demo's own code path with smaller slices (the default sizes take ~15 minutes on
2 cores); the CLI's default is exercised by `make demo`.
"""

from __future__ import annotations

import json
import logging

import pytest

from release_gate.assets import default_cache_dir
from release_gate.cli import main
from release_gate.embedded_demo import DEMO_CONTROL_PARAMS, DEMO_POLICIES, GUARD_TASK, DemoSize, run_demo
from release_gate.schema import EXIT_CODES

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SMALL = DemoSize(target_limit=12, guard_limit=2, guard_max_gen_toks=16)


def _stored() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (default_cache_dir() / "items").rglob("*") if p.is_file()}


def test_demo_runs_the_gate_and_reruns_from_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="release_gate")
    out = tmp_path / "demo"
    first = run_demo(out, size=SMALL)
    decision = json.loads((out / "decision.json").read_text())
    assert first.exit_code == EXIT_CODES[decision["outcome"]]
    assert set(decision["arms"]) == {"base", "baseline", *DEMO_POLICIES, "random_index@0", "random_index@1",
                                     "random_index@2"}
    assert decision["arms"]["random_index@0"]["policy"]["amp_factor"] == DEMO_CONTROL_PARAMS["amp_factor"]
    assert decision["tasks"]["commonsense_qa_gen_heldout"]["role"] == "target"
    assert decision["tasks"][GUARD_TASK]["role"] == "guard"
    for name in ("report.html", "summary.md", "junit.xml", "inspect.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "inspect.json").read_text())["n_modules"] == 60
    logged = caplog.text
    assert "cross-layer alignment" in logged and "plan: target commonsense_qa_gen_heldout" in logged
    assert "demo adapter: r 8" in logged and "demo policies: abs_select_strong" in logged

    stored = _stored()
    second = run_demo(out, size=SMALL)  # cached: same adapter, calibration and scores
    assert second.document["comparisons"] == first.document["comparisons"]
    assert _stored() == stored


def test_demo_refuses_a_foreign_output_dir(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "is not a release-gate run directory" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
