"""``release-gate lm-eval ARGS…``: lm-eval's own CLI, every flag, with the release-gate backend registered.

``--model release-gate --model_args pretrained=BASE,lora=A,lora=B …`` evaluates several adapters on
one vLLM engine: lm-eval runs once per adapter (each ``--output_path`` gets a sub-directory named after
the adapter), and the backend sizes one engine for all of them and shares it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import EPILOG

NAME = "lm-eval"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Listed in ``--help``; its arguments are lm-eval's (``main`` hands them over before argparse)."""
    sub.add_parser(NAME, help="lm-eval's CLI with the release-gate backend (--model release-gate)", add_help=False,
                   description="Run `lm_eval` with every flag it has; `--model release-gate` evaluates one or more "
                   "adapters (lora=… repeated) on one vLLM engine. `release-gate lm-eval --help` shows lm-eval's "
                   "own help.", epilog=EPILOG)


def run(args: Sequence[str]) -> int:
    """Run lm-eval's CLI on ``args``, once per adapter when ``lora=`` is repeated in the release-gate model_args."""
    from lm_eval.__main__ import cli_evaluate

    from ..evaluation import backend  # noqa: F401  (registers --model release-gate)

    saved = sys.argv
    try:
        for argv in per_adapter(list(args)):
            sys.argv = ["lm-eval", *argv]
            cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def per_adapter(args: list[str]) -> list[list[str]]:
    """``args`` as they are, or one copy per ``lora=`` value with ``adapters=`` naming them all."""
    model = _value(args, "--model")
    model_args = _value(args, "--model_args")
    if model != "release-gate" or model_args is None:
        return [args]
    parts = [p for p in model_args.split(",") if p]
    adapters = [p.split("=", 1)[1] for p in parts if p.startswith("lora=")]
    if len(adapters) < 2:
        return [args]
    rest = [p for p in parts if not p.startswith("lora=")]
    output = _value(args, "--output_path")
    runs = []
    for adapter in adapters:
        argv = _replace(args, "--model_args", ",".join([*rest, f"lora={adapter}", f"adapters={'|'.join(adapters)}"]))
        if output is not None:
            argv = _replace(argv, "--output_path", str(Path(output) / Path(adapter).name))
        runs.append(argv)
    return runs


def _value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(f"{flag}="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag, value]
