"""Policies as data: ``policies/*.yaml`` files → :class:`~.policies.Policy` objects.

A policy file has ``name``, ``kind`` (a registered kind), an optional
``description`` and ``params``. Users add a policy by adding a file (or a
directory of them) and override parameters per run; precedence is
kind defaults < policy file < overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..yamlio import load_mapping
from .policies import InvalidParameter, Policy, build_policy

POLICY_FILE_KEYS = {"name", "kind", "description", "params"}


def builtin_policy_dir() -> Path:
    """The shipped ``policies/`` directory (repo checkout or installed wheel)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "policies", package.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the built-in policies/ directory is missing from the installation")


@dataclass(frozen=True)
class PolicyFile:
    """One parsed policy file (validated on :meth:`build`)."""

    name: str
    kind: str
    params: dict[str, Any]
    source: Path
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, overrides: dict[str, Any] | None = None, origin: str = "") -> Policy:
        """The policy with ``overrides`` applied; errors name the key and file."""
        merged = {**self.params, **(overrides or {})}
        try:
            return build_policy(self.kind, merged, name=self.name)
        except InvalidParameter as exc:
            blamed = {exc.key, *exc.related} & set(overrides or {})
            where = origin if blamed and origin else str(self.source)
            raise BadInput(f"{where}: policy {self.name!r}, key {exc.key!r}: {exc.message}") from None


def read_policy_file(path: Path) -> PolicyFile:
    data = load_mapping(path)
    unknown = sorted(set(data) - POLICY_FILE_KEYS)
    if unknown:
        raise BadInput(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(POLICY_FILE_KEYS))})")
    for key in ("name", "kind"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise BadInput(f"{path}: key {key!r} is required and must be a string")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise BadInput(f"{path}: key 'params' must be a mapping")
    policy_file = PolicyFile(
        name=data["name"], kind=data["kind"], params=params, source=Path(path),
        description=str(data.get("description", "")),
    )
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
