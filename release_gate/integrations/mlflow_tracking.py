"""Record a finished gate in MLflow (``tracking.mlflow`` in the run config; ``pip install 'release-gate[mlflow]'``).

One MLflow run per gate run: the resolved settings as parameters (each task's effective limit and
chat-template setting among them), every arm's score on every task, each variant's Δ vs the unedited
adapter with its bounds, and every criterion's estimate, bound and p-value as metrics, the outcome as a
tag, and ``decision.json``/``summary.md``/``junit.xml``/``report.html`` as artifacts. On PROMOTE the
promoted adapter is logged too and, when ``registered_model`` is set, becomes a new model version
that the alias (default ``champion``) points at: a registry alias is exactly "what the gate last
promoted", so a REJECT or INCONCLUSIVE leaves the alias where it was.

Only :class:`mlflow.MlflowClient` is used (no global active run), so a caller's own MLflow state is
untouched. :func:`connect` runs before the run directory is touched, so a wrong URI or a missing
extra is a bad-input error, not a failure after an hour of evaluation. The ``mlflow`` extra is the
client (``mlflow-skinny``): it logs to a tracking server or, with ``MLFLOW_ALLOW_FILE_STORE=true``, a
local directory; a database URI (``sqlite:///…``) needs the full ``mlflow`` package, and says so.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..document import DecisionDocument
from ..errors import BadInput
from ..files import write_json_atomic
from ..schema import (
    BASELINE,
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
#: URI schemes of MLflow's SQLAlchemy stores: only the full ``mlflow`` package (SQLAlchemy, Alembic) has them.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
#: Which store works with which install (the end of every store error).
STORES = ("with release-gate[mlflow] (mlflow-skinny) use a tracking server (http://…) or a local directory with "
          "MLFLOW_ALLOW_FILE_STORE=true; sqlite:///… and other databases need pip install mlflow")
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
    if urlparse(uri).scheme.split("+")[0] in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise BadInput(f"tracking.mlflow.tracking_uri: {uri}: a database store needs the full MLflow package "
                       f"(pip install mlflow); {STORES}")
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        message = " ".join(str(exc.message).split())
        if "MLFLOW_ALLOW_FILE_STORE" in message:
            message = f"MLflow refuses a local directory store unless MLFLOW_ALLOW_FILE_STORE=true is set; {STORES}"
        raise BadInput(f"tracking.mlflow.tracking_uri: {uri}: {message}") from None
    return Tracker(client, settings, uri)


def record(tracker: Tracker, run_dir: Path, document: DecisionDocument) -> dict[str, Any]:
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
        if document.promoted is not None:
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


def run_tags(document: DecisionDocument, extra: dict[str, str]) -> dict[str, str]:
    """The run's tags: the outcome and what it is about (searchable: ``tags.release_gate.outcome = 'PROMOTE'``)."""
    promoted = document.promoted
    provenance = document.provenance
    tags = {"release_gate.outcome": str(document.outcome),
            "release_gate.promoted_arm": promoted.arm if promoted else "",
            "release_gate.promoted_sha256": promoted.sha256 if promoted else "",
            "release_gate.adapter_sha256": provenance.adapter_sha256,
            "release_gate.version": provenance.release_gate or "",
            "release_gate.reason": document.reasons[0][:5000]}
    return {**tags, **extra}


def params(document: DecisionDocument) -> dict[str, str]:
    """The settings that decide the verdict, flattened to ``section.key`` (lists as JSON-ish text).

    The config is the one part of the document kept as the config's own JSON (``release-gate config-schema``).
    """
    config = document.config
    flat = {"base_model": config["base_model"], "adapter_sha256": document.provenance.adapter_sha256,
            "policies": ",".join(name for name, _ in config["policies"]),
            "controls.seeds": ",".join(str(s) for s in config["controls"]["seeds"])}
    for name, value in document.gate.model_dump().items():
        flat[f"gate.{name}"] = value
    for name in ("dtype", "sample_seed"):
        flat[f"evaluation.{name}"] = config["evaluation"][name]
    chat = task_chat_templates(config)
    for task, spec in document.tasks.items():
        flat[f"task.{task}.role"] = spec.role
        flat[f"task.{task}.metric"] = spec.metric
        flat[f"task.{task}.limit"] = spec.limit
        flat[f"task.{task}.chat_template"] = chat.get(task)
        if spec.max_drop is not None:
            flat[f"task.{task}.max_drop"] = spec.max_drop
    return {key(name): str(value)[:6000] for name, value in flat.items()}


def task_chat_templates(config: dict[str, Any]) -> dict[str, bool]:
    """Each task's effective chat-template setting: its own, else ``evaluation.chat_template``."""
    default = bool(config["evaluation"]["chat_template"])
    return {entry["task"]: default if entry.get("chat_template") is None else bool(entry["chat_template"])
            for entry in (*config["targets"], *config["guards"])}


def metrics(document: DecisionDocument) -> dict[str, float]:
    """The evidence as numbers: every arm's score per task with its confidence interval, each variant's Δ vs
    the baseline with its bounds and p-value, every criterion's estimate, bound, threshold and p-value, each
    variant's p-value, reward and pass, and ``promoted`` (0/1). Unbounded values (±∞ bounds) are left out."""
    values: dict[str, float | None] = {"promoted": float(document.outcome == Outcome.PROMOTE)}
    for arm, record in document.arms.items():
        for task, score in record.scores.items():
            values |= {f"score.{arm}.{task}": score.mean, f"n.{arm}.{task}": score.n,
                       f"ci_low.{arm}.{task}": score.ci_low, f"ci_high.{arm}.{task}": score.ci_high}
    for c in document.comparisons:
        if c.reference == BASELINE:
            values |= {f"delta.{c.arm}.{c.task}": c.delta, f"delta_lcb.{c.arm}.{c.task}": c.lcb,
                       f"delta_ucb.{c.arm}.{c.task}": c.ucb, f"delta_p_value.{c.arm}.{c.task}": c.p_value}
    for arm, verdict in document.variants.items():
        values |= {f"p_value.{arm}": verdict.p_value, f"reward.{arm}": verdict.reward,
                   f"passed.{arm}": float(verdict.passed)}
        for criterion in verdict.criteria:
            name = f"criterion.{arm}.{criterion.id}"
            values |= {f"{name}.estimate": criterion.estimate, f"{name}.lcb": criterion.lcb,
                       f"{name}.threshold": criterion.threshold, f"{name}.p_value": criterion.p_value}
    return {key(name): float(value) for name, value in values.items()
            if value is not None and math.isfinite(float(value))}


def _register(client: Any, settings: Any, run: Any, document: DecisionDocument) -> str:
    """A new version of the registered model from the run's ``promoted/`` artifact, then the alias on it."""
    from mlflow.exceptions import MlflowException

    name = settings.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapters promoted by release-gate")
    promoted = document.promoted
    if promoted is None:
        raise ValueError(f"MLflow: a {document.outcome} decision registers no model version")
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{PROMOTED_DIR}", run_id=run.info.run_id,
        tags={"release_gate.arm": promoted.arm, "release_gate.sha256": promoted.sha256},
        description=document.reasons[0][:5000],
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
