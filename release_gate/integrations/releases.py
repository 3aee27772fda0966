"""Release directories: which adapters the gate approved, checked against the files as they are now.

Shared by the two serving paths: the vLLM resolver plugin (:mod:`.vllm_resolver`, consulted at request
time) and ``release-gate serve-args`` (:mod:`.serve_args`, a static ``--lora-modules`` list for a
server started without vLLM's runtime-updating flag). One release entry is a gate run directory copied
as-is, or a flat folder::

    RELEASE_DIR/<name>/decision.json
    RELEASE_DIR/<name>/promoted/adapter_config.json, adapter_model.safetensors
      (or both files directly beside decision.json)

An entry is approved only when ``decision.json`` is a current-schema PROMOTE whose ``promoted.sha256``
equals the hash of the adapter files computed now, for the base model the server runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..files import directory_sha256, is_path_segment
from ..schema import DECISION_FILE, PROMOTED_DIR, SCHEMA_VERSION, Outcome
from ..surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE

#: The files the adapter content hash covers, as the gate computes it for ``promoted.sha256``.
ADAPTER_FILES = (CONFIG_FILE, SAFETENSORS_FILE)
default_logger = logging.getLogger(__name__)


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can only ever name a direct child of the release directory (one rule: :mod:`..files`)."""
    return is_path_segment(name)


def check_release(entry_dir: Path, base_model: str | None = None,
                  logger: logging.Logger = default_logger) -> tuple[Path | None, str]:
    """The adapter folder of a release entry if the gate approved exactly these files, and why.

    Returns ``(adapter_dir, "PROMOTE (sha256 …)")`` when ``decision.json`` is a current-schema PROMOTE
    whose ``promoted.sha256`` equals the hash of the adapter files computed now and the adapter
    is for ``base_model`` (when both are known); otherwise ``(None, reason)``.
    """
    try:
        decision, reason = _read_decision(Path(entry_dir))
    except OSError as exc:
        return None, f"unreadable release entry: {exc}"
    if decision is None:
        return None, reason
    adapter_dir = _adapter_dir(Path(entry_dir))
    if adapter_dir is None:
        return None, f"no adapter files ({', '.join(ADAPTER_FILES)}) in {PROMOTED_DIR}/ or beside {DECISION_FILE}"
    expected = decision["promoted"]["sha256"]
    actual = directory_sha256(adapter_dir, ADAPTER_FILES)
    if actual != expected:
        return None, f"sha256 mismatch: decision says {expected}, files hash to {actual}"
    mismatch = _base_model_mismatch(adapter_dir, base_model, logger)
    if mismatch is not None:
        return None, mismatch
    return adapter_dir, f"PROMOTE (sha256 {actual})"


def _read_decision(entry_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """A current-schema PROMOTE decision naming a promoted sha256, or the reason there is none."""
    if not entry_dir.is_dir():
        return None, f"no release entry {entry_dir}"
    path = entry_dir / DECISION_FILE
    if not path.is_file():
        return None, f"no {DECISION_FILE}"
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable {DECISION_FILE}: {exc}"
    if not isinstance(decision, dict):
        return None, f"{DECISION_FILE} is not a JSON object"
    if decision.get("schema_version") != SCHEMA_VERSION:
        return None, (f"{DECISION_FILE} schema_version {decision.get('schema_version')!r} is not {SCHEMA_VERSION} "
                      "(decisions of release-gate 0.1 are not served: run the gate again)")
    if decision.get("outcome") != Outcome.PROMOTE:
        return None, f"outcome {decision.get('outcome')}"
    promoted = decision.get("promoted")
    if not isinstance(promoted, dict) or not isinstance(promoted.get("sha256"), str):
        return None, f"PROMOTE {DECISION_FILE} names no promoted.sha256"
    return decision, "PROMOTE"


def _adapter_dir(entry_dir: Path) -> Path | None:
    """``promoted/`` (a published run directory) or the entry itself (flat form), whichever is complete."""
    for candidate in (entry_dir / PROMOTED_DIR, entry_dir):
        if all((candidate / name).is_file() for name in ADAPTER_FILES):
            return candidate
    return None


def _base_model_mismatch(adapter_dir: Path, base_model: str | None, logger: logging.Logger) -> str | None:
    """Why the adapter cannot serve on ``base_model``, or None; an unnamed base only warns."""
    try:
        named = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable {CONFIG_FILE}: {exc}"
    if not named or not base_model:
        logger.warning("release-gate: cannot check that %s is for base model %s (%s names none)",
                       adapter_dir, base_model, "the server" if named else CONFIG_FILE)
        return None
    if _same_model(named, base_model):
        return None
    return f"base model mismatch: adapter is for {named}, server runs {base_model}"


def _same_model(named: str, served: str) -> bool:
    """The same model id, or two spellings of the same local folder."""
    if named == served:
        return True
    first, second = Path(named).expanduser(), Path(served).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()




def stage(entry_dir: Path, adapter_dir: Path, target: Path) -> Path:
    """A flat copy of the decision and the hashed adapter files (nothing else) in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry_dir / DECISION_FILE, target / DECISION_FILE)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter_dir / name, target / name)
    return target
