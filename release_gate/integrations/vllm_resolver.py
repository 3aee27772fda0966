"""vLLM LoRA resolver plugin: the gate enforced at serving time.

When a request names a model the server does not know, vLLM (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) asks its registered LoRA resolvers
for an adapter of that name. This resolver looks in
``$RELEASE_GATE_RELEASE_DIR/<name>/`` and serves the adapter only when a
PROMOTE ``decision.json`` stands beside it whose ``promoted.sha256`` matches the
adapter files as they are now. Anything else is refused (the client gets vLLM's
404 "model does not exist") and the reason is logged at WARNING.

One release entry is a gate run directory copied as-is, or a flat folder::

    RELEASE_DIR/<name>/decision.json
    RELEASE_DIR/<name>/promoted/adapter_config.json, adapter_model.safetensors
      (or both files directly beside decision.json)

An approved adapter is served from a private copy that is checked again, so
files edited after the check, or extra files beside them, never reach the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import vllm.envs as envs
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from ..gate.outputs import SCHEMA_VERSION
from ..surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE, directory_sha256

#: The environment variable naming the release directory; the plugin is inert without it.
RELEASE_DIR_ENV = "RELEASE_GATE_RELEASE_DIR"
RESOLVER_NAME = "release-gate"
DECISION_FILE = "decision.json"
PROMOTED_DIR = "promoted"
#: The files the adapter content hash covers, as the gate computes it for ``promoted.sha256``.
ADAPTER_FILES = (CONFIG_FILE, SAFETENSORS_FILE)
# One path component a user can read in a log: no separators, no "." or "..", no hidden names.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")

# A child of vLLM's logger, so refusals appear in the server log in vLLM's format and obey
# VLLM_LOGGING_LEVEL / VLLM_CONFIGURE_LOGGING (vLLM's handler is on "vllm" and stops propagation).
logger = logging.getLogger("vllm.release_gate")


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can only ever name a direct child of the release directory."""
    return _SAFE_NAME.fullmatch(name) is not None


def check_release(entry_dir: Path, base_model: str | None = None) -> tuple[Path | None, str]:
    """The adapter folder of a release entry if the gate approved exactly these files, and why.

    Returns ``(adapter_dir, "PROMOTE (sha256 …)")`` when ``decision.json`` is a schema-1 PROMOTE
    whose ``promoted.sha256`` equals the hash of the adapter files computed now and the adapter
    is for ``base_model`` (when both are known); otherwise ``(None, reason)``.
    """
    decision, reason = _read_decision(Path(entry_dir))
    if decision is None:
        return None, reason
    adapter_dir = _adapter_dir(Path(entry_dir))
    if adapter_dir is None:
        return None, f"no adapter files ({', '.join(ADAPTER_FILES)}) in {PROMOTED_DIR}/ or beside {DECISION_FILE}"
    expected = decision["promoted"]["sha256"]
    actual = directory_sha256(adapter_dir, ADAPTER_FILES)
    if actual != expected:
        return None, f"sha256 mismatch: decision says {expected}, files hash to {actual}"
    mismatch = _base_model_mismatch(adapter_dir, base_model)
    if mismatch is not None:
        return None, mismatch
    return adapter_dir, f"PROMOTE (sha256 {actual})"


def _read_decision(entry_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """A schema-1 PROMOTE decision naming a promoted sha256, or the reason there is none."""
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
    if decision.get("outcome") != "PROMOTE":
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


def _base_model_mismatch(adapter_dir: Path, base_model: str | None) -> str | None:
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


class ReleaseGateResolver(LoRAResolver):
    """Serves ``RELEASE_DIR/<name>`` for an unknown model name only when :func:`check_release` approves."""

    def __init__(self, release_dir: Path) -> None:
        self.release_dir = release_dir
        self._staging: tempfile.TemporaryDirectory | None = None
        self._staging_lock = threading.Lock()
        self._warned_about_others = False

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        """vLLM's hook; hashing and copying run in a thread to keep the event loop serving."""
        return await asyncio.to_thread(self.resolve, base_model_name, lora_name)

    def resolve(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        """A request for the approved private copy of ``lora_name``, or None (logged) when refused."""
        self._warn_about_other_resolvers()
        if not is_safe_name(lora_name):
            return _refuse(lora_name, "unsafe name (letters, digits and '._+-' only, not starting with '.')")
        entry_dir = self.release_dir / lora_name
        adapter_dir, reason = check_release(entry_dir, base_model_name)
        if adapter_dir is None:
            return _refuse(lora_name, reason)
        try:
            staged = self._stage(entry_dir, adapter_dir)
        except OSError as exc:
            return _refuse(lora_name, f"could not copy the approved files: {exc}")
        served_dir, reason = check_release(staged, base_model_name)
        if served_dir is None:
            return _refuse(lora_name, f"files changed while being copied: {reason}")
        logger.info("release-gate: serving LoRA adapter %r from %s (%s)", lora_name, adapter_dir, reason)
        # lora_int_id is a placeholder: vLLM assigns its own id to every resolved adapter.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(served_dir))

    def _stage(self, entry_dir: Path, adapter_dir: Path) -> Path:
        """A private flat copy of the decision and the hashed adapter files (nothing else).

        vLLM re-reads ``lora_path`` after evicting an adapter, so copies live as long as the resolver
        (removed at interpreter exit). Created on first use: vLLM registers the resolver in every
        process, but only the API server resolves.
        """
        with self._staging_lock:
            if self._staging is None:
                self._staging = tempfile.TemporaryDirectory(prefix="release-gate-served-")
        target = Path(tempfile.mkdtemp(prefix=f"{entry_dir.name}-", dir=self._staging.name))
        shutil.copyfile(entry_dir / DECISION_FILE, target / DECISION_FILE)
        for name in ADAPTER_FILES:
            shutil.copyfile(adapter_dir / name, target / name)
        return target

    def _warn_about_other_resolvers(self) -> None:
        """Once: vLLM tries every resolver, so another one can serve what this gate refuses."""
        if self._warned_about_others:
            return
        self._warned_about_others = True
        others = sorted(set(LoRAResolverRegistry.get_supported_resolvers()) - {RESOLVER_NAME})
        if others:
            logger.warning("release-gate: other LoRA resolvers are active (%s) and may serve adapters this gate "
                           "refuses; set VLLM_PLUGINS=release_gate_resolver to load only the gate", ", ".join(others))


def _refuse(lora_name: str, reason: str) -> None:
    """Log a refusal with its reason; vLLM then answers that the model does not exist."""
    logger.warning("release-gate refused LoRA adapter %r: %s", lora_name, reason)


def register() -> None:
    """The ``vllm.general_plugins`` entry point, run once in every vLLM process.

    Inert unless ``RELEASE_GATE_RELEASE_DIR`` is set, so installing release-gate never changes an
    unrelated vLLM server; a set but missing directory stops the server rather than serving ungated.
    """
    value = os.environ.get(RELEASE_DIR_ENV)
    if not value:
        return
    release_dir = Path(value).expanduser()
    if not release_dir.is_dir():
        raise ValueError(f"{RELEASE_DIR_ENV}={value} is not a directory: the release-gate LoRA resolver needs one")
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, ReleaseGateResolver(release_dir))
    logger.info("release-gate: LoRA resolver active; serving adapters from %s only with a PROMOTE %s "
                "whose sha256 matches", release_dir, DECISION_FILE)
    if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
        logger.warning("release-gate: VLLM_ALLOW_RUNTIME_LORA_UPDATING is not set, so vLLM never asks LoRA "
                       "resolvers and no adapter from %s will be served", release_dir)
