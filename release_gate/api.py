"""The Python API: what each ``release-gate`` command does, as a function (the CLI is a thin layer on these).

    import release_gate
    result = release_gate.run("examples/smollm2-offline.yaml", overrides=["gate.alpha=0.1"])
    result.document.outcome, result.exit_code, result.run_dir
    release_gate.edit(base_model=..., adapter=..., policy="abs_select", out="variant", calibration="calib.jsonl")
    release_gate.inspect("adapter_dir")["alignment"]
    release_gate.report("reports/run")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run(config: str | Path, *, overrides: Sequence[str] = (), resume: bool = False):
    """The gate for one run config (``release-gate run``); returns a :class:`~release_gate.pipeline.RunResult`."""
    from .config import load_run_config
    from .pipeline import run as run_pipeline

    return run_pipeline(load_run_config(Path(config), list(overrides)), resume=resume)


def edit(base_model: str, adapter: str | Path, policy: str, out: str | Path, *,
         calibration: str | Path | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
         settings: dict[str, Any] | None = None, eval_data: Sequence[str | Path] = (), **options: Any):
    """One adapter, one policy (``release-gate edit``); returns ``(variant_dir, Variant)``.

    ``calibration`` is a JSONL path or a mapping of :class:`~release_gate.surgery.calibration.CalibrationConfig`
    fields; ``settings`` the edit targets/layers/rebuild; ``options`` the other
    :class:`~release_gate.surgery.edit.EditRequest` fields (``cache_dir``, ``device``, ``overwrite``, …).
    """
    from .surgery.calibration import CalibrationConfig
    from .surgery.edit import EditRequest, EditSettings
    from .surgery.edit import edit as edit_adapter

    if isinstance(calibration, (str, Path)):
        calibration = {"file": calibration}
    request = EditRequest(
        base_model=base_model, adapter=Path(adapter), policy=policy, out=Path(out),
        calibration=CalibrationConfig(**calibration) if calibration else None, overrides=overrides or {},
        settings=EditSettings(**(settings or {})), eval_data=tuple(Path(p) for p in eval_data), **options,
    )
    return edit_adapter(request)


def inspect(adapter: str | Path, top_m: int = 8) -> dict[str, Any]:
    """Spectral diagnostics of an adapter (``release-gate inspect --json``)."""
    from .surgery.adapter import load_adapter
    from .surgery.inspect import diagnose

    return diagnose(load_adapter(Path(adapter)), top_m=top_m)


def report(run_dir: str | Path) -> Path:
    """Re-render ``report.html`` of a finished run (``release-gate report``); returns its path."""
    from .document import read_decision
    from .reporting.render import render_report

    read_decision(Path(run_dir))
    return render_report(Path(run_dir))


def demo(out: str | Path = "reports/demo", cache_dir: str | Path | None = None, full: bool = False,
         retrain: bool = False):
    """The embedded offline default (``release-gate demo``); returns a :class:`~release_gate.pipeline.RunResult`."""
    from .embedded_demo import FULL, DemoSize, run_demo

    return run_demo(Path(out), Path(cache_dir) if cache_dir else None, FULL if full else DemoSize(), retrain=retrain)


def policies(policy_dirs: Sequence[str | Path] = ()) -> dict[str, dict[str, Any]]:
    """Every available policy with its effective parameters (``release-gate policies --json``)."""
    from .surgery.policy_files import load_policy_files

    files = load_policy_files([Path(p) for p in policy_dirs])
    return {name: {"description": f.description, "source": str(f.source), **f.build().parameters()}
            for name, f in sorted(files.items())}


def serve_args(release_dir: str | Path, base_model: str | None = None, stage: str | Path | None = None, *,
               public_key: str | Path | None = None, allow_unsigned: bool = False) -> list[str]:
    """vLLM ``--lora-modules`` values for the verified releases (``release-gate serve-args``).

    Releases must verify with ``public_key`` unless ``allow_unsigned``; ``stage`` None serves them in place.
    """
    from .integrations.releases import Trust
    from .integrations.serve_args import lora_modules, verify

    trust = Trust(Path(public_key) if public_key else None, "allow_unsigned=True" if allow_unsigned else None)
    return lora_modules(verify(Path(release_dir), base_model, trust, Path(stage) if stage else None), base_model)


def config_schema() -> dict[str, Any]:
    """The run config's JSON Schema (``release-gate config-schema``)."""
    from .config import schema

    return schema()


def decision_schema() -> dict[str, Any]:
    """``decision.json``'s JSON Schema (``release-gate decision-schema``)."""
    from .document import schema

    return schema()
