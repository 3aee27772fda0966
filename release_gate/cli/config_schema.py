"""``release-gate config-schema``: the run config's JSON Schema, for editors and CI linters."""

from __future__ import annotations

import argparse
import json

from .common import EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    schema = sub.add_parser(
        "config-schema", help="print the run config's JSON Schema",
        description="Print the JSON Schema of `release-gate run` configs (every key, its type, default and "
        "constraints), e.g. for an editor's YAML language server: "
        "`release-gate config-schema > release-gate.schema.json`.",
        epilog=EPILOG,
    )
    schema.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import schema

    print(json.dumps(schema(), indent=1, ensure_ascii=False))
    return 0
