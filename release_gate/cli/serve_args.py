"""``release-gate serve-args RELEASE_DIR``: verified releases as vLLM ``--lora-modules`` arguments."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ..errors import BadInput
from .common import EPILOG

#: The opt-out, as written into every line printed for a release served without a verified signature.
OPT_OUT = "--allow-unsigned"


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve-args", help="verify every release and print vLLM's --lora-modules for them",
        description="Verify every entry of RELEASE_DIR (the gate's signature over every file of the release "
        "verifies with --public-key, its decision.json is a current PROMOTE, the adapter files hash to its "
        "promoted.sha256, the adapter is for --base-model), copy the approved ones to a staging directory, verify "
        "the copies again, and print the --lora-modules arguments that make `vllm serve` serve exactly those "
        "bytes, with no VLLM_ALLOW_RUNTIME_LORA_UPDATING (so /v1/load_lora_adapter does not exist). Refused "
        "entries are listed on stderr with the reason. Example: vllm serve MODEL --enable-lora "
        "$(release-gate serve-args releases/ --public-key gate.pub --base-model MODEL --stage /srv/loras)",
        epilog=EPILOG + " Exit 2 also when no release is approved.",
    )
    serve.add_argument("release_dir", type=Path, help="directory of releases: RELEASE_DIR/<name>/decision.json …")
    serve.add_argument("--public-key", type=Path, help="the gate's public key (PEM, elliptic curve): only releases "
                       "it verifies are served")
    serve.add_argument(OPT_OUT, action="store_true", help="also serve releases that carry no signature (every "
                       "line printed for them says so); without --public-key nothing is verified at all")
    serve.add_argument("--base-model", help="the model the server runs (its --model, or --served-model-name); "
                       "adapters for another base model are refused")
    serve.add_argument("--stage", type=Path, help="where the verified copies go (default: a new directory under "
                       "the system temp dir, printed on stderr); the server reads these copies, so later edits of "
                       "the release directory cannot reach it")
    serve.add_argument("--json", action="store_true", help="print {name, path, base_model_name} objects as a JSON "
                       "list instead of shell arguments")
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.releases import Trust
    from ..integrations.serve_args import lora_modules, verify

    if args.public_key is None and not args.allow_unsigned:
        raise BadInput(f"serve-args: give --public-key (the gate's public key) or opt out of signatures "
                       f"explicitly with {OPT_OUT}")
    trust = Trust(args.public_key, OPT_OUT if args.allow_unsigned else None)
    mark = f" [{OPT_OUT}: signatures not required]" if args.allow_unsigned else ""
    staging = args.stage or Path(tempfile.mkdtemp(prefix="release-gate-served-"))
    verdicts = verify(args.release_dir, args.base_model, trust, staging)
    for verdict in verdicts:
        if verdict.path is None:
            print(f"release-gate{mark}: refused {verdict.name!r}: {verdict.reason}", file=sys.stderr)
        else:
            print(f"release-gate{mark}: serving {verdict.name!r} from {verdict.path}: {verdict.reason}",
                  file=sys.stderr)
    modules = lora_modules(verdicts, args.base_model)
    if not modules:
        raise BadInput(f"{args.release_dir}: no release is approved ({len(verdicts)} entries refused)")
    if args.json:
        opt_out = {"opt_out": OPT_OUT} if args.allow_unsigned else {}
        print(json.dumps([{**json.loads(m), **opt_out} for m in modules], indent=1))
        return 0
    if any(set(m) & set(" \t\n*?[") for m in modules):
        print(f"release-gate{mark}: a path has spaces or glob characters: word splitting of $(release-gate "
              "serve-args …) would break it; use --stage with a plain directory, or --json", file=sys.stderr)
    print(" ".join(["--lora-modules", *modules]))
    return 0
