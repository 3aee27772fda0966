"""Every file the project writes or reads back: atomic writes, JSONL, content hashes, locks, versions.

One implementation of each, used by every layer: a reader never sees a half-written file or
directory (write to a temporary name beside the target, fsync, rename), a cache key means the same
thing everywhere, and two processes sharing a cache serialize through the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import BadInput

# --- names that become paths ------------------------------------------------------------------------------

#: A user-given name (policy, arm, task, release) used as one path segment: ASCII letters, digits and
#: ``. _ - + @``, not starting with ``.`` or ``-``, at most 100 characters. No ``/``, ``..``, NUL, spaces,
#: markup or look-alike letters can pass, so a name can never reach outside its directory.
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@-]{0,99}")
SEGMENT_RULE = "ASCII letters, digits and . _ - + @, not starting with . or -, at most 100 characters"


def is_path_segment(name: object) -> bool:
    return isinstance(name, str) and PATH_SEGMENT.fullmatch(name) is not None and ".." not in name


def path_segment(name: str, what: str) -> str:
    """``name`` unchanged when it is safe as one path segment, else :class:`BadInput` (names are data)."""
    if not is_path_segment(name):
        raise BadInput(f"{what} {name!r} cannot name a file or directory: use {SEGMENT_RULE}")
    return name


def child(directory: Path, name: str, what: str) -> Path:
    """``directory / name`` for a user-given ``name`` checked by :func:`path_segment`."""
    return Path(directory) / path_segment(name, what)


# --- atomic writes ---------------------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``; elsewhere a set-and-restore).

    Atomic writers create through ``mkstemp``/``mkdtemp`` (mode 0600/0700 whatever the umask) and then
    give the result the mode a plain ``open``/``mkdir`` would have had, so outputs that other users'
    processes read (a web host, a vLLM server) are as readable as the umask allows, like any tool's.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and one rename.

    The file gets the mode ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, document: Any, indent: int | None = 1) -> Path:
    """JSON without NaN/Infinity (not JSON), non-ASCII kept readable."""
    return write_text_atomic(path, json.dumps(document, indent=indent, ensure_ascii=False, allow_nan=False))


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target`` at once.

    An existing ``target`` is renamed aside first and removed after the swap, so a reader sees the old
    directory or the new one, never a mixture; on any error the temporary directory is removed and
    ``target`` is left as it was. The directory gets the mode ``mkdir`` would give it (0777 less the
    umask), not ``mkdtemp``'s 0700.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        yield tmp
        move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(source: Path, target: Path) -> None:
    """Rename the finished file or directory ``source`` to ``target`` (same filesystem), replacing any old one.

    Its bytes are fsynced first, so after a crash ``target`` holds the old content or all of the new; an old
    directory is renamed aside and removed after the swap, so a reader never sees a mixture. This is what
    :func:`atomic_directory` does on success; called directly, it installs something built elsewhere on the
    same filesystem (the asset cache builds in a scratch folder of its own).
    """
    source, target = Path(source), Path(target)
    for path in (p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    old = _aside(target) if source.is_dir() else None
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_directory(target: Path) -> None:
    """Remove ``target`` so that it vanishes at once (rename aside, then delete)."""
    old = _aside(Path(target))
    if old is not None:
        shutil.rmtree(old)


def _aside(target: Path) -> Path | None:
    if not target.exists():
        return None
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    return old


# --- reading -------------------------------------------------------------------------------------------


def check_input_file(path: Path, what: str = "file") -> Path:
    """``path`` when it is a regular file this process can read; else BadInput naming it and the cause.

    Missing, a directory where a file should be, a broken symbolic link and a permission refused each get
    their own words (exit 2), where ``open`` would raise a traceback or a later reader a misleading error.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise BadInput(f"{path}: {what} is a broken symbolic link (to {os.readlink(path)})")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: {what} is a directory, not a file") from None
    except OSError as exc:
        raise BadInput(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    return path


def read_jsonl(path: Path) -> list[Any]:
    """The JSON values of a JSONL file's non-blank lines (``json.JSONDecodeError`` on a damaged line)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_jsonl_numbered(path: Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` of a user's JSONL file's non-blank lines; a damaged line is :class:`BadInput`."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
    return rows


def read_json(path: Path) -> Any | None:
    """A JSON file's value, or None when the file is absent."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --- content hashes --------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_sha256(path: Path, names: Iterable[str]) -> str:
    """A content hash over the named files of a directory (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        digest.update(file_sha256(Path(path) / name).encode())
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """:func:`directory_sha256` over every file below ``root``, named by its ``/``-separated relative path."""
    root = Path(root)
    return directory_sha256(root, [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()])


def content_key(payload: Any, length: int = 16) -> str:
    """A short, stable key for a JSON-serializable payload (sorted keys; ``str`` for the rest)."""
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# --- processes sharing files -----------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), released on exit or process death."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``names`` (``not installed`` for the missing), for provenance records."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
