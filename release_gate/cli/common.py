"""What several subcommands share: epilogs, the verdict printout, comma-separated lists, schema printers."""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass

from ..errors import BadInput

EPILOG = "Exit codes: 0 success, 2 bad config or input, 1 runtime failure."
RUN_EPILOG = ("Exit codes: 0 PROMOTE, 10 REJECT, 11 INCONCLUSIVE (0 for all three with --exit-zero), "
              "2 bad config or input, 1 runtime failure.")
CACHE_HELP = "cache directory (default: $RELEASE_GATE_CACHE or ~/.cache/release-gate)"


def finish(result, exit_zero: bool) -> int:
    """Print the verdict and where the evidence is; the exit code carries the outcome."""
    document = result.document
    promoted = document.promoted
    print(f"{document.outcome}" + (f" {promoted.arm} -> {result.run_dir / promoted.path}" if promoted else ""))
    print(document.reasons[0])
    print(f"report: {result.run_dir / 'report.html'}")
    return 0 if exit_zero else result.exit_code


def csv(text: str, flag: str, kind=str) -> tuple:
    """``a,b,c`` → a tuple of ``kind``; one clear error for anything else."""
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInput(f"{flag}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not items:
        raise BadInput(f"{flag}: must not be empty")
    return items


@dataclass(frozen=True)
class SchemaCommand:
    """A subcommand that prints one model's JSON Schema (``config-schema``, ``decision-schema``).

    ``module`` names the ``release_gate`` module whose ``schema()`` it prints, imported only when run so
    ``--help`` stays fast.
    """

    name: str
    help: str
    description: str
    module: str

    def add_parser(self, sub: argparse._SubParsersAction) -> None:
        parser = sub.add_parser(self.name, help=self.help, description=self.description, epilog=EPILOG)
        parser.set_defaults(handler=self.run)

    def run(self, args: argparse.Namespace) -> int:
        schema = importlib.import_module(f"release_gate.{self.module}").schema()
        print(json.dumps(schema, indent=1, ensure_ascii=False))
        return 0
