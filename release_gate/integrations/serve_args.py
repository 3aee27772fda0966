"""``release-gate serve-args``: the serving gate for a vLLM server started without runtime LoRA updating.

vLLM consults LoRA resolvers only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, a development-only flag
that also opens ``/v1/load_lora_adapter`` (which bypasses every resolver) and that vLLM refuses with
more than one API server. Instead, every entry of a release directory is verified now (the gate's
signature over every file, schema, PROMOTE, the sha256 of the files, the base model), copied to a
staging directory and verified again there, and the copies become vLLM's ``--lora-modules``: the
server serves exactly those bytes, and its load endpoint does not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..files import SEGMENT_RULE, is_path_segment
from .releases import Trust, check_release, stage


@dataclass(frozen=True)
class Verdict:
    """One release entry: approved with the path vLLM should load, or refused with the reason."""

    name: str
    path: Path | None
    reason: str


def verify(release_dir: Path, base_model: str | None, trust: Trust, staging: Path | None) -> list[Verdict]:
    """Every entry of ``release_dir``, in name order; approved ones copied into ``staging`` (None: served in place).

    A staged copy is verified again, so files changed after the first check never reach the server.
    """
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise BadInput(f"{release_dir}: release directory not found")
    verdicts = []
    for entry in sorted(release_dir.iterdir(), key=lambda p: p.name):
        if not entry.is_dir():
            continue
        if not is_path_segment(entry.name):
            verdicts.append(Verdict(entry.name, None, f"unsafe name ({SEGMENT_RULE})"))
            continue
        adapter_dir, reason = check_release(entry, base_model, trust)
        if adapter_dir is not None and staging is not None:
            adapter_dir, reason = check_release(stage(entry, adapter_dir, staging / entry.name), base_model, trust)
        verdicts.append(Verdict(entry.name, adapter_dir, reason))
    return verdicts


def lora_modules(verdicts: list[Verdict], base_model: str | None) -> list[str]:
    """vLLM's ``--lora-modules`` values (compact JSON, one per approved release; vLLM takes no other keys)."""
    modules = []
    for verdict in verdicts:
        if verdict.path is None:
            continue
        module = {"name": verdict.name, "path": str(verdict.path.resolve())}
        if base_model:
            module["base_model_name"] = base_model
        modules.append(json.dumps(module, separators=(",", ":"), ensure_ascii=False))
    return modules
