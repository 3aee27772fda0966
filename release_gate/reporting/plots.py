"""The report's decision plots (SPEC §8): reward vs risk, guided vs random, the forest plot, bounds by look.

The spectral plots are in :mod:`.spectrum_plots`. Every plot reads what the gate wrote
(:class:`~..document.DecisionDocument`) and recomputes nothing the gate decided: a point's colour is
the criterion's own pass/fail, its whiskers the comparison's own bounds. Each
comparison's ``lcb``/``ucb`` are one-sided (1 − α) bounds, so a whisker is a
two-sided (1 − 2α) interval; an unbounded end (``null``) is drawn open to the
frame edge. Marks carry ``data-arm`` (and ``data-task``) so a test can count them.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

from ..document import ComparisonRecord, CriterionRecord, DecisionDocument
from ..gate.criteria import pts
from ..schema import BASE, BASELINE, REWARD, Role, Standing, TaskRole
from . import svg

#: Marker shapes by task position (the target reward first).
SHAPES = ("circle", "square", "triangle", "diamond")
#: How many categorical colour classes the stylesheet defines (``c0`` … ``c7``).
PALETTE_SIZE = 8


# --- reading the document -------------------------------------------------------------------------------


def featured_arm(document: DecisionDocument) -> str | None:
    """The promoted variant, else the best-ranked one (what a reviewer compares with baseline)."""
    if document.promoted is not None:
        return document.promoted.arm
    ranked = document.ranked_variants()
    return ranked[0] if ranked else None


def color_class(document: DecisionDocument, arm: str) -> str:
    """A stable categorical colour per arm (variants, then controls, in document order)."""
    order = [*document.with_role(Role.VARIANT), *document.with_role(Role.CONTROL)]
    return f"c{order.index(arm) % PALETTE_SIZE}"


def task_order(document: DecisionDocument) -> list[str]:
    """The weighted target reward first, then targets, then guards."""
    return [REWARD, *document.tasks_with_role(TaskRole.TARGET), *document.tasks_with_role(TaskRole.GUARD)]


def interval(comparison: ComparisonRecord) -> tuple[float | None, float | None]:
    return comparison.lcb, comparison.ucb


# --- shared drawing helpers -----------------------------------------------------------------------------


def span(scale: svg.Scale, low: float | None, high: float | None) -> tuple[float, float, bool, bool]:
    """Pixel ends of an interval; a missing end is pinned to the domain edge and reported open."""
    return (scale.clamp(scale.lo if low is None else low), scale.clamp(scale.hi if high is None else high),
            low is None, high is None)


def arm_marker(x: float, y: float, arm: str, status: Standing, shape: str, **data: object) -> Markup:
    """The point mark of one arm (winner: larger, with a halo)."""
    size = 7.0 if status == Standing.WINNER else 5.5
    mark = svg.marker(x, y, shape, size, class_="marker", data_arm=arm, **data)
    if status != Standing.WINNER:
        return mark
    return svg.group([svg.element("circle", {"cx": x, "cy": y, "r": 12.0, "class_": "halo"}), mark])


def labels(items: Sequence[tuple[float, float, str, str]], f: svg.Frame) -> Markup:
    """Arm labels right of their points, dodged apart vertically, with a leader when moved."""
    ys = svg.dodge([y + 4 for _, y, _, _ in items], 13, f.top + 10, f.bottom - 4)
    parts = []
    for (x, y, label, cls), ly in zip(items, ys):
        lx = min(x + 12, f.right - 4)
        anchor = "end" if lx >= f.right - 4 else "start"
        if abs(ly - 4 - y) > 3:
            parts.append(svg.line(x, y, lx - 2, ly - 4, class_="leader"))
        parts.append(svg.text(lx, ly, label, anchor, class_=f"point-label {cls}"))
    return svg.group(parts)


# --- (1) reward vs risk ---------------------------------------------------------------------------------


def reward_vs_risk(document: DecisionDocument) -> list[Markup]:
    """One panel per guard: x = guard drop vs baseline (negative: the guard improved), y = target reward vs
    baseline. The drop is not clipped at 0: an edit that improves the guard is information a reviewer wants,
    and clipping would stack every arm that kept or improved the guard on one vertical line."""
    guards = document.tasks_with_role(TaskRole.GUARD)
    return [risk_panel(document, guard) for guard in guards or [None]]


def drop_interval(comparison: ComparisonRecord | None) -> tuple[float, float | None, float | None]:
    """A guard's drop (−Δ) and its interval; no guard means no drop."""
    if comparison is None:
        return 0.0, 0.0, 0.0
    low, high = interval(comparison)
    return -comparison.delta, None if high is None else -high, None if low is None else -low


def risk_panel(document: DecisionDocument, guard: str | None) -> Markup:
    index = document.comparison_index()
    # Controls first and the winner last, so the marks that matter are drawn on top.
    arms = sorted([*document.with_role(Role.CONTROL), *document.with_role(Role.VARIANT)],
                  key=lambda a: document.standing(a) == Standing.WINNER)
    budget = document.tasks[guard].max_drop if guard else None
    min_gain = document.gate.min_gain
    rows = []
    for arm in arms:
        reward = index[(arm, BASELINE, REWARD)]
        rows.append((arm, reward, drop_interval(index.get((arm, BASELINE, guard)) if guard else None)))
    xs = [v for _, _, d in rows for v in d]
    ys = [v for _, r, _ in rows for v in (r.delta, *interval(r))]
    f = svg.frame(560, 380, svg.domain(xs, include=[0.0, *([budget * 1.25] if budget is not None else [])]),
                  svg.domain(ys, include=[0.0, min_gain]), margins=(62, 24, 24, 46))
    body = [svg.axis_x(f, f"drop of guard {guard} vs baseline (pts; below 0: the guard improved)" if guard
                       else "guard drop (no guard tasks)", pts),
            svg.axis_y(f, "target reward vs baseline (Δ pts)", pts)]
    body.append(admissible(f, budget, min_gain))
    body.append(svg.line(f.x(0), f.y(0), f.right, f.y(0), class_="zero"))
    body.append(svg.group([svg.line(f.x(0) - 5, f.y(0), f.x(0) + 5, f.y(0)),
                           svg.line(f.x(0), f.y(0) - 5, f.x(0), f.y(0) + 5)], class_="reference"))
    marks, names = [], []
    for arm, reward, (drop, drop_low, drop_high) in rows:
        status = document.standing(arm)
        x, y = f.x(drop), f.y(reward.delta)
        y0, y1, open_lo, open_hi = span(f.y, *interval(reward))
        x0, x1, open_left, open_right = span(f.x, drop_low, drop_high)
        shape = "diamond" if status == Standing.CONTROL else "circle"
        marks.append(svg.group([svg.whisker(x, y0, x, y1, open_low=open_lo, open_high=open_hi),
                                svg.whisker(x0, y, x1, y, open_low=open_left, open_high=open_right),
                                arm_marker(x, y, arm, status, shape),
                                svg.title(f"{arm}: reward {pts(reward.delta)} pts "
                                          f"[{pts(reward.lcb)}, {pts(reward.ucb)}], "
                                          f"guard drop {pts(drop)} pts")],
                               class_=f"arm s-{status}", data_arm=arm))
        names.append((x, y, ("★ " if status == Standing.WINNER else "") + arm, f"s-{status}"))
    description = ("Each candidate variant (circle) and random control (diamond) at its target reward and guard "
                   "drop vs the unedited adapter, with confidence whiskers; the shaded area is admissible.")
    return svg.figure(f.width, f.height, f"Reward vs risk{f' ({guard})' if guard else ''}", description,
                      [*body, *marks, labels(names, f)], data_plot="reward-risk", data_guard=guard)


def admissible(f: svg.Frame, budget: float | None, min_gain: float) -> Markup:
    """The admissible region (drop within budget, reward above the minimum gain) and the budget line."""
    right = f.x(budget) if budget is not None else f.right
    top, bottom = f.top, f.y.clamp(min_gain)
    parts = [svg.rect(f.left, top, right - f.left, max(0.0, bottom - top), class_="admissible"),
             svg.text(f.left + 6, top + 14, "admissible", class_="region-label")]
    if budget is not None:
        room = right < f.right - 90
        parts += [svg.line(right, f.top, right, f.bottom, class_="budget"),
                  svg.text(right + 4 if room else right - 4, f.bottom - 6, f"budget {pts(budget, signed=False)} pts",
                           "start" if room else "end", class_="budget-label")]
    if min_gain:
        parts.append(svg.line(f.left, bottom, f.right, bottom, class_="budget"))
    return svg.group(parts)


# --- (2) guided vs random (paper Fig. 3) ----------------------------------------------------------------


def guided_vs_random(document: DecisionDocument) -> Markup:
    """x = the random control's gain over baseline, y = each policy's gain, per task; the diagonal y = x."""
    index = document.comparison_index()
    controls = document.with_role(Role.CONTROL)
    variants = document.with_role(Role.VARIANT)
    tasks = task_order(document)
    rows = []
    for task in tasks:
        seeds = [index[(c, BASELINE, task)].delta for c in controls if (c, BASELINE, task) in index]
        if not seeds:
            continue
        rows += [(arm, task, sum(seeds) / len(seeds), min(seeds), max(seeds), index[(arm, BASELINE, task)])
                 for arm in variants if (arm, BASELINE, task) in index]
    values = [v for _, _, x, lo, hi, c in rows for v in (x, lo, hi, c.delta, *interval(c))]
    lo, hi = svg.domain(values, include=[0.0])
    f = svg.frame(620, 400, (lo, hi), (lo, hi), margins=(62, 20, 200, 46))
    corner = [(f.x(lo), f.y(lo)), (f.x(lo), f.y(hi)), (f.x(hi), f.y(hi))]
    body = [svg.axis_x(f, "random control's gain vs baseline (Δ pts, mean of seeds)", pts),
            svg.axis_y(f, "policy's gain vs baseline (Δ pts)", pts),
            svg.polygon(corner, class_="admissible"),
            svg.text(f.left + 6, f.top + 14, "guided beats random", class_="region-label"),
            svg.line(f.x(lo), f.y(lo), f.x(hi), f.y(hi), class_="diagonal")]
    marks = []
    for arm, task, x_mean, x_lo, x_hi, c in rows:
        x, y = f.x(x_mean), f.y(c.delta)
        y0, y1, open_lo, open_hi = span(f.y, *interval(c))
        shape = SHAPES[tasks.index(task) % len(SHAPES)]
        marks.append(svg.group([svg.whisker(x, y0, x, y1, open_low=open_lo, open_high=open_hi),
                                svg.whisker(f.x(x_lo), y, f.x(x_hi), y) if x_hi > x_lo else Markup(""),
                                svg.marker(x, y, shape, 5.5, class_="marker", data_arm=arm, data_task=task),
                                svg.title(f"{arm} on {task}: {pts(c.delta)} pts vs random "
                                          f"{pts(x_mean)} pts")],
                               class_=f"arm {color_class(document, arm)}"))
    legend = legend_block(f.right + 24, f.top + 8, [(arm, "circle", color_class(document, arm)) for arm in variants],
                          [(task, SHAPES[i % len(SHAPES)], "ink") for i, task in enumerate(tasks)])
    description = ("Per task, each policy's gain over the unedited adapter against the random control's gain; "
                   "points above the diagonal beat random index selection.")
    return svg.figure(f.width, f.height, "Guided vs random selection", description, [*body, *marks, legend],
                      data_plot="guided-random")


def legend_block(x: float, y: float, *sections: Sequence[tuple[str, str, str]]) -> Markup:
    """A vertical legend: rows of (label, marker shape, colour class), sections separated by a gap."""
    parts, row = [], 0
    for section in sections:
        for label, shape, cls in section:
            cy = y + 16 * row
            parts.append(svg.group([svg.marker(x, cy, shape, 4.5), svg.text(x + 12, cy + 4, label)],
                                   class_=f"legend-row {cls}"))
            row += 1
        row += 0.6
    return svg.group(parts, class_="legend")


# --- (3) forest plot ------------------------------------------------------------------------------------


def forest_rows(document: DecisionDocument) -> list[tuple[str, list[ComparisonRecord]]]:
    """Per task: every arm vs baseline, every variant vs each control reference, then baseline vs base."""
    variants = document.with_role(Role.VARIANT)
    controls = document.with_role(Role.CONTROL)
    index = document.comparison_index()
    references = list(dict.fromkeys(c.reference for c in document.comparisons
                                    if c.reference not in (BASELINE, BASE)))
    groups = []
    for task in task_order(document):
        keys = [(a, BASELINE, task) for a in (*variants, *controls)]
        keys += [(a, r, task) for r in references for a in variants]
        keys.append((BASELINE, BASE, task))
        groups.append((task, [index[k] for k in keys if k in index]))
    return [(task, rows) for task, rows in groups if rows]


def forest(document: DecisionDocument) -> Markup:
    """Δ with its interval for every comparison, grouped by task; gate thresholds as dashed ticks."""
    groups = forest_rows(document)
    criteria = document.criterion_index()
    row_h, header_h = 19, 24
    height = 40 + sum(header_h + row_h * len(rows) for _, rows in groups) + 34
    values = [v for _, rows in groups for c in rows for v in (c.delta, *interval(c))]
    thresholds = [c.threshold for c in criteria.values()]
    f = svg.frame(900, height, svg.domain(values, include=[0.0, *thresholds]), (0, 1), margins=(230, 30, 150, 40))
    body = [svg.axis_x(f, "Δ vs reference (pts); whiskers: two-sided interval from the one-sided bounds", pts),
            svg.line(f.x(0), f.top, f.x(0), f.bottom, class_="zero")]
    y = f.top
    for task, rows in groups:
        role = "weighted target reward" if task == REWARD else document.tasks[task].role
        body.append(svg.text(8, y + 16, f"{task}  ({role})", class_="group-label"))
        y += header_h
        for c in rows:
            body.append(forest_row(document, c, criteria.get((c.arm, c.reference, task)), f, y + row_h / 2))
            y += row_h
    description = "Every comparison's mean difference with its interval, by task; dashed ticks are gate thresholds."
    return svg.figure(f.width, f.height, "Per-task differences (forest plot)", description, body,
                      data_plot="forest")


def forest_row(document: DecisionDocument, c: ComparisonRecord, criterion: CriterionRecord | None,
               f: svg.Frame, y: float) -> Markup:
    arm, reference = c.arm, c.reference
    status: str = criterion.standing() if criterion else document.standing(arm)
    if not criterion and status != Standing.CONTROL:
        status = "info"
    x0, x1, open_lo, open_hi = span(f.x, *interval(c))
    parts = [svg.text(f.left - 10, y + 4, f"{arm}  vs {reference}", "end", class_="row-label"),
             svg.whisker(x0, y, x1, y, cap=3.5, open_low=open_lo, open_high=open_hi),
             svg.marker(f.x(c.delta), y, "diamond" if status == Standing.CONTROL else "circle", 4.0,
                        class_="marker", data_arm=arm, data_reference=reference, data_task=c.task),
             svg.text(f.right + 10, y + 4, f"{pts(c.delta)}  [{pts(c.lcb)}, {pts(c.ucb)}]",
                      class_="row-value")]
    if criterion:
        tx = f.x.clamp(criterion.threshold)
        parts.insert(0, svg.line(tx, y - 8, tx, y + 8, class_="threshold"))
    return svg.group(parts, class_=f"arm s-{status}")


def p_value(value: float | None) -> str:
    """A p-value for people: three significant digits, floored at 0.001."""
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3g}"


# --- (4) sequential evaluation: bounds against n ------------------------------------------------------------


def look_series(document: DecisionDocument, arm: str) -> dict[str, list[tuple[int, float | None, float]]]:
    """Per criterion of ``arm``: (look, lower bound, threshold) at every look it was judged."""
    series: dict[str, list[tuple[int, float | None, float]]] = {}
    for look in document.looks:
        entry = look.variants.get(arm)
        if entry is None:
            continue
        for criterion, values in entry.criteria.items():
            series.setdefault(criterion, []).append((look.look, values.lcb, values.threshold))
    return series


def bounds_by_look(document: DecisionDocument, arm: str) -> Markup:
    """One variant: each criterion's lower bound minus its threshold at every look, and where it stopped.

    Above zero the criterion holds at that look's level; the variant passes when all are above zero at
    a look whose level its p-value meets.
    """
    series = look_series(document, arm)
    first_target = next(iter(document.tasks_with_role(TaskRole.TARGET)), None)
    sizes = {look.look: look.n.get(first_target, 0) for look in document.looks}
    margins = [lcb - threshold for points in series.values() for _, lcb, threshold in points if lcb is not None]
    lo, hi = svg.domain(margins, include=[0.0])
    n_lo, n_hi = 0, max(sizes.values(), default=1) or 1
    f = svg.frame(460, 230, (n_lo, n_hi), (lo, hi), margins=(62, 14, 150, 44))
    body = [svg.axis_x(f, f"{first_target} items scored", lambda v: f"{v:.0f}", sorted(set(sizes.values()))),
            svg.axis_y(f, "LCB − threshold (pts)", pts), svg.line(f.left, f.y(0.0), f.right, f.y(0.0), class_="budget")]
    marks = []
    for index, (criterion, points) in enumerate(series.items()):
        shape = SHAPES[index % len(SHAPES)]
        known = [(look, lcb, threshold) for look, lcb, threshold in points if lcb is not None]
        parts = [svg.polyline([(f.x(sizes[look]), f.y.clamp(lcb - t)) for look, lcb, t in known], class_="trace")]
        for look, lcb, threshold in known:
            x, y = f.x(sizes[look]), f.y.clamp(lcb - threshold)
            parts.append(svg.group([svg.marker(x, y, shape, 4.5, class_="marker", data_arm=arm, data_criterion=criterion),
                                    svg.title(f"{criterion} at look {look} (n={sizes[look]}): LCB {pts(lcb)} pts, "
                                              f"threshold {pts(threshold)} pts")]))
        marks.append(svg.group(parts, class_=f"c{index % PALETTE_SIZE}"))
    verdict = document.variants[arm]
    stop = sizes.get(verdict.look, n_hi)
    marks.append(svg.line(f.x(stop), f.top, f.x(stop), f.bottom, class_="stop"))
    marks.append(svg.text(f.x(stop) - 4, f.top + 12, verdict.status, "end", class_="region-label"))
    legend = legend_block(f.right + 20, f.top + 8, [(c, SHAPES[i % len(SHAPES)], f"c{i % PALETTE_SIZE}")
                                                    for i, c in enumerate(series)])
    description = (f"{arm}: at every look, each criterion's lower confidence bound minus its threshold; above "
                   f"zero the criterion holds at that look's level. The vertical line marks where {arm} stopped.")
    return svg.figure(f.width, f.height, f"{arm}: bounds against n", description, [*body, *marks, legend],
                      data_plot="looks", data_arm=arm)
