"""vLLM LoRA resolver plugin: the gate enforced at serving time.

When a request names a model the server does not know, vLLM (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) asks its registered LoRA resolvers
for an adapter of that name. This resolver looks in
``$RELEASE_GATE_RELEASE_DIR/<name>/`` and serves the adapter only when the gate's
signature over the release verifies with ``$RELEASE_GATE_PUBLIC_KEY`` and the signed
PROMOTE ``decision.json`` names the sha256 of the adapter files as they are now.
Anything else is refused (the client gets vLLM's 404 "model does not exist") and
the reason is logged at WARNING. Unsigned releases are served only with
``RELEASE_GATE_ALLOW_UNSIGNED=1``, and every log line about them says so.

A release entry is checked by :func:`.releases.check_release`. An approved adapter is served from a private copy that is checked again, so
files edited after the check, or extra files beside them, never reach the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
from pathlib import Path

import vllm.envs as envs
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from ..errors import BadInput
from ..files import SEGMENT_RULE
from ..schema import DECISION_FILE
from .releases import Trust, check_release, is_safe_name, stage

#: The environment variable naming the release directory; the plugin is inert without it.
RELEASE_DIR_ENV = "RELEASE_GATE_RELEASE_DIR"
#: The gate's public key (PEM); releases it does not verify are refused.
PUBLIC_KEY_ENV = "RELEASE_GATE_PUBLIC_KEY"
#: ``1``: also serve releases that carry no signature (the explicit opt-out, named in every line about them).
ALLOW_UNSIGNED_ENV = "RELEASE_GATE_ALLOW_UNSIGNED"
RESOLVER_NAME = "release-gate"
# A child of vLLM's logger, so refusals appear in the server log in vLLM's format and obey
# VLLM_LOGGING_LEVEL / VLLM_CONFIGURE_LOGGING (vLLM's handler is on "vllm" and stops propagation).
logger = logging.getLogger("vllm.release_gate")


class ReleaseGateResolver(LoRAResolver):
    """Serves ``RELEASE_DIR/<name>`` for an unknown model name only when :func:`check_release` approves."""

    def __init__(self, release_dir: Path, trust: Trust) -> None:
        self.release_dir = release_dir
        self.trust = trust
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
            return self._refuse(lora_name, f"unsafe name ({SEGMENT_RULE})")
        entry_dir = self.release_dir / lora_name
        adapter_dir, reason = check_release(entry_dir, base_model_name, self.trust, logger)
        if adapter_dir is None:
            return self._refuse(lora_name, reason)
        try:
            staged = self._stage(entry_dir, adapter_dir)
        except OSError as exc:
            return self._refuse(lora_name, f"could not copy the approved files: {exc}")
        served_dir, reason = check_release(staged, base_model_name, self.trust, logger)
        if served_dir is None:
            return self._refuse(lora_name, f"files changed while being copied: {reason}")
        logger.info("release-gate: serving LoRA adapter %r from %s (%s)", lora_name, served_dir, reason)
        # lora_int_id is a placeholder: vLLM assigns its own id to every resolved adapter.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(served_dir))

    def _stage(self, entry_dir: Path, adapter_dir: Path) -> Path:
        """A private flat copy of what was checked (:func:`.releases.stage`), checked again before it is served.

        vLLM re-reads ``lora_path`` after evicting an adapter, so copies live as long as the resolver
        (removed at interpreter exit). Created on first use: vLLM registers the resolver in every
        process, but only the API server resolves.
        """
        with self._staging_lock:
            if self._staging is None:
                self._staging = tempfile.TemporaryDirectory(prefix="release-gate-served-")
        return stage(entry_dir, adapter_dir, Path(tempfile.mkdtemp(prefix=f"{entry_dir.name}-", dir=self._staging.name)))

    def _refuse(self, lora_name: str, reason: str) -> None:
        """Log a refusal with its reason (and the opt-out, when there is one); vLLM then answers 404."""
        opt_out = f" [{self.trust.allow_unsigned}: signatures not required]" if self.trust.allow_unsigned else ""
        logger.warning("release-gate refused LoRA adapter %r: %s%s", lora_name, reason, opt_out)

    def _warn_about_other_resolvers(self) -> None:
        """Once: vLLM tries every resolver, so another one can serve what this gate refuses."""
        if self._warned_about_others:
            return
        self._warned_about_others = True
        others = sorted(set(LoRAResolverRegistry.get_supported_resolvers()) - {RESOLVER_NAME})
        if others:
            logger.warning("release-gate: other LoRA resolvers are active (%s) and may serve adapters this gate "
                           "refuses; set VLLM_PLUGINS=release_gate_resolver to load only the gate", ", ".join(others))


def register() -> None:
    """The ``vllm.general_plugins`` entry point, run once in every vLLM process.

    Inert unless ``RELEASE_GATE_RELEASE_DIR`` is set, so installing release-gate never changes an
    unrelated vLLM server; a set but missing directory, or no usable public key and no explicit opt-out,
    stops the server rather than serving ungated.
    """
    value = os.environ.get(RELEASE_DIR_ENV)
    if not value:
        return
    release_dir = Path(value).expanduser()
    if not release_dir.is_dir():
        raise ValueError(f"{RELEASE_DIR_ENV}={value} is not a directory: the release-gate LoRA resolver needs one")
    key = os.environ.get(PUBLIC_KEY_ENV)
    opt_out = f"{ALLOW_UNSIGNED_ENV}=1" if os.environ.get(ALLOW_UNSIGNED_ENV) == "1" else None
    try:
        trust = Trust(Path(key).expanduser() if key else None, opt_out)
    except BadInput as exc:
        raise ValueError(f"release-gate LoRA resolver: {exc} (set {PUBLIC_KEY_ENV}, or {ALLOW_UNSIGNED_ENV}=1)") from None
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, ReleaseGateResolver(release_dir, trust))
    logger.info("release-gate: LoRA resolver active; serving adapters from %s only with a PROMOTE %s "
                "whose sha256 matches, %s", release_dir, DECISION_FILE,
                f"signed by the key in {key}" if key else "UNVERIFIED: signatures not checked")
    if opt_out:
        logger.warning("release-gate: %s: unsigned releases are served too", opt_out)
    if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
        logger.warning("release-gate: VLLM_ALLOW_RUNTIME_LORA_UPDATING is not set, so vLLM never asks LoRA "
                       "resolvers and no adapter from %s will be served", release_dir)
