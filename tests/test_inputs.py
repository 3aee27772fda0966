"""Inputs are only ever read (issue 21).

An adapter or calibration file inside the output directory or inside any release-gate run directory is
refused before anything is written; ``promoted/`` is never replaced or removed when it is a run's input;
and every unreadable or missing input (permissions, a directory where a file should be, a broken symbolic
link) gets exit 2 and a message naming the file and the cause, with root's permission override dropped
(``setpriv``) so that it cannot hide the failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from release_gate.cli import main
from release_gate.document import DecisionDocument
from release_gate.errors import BadInput
from release_gate.reporting.outputs import write_outputs
from release_gate.schema import DECISION_FILE, PROMOTED_DIR, RUN_MARKER
from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE

from factories import promote_in

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by its sha256 (names included: nothing added, removed or changed)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path, tiny_adapter_dir) -> Path:
    """A release-gate run directory whose ``variants/abs_select_strong`` holds a real adapter."""
    run = tmp_path / "run"
    shutil.copytree(tiny_adapter_dir, run / "variants" / "abs_select_strong")
    (run / RUN_MARKER).write_text("written by release-gate run\n")
    return run


def test_an_adapter_inside_the_run_dir_it_resumes_is_refused_and_untouched(tmp_path, base_config, earlier_run,
                                                                           capsys):
    adapter = earlier_run / "variants" / "abs_select_strong"
    before = snapshot(earlier_run)
    config = write_config(tmp_path / "config.yaml", {**base_config, "adapter": str(adapter),
                                                     "output": {"dir": str(earlier_run)}})
    assert main(["run", str(config), "--resume"]) == 2
    assert f"{adapter}: input is inside the output directory {earlier_run}" in capsys.readouterr().err
    assert snapshot(earlier_run) == before


def test_an_adapter_inside_another_run_dir_is_refused(tmp_path, base_config, earlier_run, capsys):
    adapter = earlier_run / "variants" / "abs_select_strong"
    before = snapshot(earlier_run)
    config = write_config(tmp_path / "config.yaml", {**base_config, "adapter": str(adapter),
                                                     "output": {"dir": str(tmp_path / "new-run")}})
    assert main(["run", str(config)]) == 2
    assert f"{adapter}: input is inside the release-gate run directory {earlier_run}" in capsys.readouterr().err
    assert snapshot(earlier_run) == before and not (tmp_path / "new-run").exists()


def test_a_calibration_file_inside_the_output_dir_is_refused(tmp_path, base_config, capsys):
    out = tmp_path / "out"
    out.mkdir()
    calibration = shutil.copyfile(base_config["calibration"]["file"], out / "calib.jsonl")
    config = write_config(tmp_path / "config.yaml", {**base_config, "output": {"dir": str(out)},
                                                     "calibration": {"file": str(calibration), "n": 4}})
    assert main(["run", str(config)]) == 2
    assert f"{calibration}: input is inside the output directory {out}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["calib.jsonl"]


def test_promoted_is_never_replaced_or_withdrawn_when_it_is_the_runs_input(tmp_path, tiny_adapter_dir):
    run = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    promoted = Path(shutil.copytree(tiny_adapter_dir, run / PROMOTED_DIR))
    before = snapshot(promoted)
    rejected = json.loads((run / DECISION_FILE).read_text())
    as_input = {**rejected, "config": {**rejected["config"], "adapter": str(promoted)}}
    with pytest.raises(BadInput, match=f"{promoted}: the run's input {promoted} is there"):
        write_outputs(run, DecisionDocument.model_validate(as_input), {})
    with pytest.raises(BadInput, match="never replaces or removes it"):
        write_outputs(run, promote_in(as_input, "abs_select", "0" * 64), {"abs_select": tiny_adapter_dir})
    assert snapshot(promoted) == before


# --- unreadable inputs, with root's override dropped --------------------------------------------------------

#: Runs ``release-gate run`` on each config in-process and prints {case: [exit code, stderr]}.
PROBE = """
import contextlib, io, json, sys
from release_gate.cli import main
results = {}
for case, config in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["run", config])
        except BaseException as exc:  # a traceback is a failure of this test, not of the probe
            code, err = repr(exc), io.StringIO(err.getvalue() + "Traceback")
    results[case] = [code, err.getvalue()]
print(json.dumps(results))
"""


def unprivileged() -> list[str]:
    """A command prefix that takes root's permission override away (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission failures cannot be shown")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def damage(path: Path, how: str) -> str:
    """Make ``path`` unreadable (``perm``), a directory (``dir``) or a broken symlink (``link``); the cause's words."""
    if how == "perm":
        path.chmod(0)
        return "cannot be read (Permission denied)"
    path.unlink()
    if how == "dir":
        path.mkdir()
        return "is a directory, not a file"
    path.symlink_to(path.parent / "gone")
    return f"is a broken symbolic link (to {path.parent / 'gone'})"


def test_every_unreadable_input_is_named_with_its_cause(tmp_path, base_config, tiny_adapter_dir):
    cases, expected = {}, {}
    for what in ("config", "adapter config", "adapter weights", "calibration file"):
        for how in ("perm", "dir", "link"):
            case = f"{what} {how}"
            root = tmp_path / case.replace(" ", "-")
            adapter = Path(shutil.copytree(tiny_adapter_dir, root / "adapter"))
            calibration = Path(shutil.copyfile(base_config["calibration"]["file"], root / "calib.jsonl"))
            config = write_config(root / "config.yaml", {**base_config, "adapter": str(adapter),
                                                         "output": {"dir": str(root / "run")},
                                                         "calibration": {"file": str(calibration), "n": 4}})
            target = {"config": config, "adapter config": adapter / CONFIG_FILE,
                      "adapter weights": adapter / SAFETENSORS_FILE, "calibration file": calibration}[what]
            label = "file" if what == "config" else what
            expected[case] = (root, f"{target}: {label} {damage(target, how)}")
            cases[case] = str(config)
    probe = subprocess.run([*unprivileged(), sys.executable, "-c", PROBE, json.dumps(cases)],
                           capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    results = json.loads(probe.stdout.strip().splitlines()[-1])
    for case, (root, message) in expected.items():
        code, err = results[case]
        assert code == 2 and message in err and "Traceback" not in err, (case, code, err)
        assert not (root / "run").exists(), case
