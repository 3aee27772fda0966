"""``report.html`` (SPEC §8): the decision, its evidence and provenance, in one self-contained file.

Rendered only from what a finished run left on disk (``decision.json``, the
sidecars, ``inspect.json``, ``items/``), so ``release-gate report RUN_DIR``
re-renders without evaluating anything and shows exactly what the gate saw.
Jinja autoescapes everything; the plots arrive as already-escaped SVG markup.
A Content-Security-Policy allows only the report's own script (by hash) and no
network at all, so even a missed escape could not run injected code.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from ..document import CriterionRecord, DecisionDocument, read_decision
from ..files import read_json, read_jsonl, write_text_atomic
from ..gate.criteria import pts
from ..schema import (
    BASE,
    BASELINE,
    INSPECT_FILE,
    ITEMS_DIR,
    REPORT_FILE,
    SIDECAR_FILE,
    VARIANTS_DIR,
    Role,
    Standing,
)
from . import plots, spectrum_plots

TEMPLATE = "report.html.j2"
SCRIPT = "report.js.j2"
#: Disagreeing items shown per variant per task (the full lists are in items/).
EXAMPLES_PER_TASK = 3
#: Criterion ids as column headings on the first screen.
CRITERION_NAMES = {"beats_baseline": "beats baseline", "beats_control": "beats random control"}


def render_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's files; returns its path."""
    run_dir = Path(run_dir)
    document = read_decision(run_dir)
    return write_text_atomic(run_dir / REPORT_FILE, render_html(run_dir, document))


def templates_dir() -> Path:
    """The shipped ``templates/``: ``release_gate/templates`` in a wheel, the repo's ``templates/`` in a checkout.

    (An editable install cannot import the data-only ``release_gate.templates`` package, so look on disk.)
    """
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"the report template {TEMPLATE} is missing from the installation")


def environment() -> Environment:
    """The template environment: autoescaping on for every template, undefined names are errors."""
    env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pts=pts, p=plots.p_value, json=lambda value: json.dumps(value, indent=1, ensure_ascii=False))
    return env


def render_html(run_dir: Path, document: DecisionDocument) -> str:
    env = environment()
    script = env.get_template(SCRIPT).render()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return env.get_template(TEMPLATE).render(script=Markup(script), script_hash=f"sha256-{digest}",
                                             **context(run_dir, document))


def context(run_dir: Path, document: DecisionDocument) -> dict[str, Any]:
    """Everything the template shows, computed once here so the template only lays it out."""
    sidecars = load_sidecars(run_dir, document)
    inspect = read_json(run_dir / INSPECT_FILE)
    featured = plots.featured_arm(document)
    columns, rows = criteria_matrix(document)
    return {
        "d": document, "featured": featured, "criterion_columns": columns, "criterion_rows": rows,
        "variants": document.with_role(Role.VARIANT), "controls": document.with_role(Role.CONTROL),
        "criteria": {key: c.standing() for key, c in document.criterion_index().items()},
        "task_names": list(document.tasks),
        "risk_plots": plots.reward_vs_risk(document),
        "guided_plot": plots.guided_vs_random(document) if document.with_role(Role.CONTROL) else None,
        "forest_plot": plots.forest(document),
        "spectrum_plot": spectrum_plot(document, sidecars, featured),
        "alpha_maps": [spectrum_plots.alpha_map(arm, sidecar) for arm, sidecar in sidecars.items()],
        "sidecar_notes": {arm: sidecar.get("notes") or [] for arm, sidecar in sidecars.items()},
        "inspect": inspect,
        "alignment_maps": spectrum_plots.alignment_maps(inspect) if inspect else [],
        "cross_module_plot": spectrum_plots.cross_module(inspect) if inspect else None,
        "examples": item_examples(run_dir, document, featured),
        "look_plots": [plots.bounds_by_look(document, arm) for arm in document.ranked_variants()
                       if plots.look_series(document, arm)] if len(document.design.looks) > 1 else [],
        "adapter_vs_base": [c for c in document.comparisons if c.arm == BASELINE and c.reference == BASE],
        "history_note": history_note(document),
        "tests_used": tests_used(document),
        "calibration": index_ranges(document.provenance.calibration_indices or []),
        "timings": timing_rows(document.provenance.timings),
    }


def load_sidecars(run_dir: Path, document: DecisionDocument) -> dict[str, dict[str, Any]]:
    """``spectral_edit.json`` of every variant and control arm that has one, variants first."""
    arms = [*document.with_role(Role.VARIANT), *document.with_role(Role.CONTROL)]
    found = {arm: read_json(run_dir / VARIANTS_DIR / arm / SIDECAR_FILE) for arm in arms}
    return {arm: sidecar for arm, sidecar in found.items() if sidecar and sidecar.get("modules")}


def spectrum_plot(document: DecisionDocument, sidecars: Mapping[str, Any], featured: str | None) -> Markup | None:
    if not sidecars:
        return None
    return spectrum_plots.spectrum(document, sidecars, featured if featured in sidecars else next(iter(sidecars)))


# --- first screen ---------------------------------------------------------------------------------------


def history_note(document: DecisionDocument) -> str | None:
    """``look 7 of a gate begun on 2026-12-03 …`` when earlier runs of this gate made looks (the look ledger)."""
    history = document.history
    runs = list(dict.fromkeys((h.run, h.date) for h in history))
    if len(runs) < 2:
        return None
    mine = sum(1 for h in history if (h.run, h.date) == runs[-1])
    begun = runs[0][1] or "an earlier run"
    return (f"look {len(history)} of a gate begun on {begun[:10]}: {len(runs) - 1} earlier "
            f"run{'s' if len(runs) > 2 else ''} made looks 1–{len(history) - mine} on the same items, and this run "
            "continues their error spending (the α kept for re-runs)")


def criterion_name(criterion_id: str) -> str:
    """``guard:ifeval`` → ``guard ifeval within budget``; ``beats_control:random_index@1`` → ``beats …@1``."""
    if criterion_id.startswith("guard:"):
        return f"guard {criterion_id.split(':', 1)[1]} within budget"
    head, _, seed = criterion_id.partition(":")
    return f"beats {seed}" if seed else CRITERION_NAMES.get(head, head)


def criteria_matrix(document: DecisionDocument) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Columns (criterion id, heading) and one row per variant: promoted, passing, point-only, failing,
    each group in the gate's ranking (a sorted() is stable)."""
    ids = list(dict.fromkeys(c.id for v in document.variants.values() for c in v.criteria))
    rows = []
    order = [Standing.WINNER, Standing.PASS, Standing.POINT, Standing.FAIL]
    for arm in sorted(document.ranked_variants(), key=lambda a: order.index(document.standing(a))):
        verdict = document.variants[arm]
        by_id = {c.id: c for c in verdict.criteria}
        cells = [(by_id[i], by_id[i].standing(), criterion_numbers(by_id[i])) if i in by_id else None for i in ids]
        rows.append({"arm": arm, "verdict": verdict, "status": document.standing(arm), "cells": cells})
    return [(i, criterion_name(i)) for i in ids], rows


def criterion_numbers(criterion: CriterionRecord) -> tuple[str, str]:
    """A criterion's evidence as (estimate, bound vs threshold); its column heading says what it tests."""
    op = "≥" if criterion.is_guard else ">"
    return f"Δ {pts(criterion.estimate)} pts", f"LCB {pts(criterion.lcb)} · needs {op} {pts(criterion.threshold)}"


def tests_used(document: DecisionDocument) -> list[tuple[str, str, str]]:
    """(criterion, test, method) once per criterion id, in the order of the first variant's criteria."""
    seen: dict[str, tuple[str, str, str]] = {}
    for verdict in document.variants.values():
        for c in verdict.criteria:
            seen.setdefault(c.id, (criterion_name(c.id), c.test, c.method))
    return list(seen.values())


# --- item-level examples --------------------------------------------------------------------------------


def read_items(path: Path) -> dict[Any, dict[str, Any]]:
    """One stored per-item file keyed by doc_id (empty when absent)."""
    return {row["doc_id"]: row for row in read_jsonl(path)} if path.is_file() else {}


def disagreements(variant: Mapping[Any, Any], baseline: Mapping[Any, Any], metric: str, higher_is_better: bool,
                  limit: int) -> list[dict[str, Any]]:
    """Items the two arms score differently, wins and losses interleaved so both directions show."""
    sign = 1 if higher_is_better else -1
    wins, losses = [], []
    for doc_id, row in variant.items():
        other = baseline.get(doc_id)
        if other is None or metric not in row["metrics"] or metric not in other["metrics"]:
            continue
        gain = sign * (row["metrics"][metric] - other["metrics"][metric])
        if gain:
            (wins if gain > 0 else losses).append({"doc_id": doc_id, "variant": row, "baseline": other,
                                                   "better": "variant" if gain > 0 else "baseline"})
    mixed = [x for pair in zip(wins, losses) for x in pair] + wins[len(losses):] + losses[len(wins):]
    return mixed[:limit]


def item_examples(run_dir: Path, document: DecisionDocument, featured: str | None) -> list[dict[str, Any]]:
    """Per variant (the featured one first) and task: a few items where it and baseline disagree."""
    variants = document.ranked_variants()
    ordered = [featured, *(v for v in variants if v != featured)] if featured else variants
    out = []
    for arm in ordered:
        for task, spec in document.tasks.items():
            baseline = read_items(run_dir / ITEMS_DIR / BASELINE / f"{task}.jsonl")
            mine = read_items(run_dir / ITEMS_DIR / arm / f"{task}.jsonl")
            out.append({"arm": arm, "task": task, "metric": spec.metric, "stored": len(mine) > 0,
                        "diffs": disagreements(mine, baseline, spec.metric, spec.higher_is_better,
                                               EXAMPLES_PER_TASK)})
    return out


# --- provenance -----------------------------------------------------------------------------------------


def index_ranges(indices: Sequence[int], shown: int = 12) -> str:
    """``[0, 1, 2, 5, 9, 10]`` → ``6 rows: 0–2, 5, 9–10`` (first ``shown`` runs, then an ellipsis)."""
    if not indices:
        return "none recorded"
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in runs[:shown])
    return f"{len(indices)} rows: {text}" + (", …" if len(runs) > shown else "")


def timing_rows(timings: Mapping[str, float]) -> list[tuple[str, float, float]]:
    """(stage, seconds, share of the total in %) per stage; the total itself last at 100%."""
    total = timings.get("total") or sum(timings.values()) or 1.0
    return [(stage, seconds, 100.0 * seconds / total) for stage, seconds in timings.items()]
