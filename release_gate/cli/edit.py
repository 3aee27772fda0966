"""``release-gate edit``: one adapter, one policy, no evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BadInput, CalibrationMissing
from .common import CACHE_HELP, EPILOG, csv


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..surgery.edit import EditSettings

    defaults = EditSettings()
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
    edit.add_argument("--targets", help=f"comma-separated projections to edit (default {','.join(defaults.targets)})")
    edit.add_argument("--layers", help="comma-separated layer indices to edit (default: all)")
    edit.add_argument("--rebuild", choices=["gauge", "balanced"],
                      help=f"gauge: keep B bit-identical, rewrite A; balanced: √σ' split (default {defaults.rebuild})")
    edit.add_argument("--policy-dir", type=Path, action="append", default=[], help="extra directory of policy YAML files")
    edit.add_argument("--cache-dir", type=Path, help=CACHE_HELP)
    edit.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    edit.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32 or bfloat16")
    edit.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    edit.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..surgery.calibration import CalibrationConfig
    from ..surgery.edit import EditRequest, EditSettings, edit
    from ..validation import validate
    from ..yamlio import Document, apply_overrides

    overrides = apply_overrides({}, args.overrides)
    calibration_settings = overrides.pop("calibration", {})
    calibration = None
    if args.calibration is not None:
        calibration = validate(CalibrationConfig, Document(Path("--set"), {"file": args.calibration,
                                                                          **calibration_settings}), ("calibration",))
    elif calibration_settings:
        raise BadInput("--set calibration.*: given without --calibration FILE")
    settings = {"targets": csv(args.targets, "--targets") if args.targets else None,
                "layers": tuple(csv(args.layers, "--layers", int)) if args.layers else None, "rebuild": args.rebuild}
    request = EditRequest(
        base_model=args.base_model, adapter=args.adapter, policy=args.policy, out=args.out, calibration=calibration,
        overrides=overrides, settings=EditSettings(**{k: v for k, v in settings.items() if v is not None}),
        cache_dir=args.cache_dir, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
        policy_dirs=tuple(args.policy_dir), eval_data=tuple(args.eval_data),
    )
    try:
        out, variant = edit(request)
    except CalibrationMissing as exc:
        raise BadInput(f"{exc}: pass --calibration FILE") from None
    edited = sum(1 for e in variant.edits if not all(abs(a - 1.0) < 1e-12 for a in e.alpha))
    print(f"{variant.name}: edited {edited}/{len(variant.edits)} modules -> {out}")
    for note in variant.notes:
        print(f"  note: {note}")
    return 0
