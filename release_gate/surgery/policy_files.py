"""Policies as data: ``policies/*.yaml`` files → :class:`~.policies.Policy` models.

A policy file has ``name``, ``kind`` (a registered kind), an optional
``description`` and ``params``. Parameter defaults live on the policy models
(:mod:`.policies`), once; a file states only what differs from them, and a
run config may override parameters again: precedence is kind defaults <
policy file < overrides. Third-party packages add kinds through the
``release_gate.policies`` entry-point group (loading the entry point
registers the kind).
"""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from ..errors import BadInput
from ..validation import Name, Section, Text, validate
from ..yamlio import load_document
from .policies import InvalidParameter, Policy, build_policy

ENTRY_POINT_GROUP = "release_gate.policies"


def builtin_policy_dir() -> Path:
    """The shipped ``policies/`` directory (repo checkout or installed wheel)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "policies", package.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the built-in policies/ directory is missing from the installation")


@functools.cache
def load_plugin_kinds() -> tuple[str, ...]:
    """Import every ``release_gate.policies`` entry point once (each registers its policy kind)."""
    loaded = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
        loaded.append(entry_point.name)
    return tuple(loaded)


class PolicyFile(Section):
    """One policy file, validated at load (parameters are checked when the policy is built)."""

    name: Name
    kind: Text
    description: Text = ""
    params: dict[str, Any] = {}
    _source: Path = PrivateAttr(default=Path())

    @property
    def source(self) -> Path:
        return self._source

    def build(self, overrides: dict[str, Any] | None = None, origin: str = "") -> Policy:
        """The policy with ``overrides`` applied; errors name the key and the file (or the override's origin)."""
        merged = {**self.params, **(overrides or {})}
        try:
            return build_policy(self.kind, merged, name=self.name)
        except InvalidParameter as exc:
            blamed = {exc.key, *exc.related} & set(overrides or {})
            where = origin if blamed and origin else str(self.source)
            raise BadInput(f"{where}: policy {self.name!r}, key {exc.key!r}: {exc.message}") from None


def read_policy_file(path: Path) -> PolicyFile:
    policy_file = validate(PolicyFile, load_document(path))
    policy_file._source = Path(path)
    load_plugin_kinds()
    policy_file.build()  # validate eagerly so a broken file fails at load time
    return policy_file


def load_policy_files(extra_dirs: list[Path] | None = None) -> dict[str, PolicyFile]:
    """All policies by name: built-ins first, then user directories (which may override)."""
    found: dict[str, PolicyFile] = {}
    for directory in [builtin_policy_dir(), *(extra_dirs or [])]:
        directory = Path(directory)
        if not directory.is_dir():
            raise BadInput(f"{directory}: policy directory not found")
        for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            policy_file = read_policy_file(path)
            found[policy_file.name] = policy_file
    return found


def resolve_policy(
    ref: str, overrides: dict[str, Any] | None = None, extra_dirs: list[Path] | None = None,
    origin: str = "--set",
) -> Policy:
    """A policy by registered name, or by path to a policy YAML file."""
    path = Path(ref)
    if ref.endswith((".yaml", ".yml")) or path.is_file():
        return read_policy_file(path).build(overrides, origin)
    available = load_policy_files(extra_dirs)
    if ref not in available:
        raise BadInput(f"unknown policy {ref!r} (available: {', '.join(sorted(available))})")
    return available[ref].build(overrides, origin)
