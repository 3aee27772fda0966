"""``manifest.json``: what was built and verified, so that a later fetch or load only stats files.

An asset enters the manifest only after it was verified, so an interrupted fetch never leaves
something that looks complete. Checking a cached product reads the manifest and stats its files (size
and mtime); a file whose mtime moved is re-hashed, one whose size changed is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import file_sha256, write_text_atomic
from .catalog import Spec

#: Bump when the layout of ``manifest.json`` changes; older manifests are ignored.
_FORMAT = 1
_NAME = "manifest.json"


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, or an empty one when it is absent, unreadable or of an old format."""
    try:
        data = json.loads((root / _NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {"format": _FORMAT, "assets": {}}
    if not isinstance(data.get("assets"), dict):
        data["assets"] = {}
    return data


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(root / _NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def asset_state(root: Path, spec: Spec, manifest: dict[str, Any], *, refresh: bool = False) -> str:
    """``"ok"``, ``"missing"`` or a few words on what is wrong with the cached product.

    Cheap by design: it stats files. Only a file whose size matches but whose mtime moved is re-hashed
    (someone touched or copied it); with ``refresh`` a file that still hashes right gets its new mtime
    written into ``manifest``.
    """
    entry = manifest["assets"].get(spec.name)
    if not isinstance(entry, dict) or entry.get("recipe") != spec.recipe:
        return "missing"
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        return "missing"
    for rel, rec in files.items():
        if not isinstance(rec, dict) or not {"sha256", "size", "mtime_ns"} <= rec.keys():
            return "missing"
        path = root / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != rec["size"]:
            return f"{rel} has {st.st_size} bytes, expected {rec['size']}"
        if st.st_mtime_ns != rec["mtime_ns"]:
            if file_sha256(path) != rec["sha256"]:
                return f"{rel} does not match its recorded sha256"
            if refresh:
                rec["mtime_ns"] = st.st_mtime_ns
    return "ok"


def record(root: Path, spec: Spec) -> dict[str, Any]:
    """Manifest entry for a freshly built product: hash every file it consists of."""
    out = root / spec.output
    paths = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
    files = {}
    for path in paths:
        st = path.stat()
        files[path.relative_to(root).as_posix()] = {
            "sha256": file_sha256(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    return {"recipe": spec.recipe, "files": files}
