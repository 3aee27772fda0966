"""release-gate: evaluation-gated release of LoRA adapters (Spectral Surgery, vLLM, lm-eval, exact tests).

The public API mirrors the CLI (:mod:`release_gate.api`): :func:`run`, :func:`edit`, :func:`inspect`,
:func:`report`, :func:`demo`, :func:`policies`, :func:`serve_args`, :func:`config_schema`,
:func:`decision_schema`; bad input raises :class:`BadInput`. They are imported on first use, so
``import release_gate`` stays light (no torch, vLLM or lm-eval).
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("release-gate")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["BadInput", "ReleaseGateError", "__version__", "config_schema", "decision_schema", "demo", "edit",
           "inspect", "policies", "report", "run", "serve_args"]


def __getattr__(name: str):
    if name in ("BadInput", "ReleaseGateError"):
        from . import errors

        return getattr(errors, name)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'release_gate' has no attribute {name!r}")
