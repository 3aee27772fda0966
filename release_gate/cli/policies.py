"""``release-gate policies``: the available policies and their effective parameters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    policies = sub.add_parser("policies", help="list the available policies and their parameters", epilog=EPILOG)
    policies.add_argument("--policy-dir", type=Path, action="append", default=[],
                          help="extra directory of policy YAML files")
    policies.add_argument("--json", action="store_true", help="print JSON instead of text")
    policies.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..surgery.policy_files import load_policy_files

    files = load_policy_files(args.policy_dir)
    listing = {name: {"description": f.description, "source": str(f.source), **f.build().parameters()}
               for name, f in sorted(files.items())}
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    for name, entry in listing.items():
        params = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in {"description", "source", "kind", "name"})
        print(f"{name}  [{entry['kind']}]  {entry['description']}\n    {params}")
    return 0
