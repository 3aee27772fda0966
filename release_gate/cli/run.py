"""``release-gate run CONFIG``: the gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RUN_EPILOG, finish


def add_parser(sub: argparse._SubParsersAction) -> None:
    run_parser = sub.add_parser(
        "run", help="the gate: refine, evaluate every arm, decide, write the outputs",
        description="Calibrate once, write every policy variant and the random_index controls, score base, "
        "baseline, variants and controls on the target and guard tasks through one vLLM engine (or an "
        "existing server) in sequential looks, decide with exact paired tests, and write decision.json, "
        "summary.md, junit.xml, report.html and (only on PROMOTE) promoted/. Cached calibration and per-item "
        "scores are reused, so a re-run resumes, a larger limit evaluates only the new items, and a "
        "gate-only change evaluates nothing again.",
        epilog=RUN_EPILOG,
    )
    run_parser.add_argument("config", type=Path, help="run config YAML (see examples/; schema: release-gate config-schema)")
    run_parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config key by its dotted path (gate.alpha=0.1, evaluation.limit=50, "
                            "calibration.n=64, targets.0.limit=240); applied after the file")
    run_parser.add_argument("--resume", action="store_true", help="continue in an existing run directory")
    run_parser.add_argument("--exit-zero", action="store_true", help="exit 0 whatever the outcome (report-only pipelines)")
    run_parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..pipeline import run as run_pipeline

    return finish(run_pipeline(load_run_config(args.config, args.overrides), resume=args.resume), args.exit_zero)
