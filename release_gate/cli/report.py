"""``release-gate report RUN_DIR``: re-render report.html without evaluating anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="re-render report.html from a run directory (no re-evaluation)",
        description="Render RUN_DIR/report.html again from decision.json, the per-item results, the variant "
        "sidecars and inspect.json (e.g. after upgrading release-gate or editing the templates).",
        epilog=EPILOG,
    )
    report.add_argument("run_dir", type=Path, help="a run directory written by `release-gate run` or `demo`")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..document import read_decision
    from ..reporting.render import render_report

    read_decision(args.run_dir)  # a clear error for a directory that is not a finished run
    print(f"report: {render_report(args.run_dir)}")
    return 0
