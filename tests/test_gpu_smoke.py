"""``benchmarks/gpu_smoke.py`` runs on a machine with only torch, transformers and PEFT (the GPU box has
no vLLM, lm-eval or MLflow): its ``--tiny`` shape on the CPU, with those imports made impossible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
#: Importing any of these fails inside the check, as it would on the GPU box.
ABSENT = ("vllm", "lm_eval", "mlflow", "datasets")


def test_the_gpu_smoke_script_runs_every_policy_without_vllm(tmp_path):
    out = tmp_path / "smoke.json"
    code = (f"import sys, runpy\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
            f"sys.argv = [{str(SCRIPT)!r}, '--tiny', '--device', 'cpu', '--n', '8', '--json', {str(out)!r}]\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["n"] == 8 and result["sensitivities_finite"]
    assert result["sensitivity_shape"][0] == 8
    assert {"abs_select", "grad_direction", "smooth_abs"} <= set(result["policies"])
    assert any(name.startswith("random_index") for name in result["policies"])
    assert all(p["modules_edited"] == result["edited_modules"] > 0 for p in result["policies"].values())
