"""``release-gate run CONFIG``: calibrate → variants → evaluate → gate → outputs (SPEC §2).

Every expensive step is cached by content (sensitivities, per-item scores),
so a re-run after a crash resumes, and a re-run that only changes gate
settings evaluates nothing. The input adapter is only ever read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .assets import default_cache_dir
from .config import RunConfig
from .document import DecisionDocument
from .errors import BadInput
from .evaluation import lm_eval_results
from .evaluation.engine import Arm, engine_overrides
from .evaluation.protocol import BackendContext, create_backend
from .evaluation.runner import ResolvedTask, TaskRequest, resolve_task
from .evaluation.session import EvaluationSession
from .evaluation.signals import exit_on_sigterm
from .evaluation.store import ItemStore
from .files import check_input_file, child, write_json_atomic
from .gate import boundaries, stats
from .gate.decide import run_gate
from .gate.looks import Design
from .gate.words import budget_warnings
from .integrations import mlflow_tracking
from .ledger import Ledger, gate_key
from .reporting.outputs import write_outputs
from .reporting.render import render_report
from .run_record import Evaluated, Timer, build_document, look_summary, save_items
from .runlog import run_log
from .schema import (
    BASELINE,
    CONTROL_POLICY,
    EXIT_CODES,
    INSPECT_FILE,
    RUN_LOG_FILE,
    RUN_MARKER,
    TRACKING_FILE,
    VARIANTS_DIR,
)
from .surgery.adapter import check_output_dir, load_adapter
from .surgery.calibration import check_no_overlap, read_examples
from .surgery.edit import refine
from .surgery.inspect import diagnose
from .surgery.policies import Policy
from .surgery.policy_files import resolve_policy

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where the run went, what it decided, and the exit code that says so."""

    run_dir: Path
    document: DecisionDocument

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.document.outcome]


def prepare_run_dir(out: Path, adapter: Path, resume: bool, calibration: Path | None = None) -> None:
    """Refuse an output inside the adapter, an input inside the output or any run directory (a run
    rewrites its own), a foreign directory, or an old run unless resuming."""
    inputs = [adapter] if calibration is None else [adapter, calibration]
    check_output_dir(out, inputs, overwrite=True)
    for source in inputs:
        run_dir = enclosing_run_dir(Path(source))
        if run_dir is not None:
            raise BadInput(f"{source}: input is inside the release-gate run directory {run_dir}, which a run "
                           "rewrites; copy it elsewhere first")
    if out.exists() and any(out.iterdir()):
        if not (out / RUN_MARKER).exists():
            raise BadInput(f"output.dir {out}: exists and is not a release-gate run directory; choose another")
        if not resume:
            raise BadInput(f"output.dir {out}: holds an earlier run; pass --resume to continue it "
                           "(cached results are reused) or choose another output.dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("written by release-gate run\n")


def enclosing_run_dir(path: Path) -> Path | None:
    """The release-gate run directory (marked by ``RUN_MARKER``) that is or holds ``path``, if any."""
    resolved = path.resolve()
    return next((d for d in (resolved, *resolved.parents) if (d / RUN_MARKER).is_file()), None)


def candidate_policies(config: RunConfig) -> list[Policy]:
    """The policy arms from ``policies:``, each named once; random_index belongs to ``controls:``."""
    arms: list[Policy] = []
    for i, entry in enumerate(config.policies):
        policy = resolve_policy(entry.name, entry.params, origin=f"policies[{i}]")
        if policy.kind == CONTROL_POLICY:
            raise BadInput(f"policies[{i}]: {entry.name!r} is the random control; configure it under controls.seeds")
        arms += policy.arms()
    names = [a.name for a in arms]
    for name in names:
        if names.count(name) > 1 or name in ("base", BASELINE):
            raise BadInput(f"policies: arm name {name!r} is used twice or reserved; give each entry its own name:")
    return arms


def control_policies(config: RunConfig) -> list[Policy]:
    """One ``random_index@seed`` arm per configured seed."""
    overrides = {**config.controls.params, "seeds": list(config.controls.seeds)}
    return resolve_policy(CONTROL_POLICY, overrides, origin="controls.params").arms()


# --- tasks --------------------------------------------------------------------------------------------


def task_manager_for(config: RunConfig, cache_dir: Path) -> Any:
    """Offline tasks over the fetched assets (when present) plus the user's include paths.

    The offline task YAMLs live in the cache, in a separate directory when
    code execution is allowed, so HumanEval never appears in a run that did
    not allow it.
    The built-in task index is scanned (≈15 s) only when a requested name is
    not among the local tasks.
    """
    from lm_eval.tasks import TaskManager

    from .assets import load
    from .evaluation.tasks import offline_task_dir, prepare_environment, task_manager

    include = [Path(p) for p in config.evaluation.include_path]
    try:
        assets = load(cache_dir)
    except BadInput:
        assets = None
    if assets is not None:
        prepare_environment(assets)
        include.insert(0, offline_task_dir(assets, cache_dir, config.allow_code_execution))
    manager = task_manager(include)
    wanted = [e.task for e in (*config.targets, *config.guards)]
    if all(name in manager.all_tasks for name in wanted):
        return manager
    return TaskManager(include_path=[str(p) for p in include] or None, include_defaults=True)


def resolve_tasks(config: RunConfig, manager: Any) -> list[ResolvedTask]:
    """Every target and guard as lm-eval loaded it, metrics checked, in config order."""
    resolved = []
    for entry in (*config.targets, *config.guards):
        limit = entry.limit if entry.limit is not None else config.evaluation.limit
        chat = config.evaluation.chat_template if entry.chat_template is None else entry.chat_template
        request = TaskRequest(entry.task, entry.metric, limit, entry.num_fewshot, entry.max_gen_toks, chat)
        resolved.append(resolve_task(request, manager, config.evaluation.sample_seed))
    return resolved


def local_data_files(resolved: Sequence[ResolvedTask]) -> list[Path]:
    """The local JSON(L) files the tasks read (calibration rows must not overlap them)."""
    files: list[Path] = []
    for task in resolved:
        data_files = (task.task.config.dataset_kwargs or {}).get("data_files") or {}
        values = data_files.values() if isinstance(data_files, dict) else [data_files]
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if Path(str(item)).is_file() and str(item).endswith((".json", ".jsonl")):
                    files.append(Path(str(item)))
    return files


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything a config resolves to before anything is written: arms, tasks, rules, calibration, looks."""

    policies: list[Policy]
    controls: list[Policy]
    resolved: list[ResolvedTask]
    exclude: list[Path]
    design: Design


def make_plan(config: RunConfig, cache_dir: Path) -> Plan:
    """Resolve policies, tasks, metrics and calibration; every config mistake surfaces here."""
    policies, controls = candidate_policies(config), control_policies(config)
    resolved = resolve_tasks(config, task_manager_for(config, cache_dir))
    rules = [replace(r, metric=t.metric_key) for r, t in zip([*config.target_rules, *config.guard_rules], resolved)]
    needy = [p.name for p in policies if p.needs_calibration]
    if needy and config.calibration is None:
        raise BadInput(f"calibration: required by policy {needy[0]!r} (give calibration.file)")
    # vLLM's own names, refused here rather than after an hour (the backend applies them)
    engine_overrides(config.evaluation.engine_args or {}, "evaluation.engine_args")
    exclude = local_data_files(resolved)
    if needy:  # the rows, their count and their overlap with the evaluation data, before anything is written
        check_no_overlap(read_examples(config.calibration)[0], exclude)
    design = Design(config.rule, tuple(rules[:len(config.targets)]), tuple(rules[len(config.targets):]),
                    {t.request.name: t.size for t in resolved}, tuple(p.name for p in policies),
                    tuple(c.name for c in controls), with_base=True,
                    available={t.request.name: t.available for t in resolved})
    return Plan(policies, controls, resolved, exclude, design)


def run(config: RunConfig, resume: bool = False) -> RunResult:
    """The whole gate for one config; returns the decision document (also written to disk)."""
    exit_on_sigterm()  # SIGTERM unwinds like Ctrl-C (exit 143) at every stage, calibration included
    timer = Timer()
    out = Path(config.output.dir)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    adapter = load_adapter(config.adapter)
    if config.calibration is not None:  # readable before the tasks load (seconds), as every input
        check_input_file(config.calibration.file, "calibration file")
    try:
        plan = make_plan(config, cache_dir)
        tracker = mlflow_tracking.connect(config.tracking.mlflow) if config.tracking.mlflow else None
    except BadInput as exc:
        raise BadInput(f"{config.source}: {exc}") from None
    signed_by = release_signer(config)
    prepare_run_dir(out, config.adapter, resume,  # everything checkable was checked: nothing touched before
                    config.calibration.file if config.calibration else None)
    with run_log(out / RUN_LOG_FILE):  # vLLM's, transformers' and lm-eval's logs go there, not to the terminal
        return gate_in_run_dir(config, plan, adapter, tracker, signed_by, cache_dir, timer)


def gate_in_run_dir(config: RunConfig, plan: Plan, adapter: Any, tracker: Any, signed_by: str | None,
                    cache_dir: Path, timer: Timer) -> RunResult:
    """Variants, evaluation, decision and outputs: everything after the checks, inside the run directory."""
    out = Path(config.output.dir)
    announce_plan(plan)

    since = time.perf_counter()
    arms_policies = [*plan.policies, *plan.controls]
    written = refine(config.base_model, adapter, arms_policies,
                     {p.name: child(out / VARIANTS_DIR, p.name, "arm") for p in arms_policies}, calibration=config.calibration,
                     cache_dir=cache_dir, settings=config.edit, device=config.device, dtype=config.dtype,
                     exclude=plan.exclude)
    timer.stage("calibration_and_variants", since)
    write_json_atomic(out / INSPECT_FILE, diagnose(adapter))

    arms = [Arm.base(), Arm.from_adapter(BASELINE, config.adapter),
            *(Arm.from_adapter(variant.name, path) for path, variant in written)]
    since = time.perf_counter()
    store = ItemStore(cache_dir / "items")
    with evaluation_session(config, arms, plan, store) as session:
        ledger = open_ledger(store, arms, plan, session)
        decision = run_gate(ledger.design(plan.design) if ledger else plan.design, session.fetch)
        history = ledger.record(decision, str(out.resolve()), timer.wall) if ledger else None
    timer.stage("evaluation_and_gate", since)
    for line in look_summary(decision):
        logger.info(line)
    save_items(out, session.items)
    lm_eval_results.write(out, session.items, plan.resolved, arms, config.base_model)
    evaluated = Evaluated(arms, session.items, session.canary, session.record, plan.resolved)
    document = build_document(config, decision, evaluated, written, timer, signed_by, history)
    write_outputs(out, document, {path.name: path for path, _ in written},
                  Path(config.release.signing_key) if signed_by else None)
    render_report(out)
    (out / TRACKING_FILE).unlink(missing_ok=True)  # a resumed run's record belongs to the earlier run
    if tracker is not None:
        mlflow_tracking.record(tracker, out, document)
    return RunResult(out, document)


def evaluation_session(config: RunConfig, arms: list[Arm], plan: Plan, store: ItemStore) -> EvaluationSession:
    """Scores on demand for the gate's looks, by the backend ``evaluation.backend`` names (started only if needed)."""
    backend = create_backend(config.evaluation.backend, BackendContext(config.base_model, tuple(arms), config.evaluation))
    return EvaluationSession(arms, plan.resolved, store, backend)


def open_ledger(store: ItemStore, arms: Sequence[Arm], plan: Plan, session: EvaluationSession) -> Ledger | None:
    """The gate's look ledger beside the item store (statistical mode only: point estimates spend no α)."""
    if plan.design.rule.mode != "statistical":
        return None
    ledger = Ledger.open(store.root, gate_key(arms, plan.resolved, session.backend.store_key()), plan.design,
                         {t.request.name: t.sample_seed for t in plan.resolved})
    if ledger.replaying is not None:
        logger.info(f"gate: this run has the limits of run {ledger.replaying + 1} of this gate ({ledger.path}): it "
                    "re-decides that run's items after the same earlier looks and records nothing new")
    elif ledger.runs:
        logger.info(f"gate: {len(ledger.history())} earlier looks of this gate (begun {ledger.begun}) in "
                    f"{ledger.path}: this run continues their error spending")
    return ledger


def announce_plan(plan: Plan) -> None:
    """Print each task's n, minimum detectable effect and expected items, and warnings, before anything expensive."""
    design = plan.design
    rule = design.rule
    # a first run spends α(1 − ρ): the reserve ρ is kept for re-runs that raise the limits
    alpha = rule.alpha * (1.0 - rule.rerun_reserve)
    sequential = len(design.fractions) > 1
    drift = stats.z_for_power(alpha)
    null_share = boundaries.expected_share(design.fractions, alpha, rule.futility, 0.0) if sequential else 1.0
    mde_share = boundaries.expected_share(design.fractions, alpha, rule.futility, drift) if sequential else 1.0
    for task, task_rule in zip(plan.resolved, design.rules):
        n = task.size
        budget = f", budget {100 * task_rule.max_drop:.1f} pts" if task_rule.role == "guard" else ""
        expected = (f"; looks at {', '.join(str(k) for k in boundaries.look_sizes(n, design.fractions))} items, "
                    f"expected ≈{round(null_share * n)} per arm with no effect, ≈{round(mde_share * n)} at the MDE"
                    if sequential else "")
        logger.info(f"plan: {task_rule.role} {task.request.name} [{task.metric_key}] n={n} of {task.available}, minimum "
            f"detectable effect ≈{100 * stats.planned_mde(n, alpha):.1f} pts at α(1 − ρ)={alpha:g}, 80% power"
            f"{budget}{expected}")
        if task.random_fewshot:
            logger.warning(f"warning: task {task.request.name} draws its few-shot examples at random, so an item's prompt "
                "depends on the items built with it: its items are stored per chunk and shared only by runs "
                "that evaluate the same chunks (fewshot_config sampler first_n lifts this)")
    for warning in budget_warnings(design.rules, design.limits, alpha):
        logger.warning(f"warning: {warning}")


def release_signer(config: RunConfig) -> str | None:
    """The sha256 of the public half of ``release.signing_key`` (None: releases go out unsigned).

    The key must be readable and must not live inside ``output.dir``, which is published as a whole.
    """
    key = config.release.signing_key
    if key is None:
        return None
    from .integrations.signing import check_private_key

    out = Path(config.output.dir).resolve()
    if out == Path(key).resolve() or out in Path(key).resolve().parents:
        raise BadInput(f"{config.source}: release.signing_key {key} is inside output.dir {config.output.dir}, "
                       "which is published with the release; keep the key elsewhere")
    try:
        return check_private_key(Path(key))
    except BadInput as exc:
        raise BadInput(f"{config.source}: {exc}") from None
