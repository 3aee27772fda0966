"""`release-gate demo`: the embedded offline default runs end to end and re-uses its caches."""

from __future__ import annotations

import json

import pytest

from release_gate.cli import main
from release_gate.surgery.adapter import load_adapter

pytestmark = pytest.mark.slow


def test_demo_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    first = json.loads((out / "demo.json").read_text())
    assert set(first["variants"]) == {
        "abs_select", "smooth_abs", "grad_direction", "random_index@0", "random_index@1", "random_index@2"}
    slices = first["slices"]
    assert slices["train"][1] <= slices["calibration"][0] and slices["calibration"][1] <= slices["evaluation"][0]
    for arm, path in first["variants"].items():
        sidecar = json.loads((out / "variants" / arm / "spectral_edit.json").read_text())
        assert sidecar["source_adapter"]["sha256"] == first["adapter_sha256"]
        assert load_adapter(path).select()  # every variant is a loadable LoRA directory
    assert json.loads((out / "inspect.json").read_text())["n_modules"] == 210
    printed = capsys.readouterr().out
    assert "cross-layer alignment" in printed and "demo finished" in printed

    assert main(["demo", "--out", str(out)]) == 0  # re-run: same adapter, cached calibration
    second = json.loads((out / "demo.json").read_text())
    assert second["adapter_sha256"] == first["adapter_sha256"]
    sidecar = json.loads((out / "variants" / "abs_select" / "spectral_edit.json").read_text())
    assert sidecar["calibration"]["n_answer_tokens"] > 0


def test_demo_refuses_a_foreign_output_dir(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "was not written by the demo" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
