"""The GitHub Action's step (``action.yml``): run the gate, set the step outputs, write the job summary.

Inputs arrive as ``INPUT_*`` environment variables (the action maps its ``with:`` keys onto them);
``$GITHUB_OUTPUT`` receives ``outcome`` (PROMOTE, REJECT, INCONCLUSIVE, or ERROR for a bad config or a
runtime failure), ``promoted-sha256``, ``report``, ``run-dir`` and ``exit-code``; ``summary.md`` is
appended to ``$GITHUB_STEP_SUMMARY``. The exit status is the gate's own (0 PROMOTE, 10 REJECT,
11 INCONCLUSIVE, 2 bad input, 1 runtime failure), or 0 with ``report-only``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ReleaseGateError
from ..schema import PROMOTED_DIR, REPORT_FILE, SUMMARY_FILE


def _inputs() -> dict[str, str]:
    return {key[len("INPUT_"):].lower().replace("_", "-"): value for key, value in os.environ.items()
            if key.startswith("INPUT_")}


def _write(variable: str, text: str) -> None:
    target = os.environ.get(variable)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text)


def main() -> int:
    from ..api import run

    inputs = _inputs()
    config, run_dir = inputs.get("config", ""), Path(inputs.get("output-dir") or "reports/release-gate")
    overrides = [line.strip() for line in inputs.get("set", "").splitlines() if line.strip()]
    report_only = inputs.get("report-only", "false").lower() in ("1", "true", "yes")
    try:
        result = run(config, overrides=[f"output.dir={run_dir}", *overrides], resume=run_dir.exists())
    except ReleaseGateError as exc:
        print(f"release-gate: error: {exc}", file=sys.stderr)
        _write("GITHUB_OUTPUT", f"outcome=ERROR\nexit-code={exc.exit_code}\nrun-dir={run_dir}\n")
        _write("GITHUB_STEP_SUMMARY", f"## release-gate: **ERROR**\n\n```\n{exc}\n```\n")
        return 0 if report_only else exc.exit_code
    document = result.document
    promoted = document.promoted
    code = result.exit_code
    _write("GITHUB_OUTPUT", f"outcome={document.outcome}\npromoted-sha256={promoted.sha256 if promoted else ''}\n"
                            f"report={run_dir / REPORT_FILE}\nrun-dir={run_dir}\nexit-code={code}\n"
                            f"promoted-dir={run_dir / PROMOTED_DIR if promoted else ''}\n")
    _write("GITHUB_STEP_SUMMARY", (run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    print(f"release-gate: {document.outcome}" + (f" {promoted.arm}" if promoted else "") +
          f" (report: {run_dir / REPORT_FILE})")
    return 0 if report_only else code


if __name__ == "__main__":  # pragma: no cover - the action's step
    sys.exit(main())
