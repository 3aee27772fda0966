"""Record a finished gate in MLflow (``tracking.mlflow`` in the run config; ``pip install 'release-gate[mlflow]'``).

One MLflow run per gate run: the resolved settings as parameters, every arm's score on every task
(and each variant's Δ vs the unedited adapter, its p-value and reward) as metrics, the outcome as a
tag, and ``decision.json``/``summary.md``/``junit.xml``/``report.html`` as artifacts. On PROMOTE the
promoted adapter is logged too and, when ``registered_model`` is set, becomes a new model version
that the alias (default ``champion``) points at: a registry alias is exactly "what the gate last
promoted", so a REJECT or INCONCLUSIVE leaves the alias where it was.

Only :class:`mlflow.MlflowClient` is used (no global active run), so a caller's own MLflow state is
untouched. :func:`connect` runs before the run directory is touched, so a wrong URI or a missing
extra is a bad-input error, not a failure after an hour of evaluation.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..files import write_json_atomic
from ..schema import (
    DECISION_FILE,
    JUNIT_FILE,
    PROMOTED_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    TRACKING_FILE,
    Outcome,
)

logger = logging.getLogger(__name__)

#: What MLflow accepts in a param/metric/tag key; anything else becomes ``_``.
_KEY_UNSAFE = re.compile(r"[^\w\-./ :]")
#: Artifacts of every run (relative to the run directory) and the artifact folder they go to.
GATE_ARTIFACTS = (DECISION_FILE, SUMMARY_FILE, JUNIT_FILE, REPORT_FILE)
ARTIFACT_DIR = "release-gate"
#: The batch limits of MLflow's ``log_batch``.
_BATCH = {"params": 100, "metrics": 1000, "tags": 100}


@dataclass(frozen=True)
class Tracker:
    """A connected client plus the section that configured it."""

    client: Any
    settings: Any  # config.MlflowSection
    tracking_uri: str


def connect(settings: Any) -> Tracker:
    """A client for ``settings.tracking_uri`` (or ``$MLFLOW_TRACKING_URI``), checked by opening its store."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise BadInput("tracking.mlflow: MLflow is not installed; pip install 'release-gate[mlflow]'") from None
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise BadInput("tracking.mlflow.tracking_uri: not set and $MLFLOW_TRACKING_URI is empty")
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        raise BadInput(f"tracking.mlflow.tracking_uri: {uri}: {' '.join(str(exc.message).split())}") from None
    return Tracker(client, settings, uri)


def record(tracker: Tracker, run_dir: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Log one finished gate run; register the promoted adapter on PROMOTE. Returns what was recorded.

    What was recorded (run id, experiment, model version) is also written to ``tracking.json`` in the
    run directory, so a pipeline step can find the MLflow run of a gate run.
    """
    client, settings = tracker.client, tracker.settings
    experiment_id = _experiment(client, settings.experiment)
    run = client.create_run(experiment_id, run_name=settings.run_name or Path(run_dir).resolve().name,
                            tags=run_tags(document, settings.tags))
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, params(document), metrics(document))
        for name in GATE_ARTIFACTS:
            if (Path(run_dir) / name).is_file():
                client.log_artifact(run_id, str(Path(run_dir) / name), ARTIFACT_DIR)
        version = None
        if document["outcome"] == Outcome.PROMOTE:
            client.log_artifacts(run_id, str(Path(run_dir) / PROMOTED_DIR), PROMOTED_DIR)
            if settings.registered_model:
                version = _register(client, settings, run, document)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    recorded = {"tracking_uri": _redacted(tracker.tracking_uri), "experiment_id": experiment_id, "run_id": run_id,
                "registered_model": settings.registered_model if version else None, "version": version,
                "alias": settings.alias if version else None}
    write_json_atomic(Path(run_dir) / TRACKING_FILE, recorded)
    logger.info("MLflow: run %s in experiment %r%s", run_id, settings.experiment,
                f"; {settings.registered_model} version {version} is now @{settings.alias}" if version else "")
    return recorded


def run_tags(document: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    """The run's tags: the outcome and what it is about (searchable: ``tags.release_gate.outcome = 'PROMOTE'``)."""
    promoted = document.get("promoted") or {}
    provenance = document["provenance"]
    tags = {"release_gate.outcome": str(document["outcome"]),
            "release_gate.promoted_arm": promoted.get("arm", ""),
            "release_gate.promoted_sha256": promoted.get("sha256", ""),
            "release_gate.adapter_sha256": provenance["adapter_sha256"],
            "release_gate.version": str(provenance.get("release_gate", "")),
            "release_gate.reason": document["reasons"][0][:5000]}
    return {**tags, **extra}


def params(document: dict[str, Any]) -> dict[str, str]:
    """The settings that decide the verdict, flattened to ``section.key`` (lists as JSON-ish text)."""
    config = document["config"]
    flat = {"base_model": config["base_model"], "adapter_sha256": document["provenance"]["adapter_sha256"],
            "policies": ",".join(name for name, _ in config["policies"]),
            "controls.seeds": ",".join(str(s) for s in config["controls"]["seeds"])}
    for name, value in document["gate"].items():
        flat[f"gate.{name}"] = value
    for name in ("dtype", "limit", "sample_seed", "chat_template"):
        flat[f"evaluation.{name}"] = config["evaluation"][name]
    for task, spec in document["tasks"].items():
        flat[f"task.{task}.role"] = spec["role"]
        flat[f"task.{task}.metric"] = spec["metric"]
        if spec.get("max_drop") is not None:
            flat[f"task.{task}.max_drop"] = spec["max_drop"]
    return {key(name): str(value)[:6000] for name, value in flat.items()}


def metrics(document: dict[str, Any]) -> dict[str, float]:
    """Every arm's score per task, each variant's Δ vs baseline, p-value and reward, and ``promoted`` (0/1)."""
    values: dict[str, float] = {"promoted": float(document["outcome"] == Outcome.PROMOTE)}
    for arm, record in document["arms"].items():
        for task, score in record["scores"].items():
            values[f"score.{arm}.{task}"] = score["mean"]
            values[f"n.{arm}.{task}"] = score["n"]
    for comparison in document["comparisons"]:
        if comparison["reference"] == "baseline":
            values[f"delta.{comparison['arm']}.{comparison['task']}"] = comparison["delta"]
    for arm, verdict in document["variants"].items():
        values[f"p_value.{arm}"] = verdict["p_value"]
        if verdict.get("reward") is not None:
            values[f"reward.{arm}"] = verdict["reward"]
        values[f"passed.{arm}"] = float(bool(verdict["passed"]))
    return {key(name): float(value) for name, value in values.items() if value is not None}


def _register(client: Any, settings: Any, run: Any, document: dict[str, Any]) -> str:
    """A new version of the registered model from the run's ``promoted/`` artifact, then the alias on it."""
    from mlflow.exceptions import MlflowException

    name = settings.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapters promoted by release-gate")
    promoted = document["promoted"]
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{PROMOTED_DIR}", run_id=run.info.run_id,
        tags={"release_gate.arm": promoted["arm"], "release_gate.sha256": promoted["sha256"]},
        description=document["reasons"][0][:5000],
    ).version
    client.set_registered_model_alias(name, settings.alias, version)
    return str(version)


def _experiment(client: Any, name: str) -> str:
    existing = client.get_experiment_by_name(name)
    return existing.experiment_id if existing is not None else client.create_experiment(name)


def _log_batches(client: Any, run_id: str, param_values: dict[str, str], metric_values: dict[str, float]) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    params_list = [Param(k, v) for k, v in param_values.items()]
    metrics_list = [Metric(k, v, stamp, 0) for k, v in metric_values.items()]
    for i in range(0, len(params_list), _BATCH["params"]):
        client.log_batch(run_id, params=params_list[i:i + _BATCH["params"]])
    for i in range(0, len(metrics_list), _BATCH["metrics"]):
        client.log_batch(run_id, metrics=metrics_list[i:i + _BATCH["metrics"]])


def key(*parts: Any) -> str:
    """An MLflow key from name parts (``score``, arm, task): dotted, with characters MLflow refuses as ``_``."""
    return _KEY_UNSAFE.sub("_", ".".join(str(p) for p in parts))


def _redacted(uri: str) -> str:
    """The URI without credentials (``https://user:token@host`` → ``https://host``)."""
    return re.sub(r"//[^/@]*@", "//", uri)
