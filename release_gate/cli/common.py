"""What several subcommands share: epilogs, the verdict printout, comma-separated lists."""

from __future__ import annotations

from ..errors import BadInput
from ..schema import EXIT_CODES

EPILOG = "Exit codes: 0 success, 2 bad config or input, 1 runtime failure."
RUN_EPILOG = ("Exit codes: 0 PROMOTE, 10 REJECT, 11 INCONCLUSIVE (0 for all three with --exit-zero), "
              "2 bad config or input, 1 runtime failure.")
CACHE_HELP = "cache directory (default: $RELEASE_GATE_CACHE or ~/.cache/release-gate)"


def finish(result, exit_zero: bool) -> int:
    """Print the verdict and where the evidence is; the exit code carries the outcome."""
    document = result.document
    promoted = document["promoted"]
    print(f"{document['outcome']}" + (f" {promoted['arm']} -> {result.run_dir / promoted['path']}" if promoted else ""))
    print(document["reasons"][0])
    print(f"report: {result.run_dir / 'report.html'}")
    return 0 if exit_zero else EXIT_CODES[document["outcome"]]


def csv(text: str, flag: str, kind=str) -> tuple:
    """``a,b,c`` → a tuple of ``kind``; one clear error for anything else."""
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInput(f"{flag}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not items:
        raise BadInput(f"{flag}: must not be empty")
    return items
