"""Run the repository's composite GitHub Action (action.yml) the way a runner would, with fake output files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ACTION = Path(__file__).resolve().parents[1] / "action.yml"
EXPRESSION = re.compile(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}")


def run_action(inputs: dict[str, str], workdir: Path) -> tuple[int, dict[str, str], str]:
    """The action's steps in order; returns (exit status, its step outputs, the job summary)."""
    action = yaml.safe_load(ACTION.read_text())
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    values.update(inputs)
    output, summary = workdir / "github_output", workdir / "step_summary"
    output.write_text("")
    summary.write_text("")
    status = 0
    for step in action["runs"]["steps"]:
        condition = step.get("if", "")
        if condition == "inputs.install != 'none'" and values["install"] == "none":
            continue
        env = {**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.update({key: EXPRESSION.sub(lambda m: values[m.group(1)], str(value))
                    for key, value in (step.get("env") or {}).items()})
        command = EXPRESSION.sub(lambda m: values[m.group(1)], step["run"])
        status = subprocess.run(["bash", "-c", command], env=env, cwd=workdir).returncode
        if status:
            break
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return status, outputs, summary.read_text()
