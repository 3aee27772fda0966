"""``release-gate inspect ADAPTER``: spectral diagnostics of a LoRA adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BadInput
from .common import EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser(
        "inspect", help="spectral diagnostics of a LoRA adapter",
        description="Per-module singular values, energy concentration (share of Σσ in the top 20%% of "
        "components), effective rank, and the cross-layer / cross-module subspace alignment of the "
        "residual-writing projections (the Spectral Surgery paper's Fig. 1).",
        epilog=EPILOG,
    )
    inspect.add_argument("adapter", type=Path, help="PEFT LoRA adapter directory")
    inspect.add_argument("--top-m", type=int, default=8, help="subspace size m for Align_U (default 8, capped at the rank)")
    inspect.add_argument("--json", action="store_true", help="print every number as JSON")
    inspect.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..surgery.adapter import load_adapter
    from ..surgery.inspect import diagnose, format_text

    if args.top_m < 1:
        raise BadInput(f"--top-m: must be ≥ 1, got {args.top_m}")
    report = diagnose(load_adapter(args.adapter), top_m=args.top_m)
    print(json.dumps(report, indent=1) if args.json else format_text(report))
    return 0
