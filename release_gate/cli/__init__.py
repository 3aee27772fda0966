"""``release-gate`` command line: parse argv, call the library, map errors to exit codes.

This package is the only place that knows about argv and exit codes: 0 success (``run``/``demo``:
PROMOTE), 10 REJECT, 11 INCONCLUSIVE, 2 bad config or input (:class:`~release_gate.errors.BadInput`),
1 runtime failure. Each subcommand is one small module here (as vLLM's ``entrypoints/cli``): it adds
its parser and runs; the library does the work and logs through ``logging`` (``-v``/``-q`` set the level).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import ReleaseGateError
from . import (
    assets,
    config_schema,
    decision_schema,
    demo,
    edit,
    inspect,
    lm_eval,
    policies,
    report,
    run,
    serve_args,
)

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (assets, policies, inspect, edit, run, report, demo, serve_args, lm_eval, config_schema, decision_schema)
LOGGER = "release_gate"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="release-gate",
        description="Evaluation-gated release of LoRA adapters: refine an adapter with Spectral Surgery, "
        "then promote a variant only when exact paired tests say it is better.",
        epilog="Exit codes: 0 success (run/demo: PROMOTE), 10 REJECT and 11 INCONCLUSIVE (run/demo), "
        "2 bad config or input, 1 runtime failure.",
    )
    verbosity = top.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Messages of the library on stderr, plain (progress bars are tqdm's and unaffected).

    Other libraries' logs (vLLM, transformers, lm-eval) go to a run's log file; ``-v`` also shows them
    here, through a handler on the root logger (see :mod:`release_gate.runlog`).
    """
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "release_gate", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.release_gate = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    root = logging.getLogger()
    if verbose and not any(getattr(h, "release_gate", False) for h in root.handlers):
        others = logging.StreamHandler(sys.stderr)
        others.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        others.addFilter(lambda record: not record.name.startswith(LOGGER))  # the library's own has its handler
        others.release_gate = True  # type: ignore[attr-defined]
        root.addHandler(others)
        root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [lm_eval.NAME]:  # lm-eval parses its own flags
        configure_logging(False, False)
        return _guarded(lambda: lm_eval.run(argv[1:]))
    args = parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    return _guarded(lambda: args.handler(args) or 0)


def _guarded(command) -> int:
    """Run a command; the library's errors become one line and their exit code."""
    try:
        return command()
    except ReleaseGateError as exc:
        print(f"release-gate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("release-gate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
