"""Release directories: which adapters the gate approved and signed, checked against the files as they are now.

Shared by the two serving paths: the vLLM resolver plugin (:mod:`.vllm_resolver`, consulted at request
time) and ``release-gate serve-args`` (:mod:`.serve_args`, a static ``--lora-modules`` list for a
server started without vLLM's runtime-updating flag). One release entry is a gate run directory copied
as-is, or a flat folder::

    RELEASE_DIR/<name>/decision.json
    RELEASE_DIR/<name>/promoted/adapter_config.json, adapter_model.safetensors, decision.json, release.sig, …
      (or all of them directly in RELEASE_DIR/<name>/)

An entry is approved only when the folder holding the adapter carries a signature (:mod:`.signing`) that
the configured public key verifies over every file in it, the decision inside it is a current-schema
PROMOTE whose ``promoted.sha256`` equals the hash of the adapter files, any ``decision.json`` beside
``promoted/`` agrees with it, and the adapter is for the base model the server runs. Unsigned releases
pass only with an explicit opt-out (:class:`Trust`), named in every reason given for them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..assets import public_model_id
from ..document import DecisionDocument, Promoted, first_error
from ..errors import BadInput
from ..files import atomic_directory, directory_sha256, is_path_segment
from ..schema import DECISION_FILE, PROMOTED_DIR, SCHEMA_VERSION
from ..surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE
from .signing import check_public_key, is_signed, verification_failure

#: The files the adapter content hash covers, as the gate computes it for ``promoted.sha256``.
ADAPTER_FILES = (CONFIG_FILE, SAFETENSORS_FILE)
default_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trust:
    """Who vouches for a release: the holder of ``public_key``'s private half, or nobody by explicit choice.

    ``allow_unsigned`` is how the user opted out (``--allow-unsigned``, an environment variable); it is
    written into every reason given for a release served without a verified signature. A bad signature
    is refused whenever a public key is configured; the opt-out covers only the absence of one.
    """

    public_key: Path | None = None
    allow_unsigned: str | None = None

    def __post_init__(self) -> None:
        if self.public_key is None and self.allow_unsigned is None:
            raise BadInput("no public key to verify releases with (give the gate's public key, or opt out of "
                           "signatures explicitly to serve unsigned releases)")
        if self.public_key is not None:
            check_public_key(self.public_key)


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can only ever name a direct child of the release directory (one rule: :mod:`..files`)."""
    return is_path_segment(name)


def check_release(entry_dir: Path, base_model: str | None, trust: Trust,
                  logger: logging.Logger = default_logger) -> tuple[Path | None, str]:
    """The adapter folder of a release entry if the gate approved and signed exactly these files, and why.

    Returns ``(adapter_dir, "PROMOTE (sha256 …), signature verified")`` when every check of the module
    docstring passes (or the unsigned variant naming the opt-out); otherwise ``(None, reason)``.
    """
    entry_dir = Path(entry_dir)
    if not entry_dir.is_dir():
        return None, f"no release entry {entry_dir}"
    try:
        return _check(entry_dir, base_model, trust, logger)
    except OSError as exc:
        return None, f"unreadable release entry: {exc}"


def _check(entry_dir: Path, base_model: str | None, trust: Trust,
           logger: logging.Logger) -> tuple[Path | None, str]:
    """:func:`check_release` on an existing entry, in the order that names the first thing wrong."""
    adapter_dir = _adapter_dir(entry_dir)
    outer = None
    if adapter_dir != entry_dir and ((entry_dir / DECISION_FILE).exists() or adapter_dir is None):
        outer, reason = _read_decision(entry_dir)  # a later REJECT beside a stale promoted/ refuses it too
        if outer is None:
            return None, reason
    if adapter_dir is None:
        return None, f"no adapter files ({', '.join(ADAPTER_FILES)}) in {PROMOTED_DIR}/ or beside {DECISION_FILE}"
    failure, signed = _signature(adapter_dir, trust)
    if failure is not None:
        return None, failure
    inner = None
    if (adapter_dir / DECISION_FILE).exists() or signed:
        inner, reason = _read_decision(adapter_dir)
        if inner is None:
            return None, reason if adapter_dir == entry_dir else f"{PROMOTED_DIR}/{reason}"
    decision = inner or outer
    if decision is None:
        return None, f"no {DECISION_FILE}"
    expected = decision.sha256
    if outer is not None and outer.sha256 != expected:
        return None, (f"{DECISION_FILE} beside {PROMOTED_DIR}/ names sha256 {outer.sha256}, "
                      f"the one inside names {expected}")
    actual = directory_sha256(adapter_dir, ADAPTER_FILES)
    if actual != expected:
        return None, f"sha256 mismatch: decision says {expected}, files hash to {actual}"
    mismatch = _base_model_mismatch(adapter_dir, base_model, logger)
    if mismatch is not None:
        return None, mismatch
    return adapter_dir, f"PROMOTE (sha256 {actual}), {signed or _unsigned(trust)}"


def _signature(adapter_dir: Path, trust: Trust) -> tuple[str | None, str | None]:
    """``(why refused, None)``, ``(None, "signature verified")``, or ``(None, None)`` for an allowed unsigned one."""
    if trust.public_key is None:
        return None, None
    if not is_signed(adapter_dir) and trust.allow_unsigned is not None:
        return None, None
    failure = verification_failure(adapter_dir, trust.public_key)
    if failure is not None and not is_signed(adapter_dir):
        failure += " (the gate signs only with release.signing_key; serving it anyway needs an explicit opt-out)"
    return failure, "signature verified" if failure is None else None


def _unsigned(trust: Trust) -> str:
    """The reason's tail for a release served without a verified signature: the opt-out, by name."""
    what = "UNSIGNED" if trust.public_key is not None else "UNVERIFIED (no public key)"
    return f"{what}: served only because of {trust.allow_unsigned}"


def _read_decision(entry_dir: Path) -> tuple[Promoted | None, str]:
    """What a current-schema PROMOTE decision promoted (arm, sha256), or the reason there is none."""
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
    try:
        document = DecisionDocument.model_validate(decision)
    except ValidationError as exc:
        return None, f"{DECISION_FILE} does not follow its schema: {first_error(exc)}"
    if document.promoted is None:
        return None, f"outcome {document.outcome}"
    return document.promoted, "PROMOTE"


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
    """The same model id, the public id of the served folder (variants name their base by it), or two
    spellings of the same local folder."""
    if named in (served, public_model_id(served)):
        return True
    first, second = Path(named).expanduser(), Path(served).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def stage(entry_dir: Path, adapter_dir: Path, target: Path) -> Path:
    """A flat copy of what was checked as ``target``: a signed folder whole, else the decision and adapter files.

    ``target`` is replaced as a whole (nothing of an earlier copy stays); the copy is checked again by the
    caller, so what a server reads is what was verified.
    """
    with atomic_directory(target) as tmp:
        if is_signed(adapter_dir):
            names = [p.name for p in sorted(adapter_dir.iterdir()) if p.is_file()]
        else:
            decision = adapter_dir if (adapter_dir / DECISION_FILE).is_file() else entry_dir
            shutil.copyfile(decision / DECISION_FILE, tmp / DECISION_FILE)
            names = list(ADAPTER_FILES)
        for name in names:
            shutil.copyfile(adapter_dir / name, tmp / name)
    return target
