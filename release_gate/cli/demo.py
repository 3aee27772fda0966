"""``release-gate demo``: the whole gate offline on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RUN_EPILOG, finish


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="run the whole gate offline on the embedded default (SmolLM2-135M, CommonsenseQA, IFEval)",
        description="Fetch the offline assets and run the gate on the shipped demo LoRA adapter (trained once on "
        "CommonsenseQA rows 0–255, answers in words, chat template): calibration on 128 disjoint rows, every policy "
        "and three random_index seeds, target = CommonsenseQA answered in words on the 381 held-out rows (scored "
        "exactly: the gold option's words and nothing else), guard = IFEval's single-instruction prompts through "
        "the chat template (64 of the 305, ≤128 tokens, budget 20 points, above its planned MDE of 16.2), in the "
        "product's default sequential gate with two looks, at 40% and all of the items (an arm stops once it can "
        "no longer pass); then decision.json, "
        "summary.md, junit.xml and report.html. A re-run reuses every cache.",
        epilog=RUN_EPILOG,
    )
    demo.add_argument("--out", type=Path, default=Path("reports/demo"), help="output directory (default reports/demo)")
    demo.add_argument("--cache-dir", type=Path, help="cache directory for assets, the demo adapter and sensitivities")
    demo.add_argument("--full", action="store_true", help="score every arm on all 381 held-out rows and all 541 IFEval "
                      "prompts at IFEval's own token cap, in one look (budget 10 points)")
    demo.add_argument("--retrain", action="store_true", help="train the demo adapter from its recipe (once, cached; "
                      "minutes) and gate that instead of the shipped one")
    demo.add_argument("--exit-zero", action="store_true", help="exit 0 whatever the outcome")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..embedded_demo import FULL, DemoSize, run_demo

    size = FULL if args.full else DemoSize()
    return finish(run_demo(args.out, args.cache_dir, size, retrain=args.retrain), args.exit_zero)
