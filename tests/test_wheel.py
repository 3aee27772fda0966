"""The built wheel, installed non-editable into a clean environment, works (scripts/check_wheel.sh).

An editable install reads policies, templates and task templates from the checkout, so only a real
wheel shows a package or a data file that pyproject.toml forgot.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("scripts") / "check_wheel.sh"


def check_wheel(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / SCRIPT), sys.executable], capture_output=True, text=True, timeout=900)


def test_the_installed_wheel_carries_its_data_and_entry_points():
    done = check_wheel(ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("wheel check: OK"), done.stdout


def test_a_package_or_data_file_left_out_of_the_wheel_is_named(tmp_path):
    for name in ("pyproject.toml", "README.md", SCRIPT):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("release_gate", "policies", "templates"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (tmp_path / "pyproject.toml").read_text()
    forgetful = pyproject.replace('    "release_gate.gate",\n', "").replace('"release_gate.templates" = ["*.j2"]\n', "")
    assert forgetful.count("\n") == pyproject.count("\n") - 2
    (tmp_path / "pyproject.toml").write_text(forgetful)
    done = check_wheel(tmp_path)
    assert done.returncode == 1
    assert "not in the wheel: release_gate/gate/__init__.py (from release_gate/gate/__init__.py)" in done.stderr
    assert "not in the wheel: release_gate/templates/report.html.j2 (from templates/report.html.j2)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("wheel check: FAILED:"), done.stderr
