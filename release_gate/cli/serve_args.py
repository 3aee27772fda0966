"""``release-gate serve-args RELEASE_DIR``: verified releases as vLLM ``--lora-modules`` arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BadInput
from .common import EPILOG


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve-args", help="verify every release and print vLLM's --lora-modules for them",
        description="Verify every entry of RELEASE_DIR (decision.json is a current PROMOTE, the adapter files "
        "hash to its promoted.sha256, the adapter is for --base-model) and print the --lora-modules "
        "arguments that make `vllm serve` serve exactly the approved adapters, with no "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING (so /v1/load_lora_adapter does not exist). Refused entries are "
        "listed on stderr with the reason. Example: "
        "vllm serve MODEL --enable-lora $(release-gate serve-args releases/ --base-model MODEL --stage /srv/loras)",
        epilog=EPILOG + " Exit 2 also when no release is approved.",
    )
    serve.add_argument("release_dir", type=Path, help="directory of releases: RELEASE_DIR/<name>/decision.json …")
    serve.add_argument("--base-model", help="the model the server runs (its --model, or --served-model-name); "
                       "adapters for another base model are refused")
    serve.add_argument("--stage", type=Path, help="copy the approved files here and serve the copies (verified "
                       "again), so later edits of the release directory cannot reach the server")
    serve.add_argument("--json", action="store_true", help="print {name, path, base_model_name} objects as a JSON "
                       "list instead of shell arguments")
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.serve_args import lora_modules, verify

    verdicts = verify(args.release_dir, args.base_model, args.stage)
    for verdict in verdicts:
        if verdict.path is None:
            print(f"release-gate: refused {verdict.name!r}: {verdict.reason}", file=sys.stderr)
    modules = lora_modules(verdicts, args.base_model)
    if not modules:
        raise BadInput(f"{args.release_dir}: no release is approved ({len(verdicts)} entries refused)")
    if args.json:
        print(json.dumps([json.loads(m) for m in modules], indent=1))
        return 0
    if any(set(m) & set(" \t\n*?[") for m in modules):
        print("release-gate: a path has spaces or glob characters: word splitting of $(release-gate serve-args …) "
              "would break it; use --stage with a plain directory, or --json", file=sys.stderr)
    print(" ".join(["--lora-modules", *modules]))
    return 0
