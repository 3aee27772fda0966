"""SVG plot primitives for the report: scales, ticks, axes, markers, whiskers, heat-map cells.

Small pure functions that return :class:`markupsafe.Markup`, so jinja's
autoescaping leaves the drawing alone while every piece of *text* that reaches
the SVG (arm names, task names, tooltips) has gone through :func:`escape`
here. Colours of marks come from CSS classes (the template defines them for
light, dark and print); only data-driven heat-map fills are inline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

Attrs = Mapping[str, object]

#: Diverging palette (suppress → unchanged → amplify), ColorBrewer RdBu reversed.
DIVERGING = ("#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b")
#: Sequential palette (viridis stops): legible on white and on dark backgrounds.
SEQUENTIAL = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")


def num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros (keeps the file small)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def element(tag: str, attrs: Attrs | None = None, *children: str) -> Markup:
    """``<tag attrs>children</tag>``; attribute values and plain-``str`` children are escaped.

    Attribute names use ``_`` for ``-`` (``data_arm`` → ``data-arm``) and a
    trailing ``_`` for Python keywords (``class_``); ``None`` drops the attribute.
    """
    parts = [tag]
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        shown = num(value) if isinstance(value, float) else str(value)
        parts.append(f'{name}="{escape(shown)}"')
    opening = " ".join(parts)
    if not children:
        return Markup(f"<{opening}/>")
    return Markup(f"<{opening}>{''.join(escape(c) for c in children)}</{tag}>")


def group(children: Iterable[str], **attrs: object) -> Markup:
    """``<g>`` around already-built elements (plain strings among them are escaped)."""
    return element("g", attrs, *children)


def title(text: str) -> Markup:
    """A hover tooltip (and accessible name) for the enclosing element."""
    return element("title", None, text)


def text(x: float, y: float, content: str, anchor: str = "start", **attrs: object) -> Markup:
    """Escaped text at (x, y); ``anchor`` is start | middle | end."""
    return element("text", {"x": float(x), "y": float(y), "text-anchor": anchor, **attrs}, content)


def line(x1: float, y1: float, x2: float, y2: float, **attrs: object) -> Markup:
    return element("line", {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2), **attrs})


def rect(x: float, y: float, width: float, height: float, **attrs: object) -> Markup:
    """A rectangle normalised to non-negative width and height."""
    return element("rect", {"x": float(min(x, x + width)), "y": float(min(y, y + height)),
                            "width": float(abs(width)), "height": float(abs(height)), **attrs})


def polyline(points: Sequence[tuple[float, float]], **attrs: object) -> Markup:
    return element("polyline", {"points": " ".join(f"{num(x)},{num(y)}" for x, y in points),
                                "fill": "none", **attrs})


def polygon(points: Sequence[tuple[float, float]], **attrs: object) -> Markup:
    return element("polygon", {"points": " ".join(f"{num(x)},{num(y)}" for x, y in points), **attrs})


def marker(x: float, y: float, shape: str = "circle", size: float = 5.0, **attrs: object) -> Markup:
    """A point mark: circle, square, diamond or triangle, ``size`` its half-width."""
    if shape == "circle":
        return element("circle", {"cx": float(x), "cy": float(y), "r": float(size), **attrs})
    s = size
    corners = {
        "square": [(-s * 0.9, -s * 0.9), (s * 0.9, -s * 0.9), (s * 0.9, s * 0.9), (-s * 0.9, s * 0.9)],
        "diamond": [(0, -s * 1.25), (s * 1.25, 0), (0, s * 1.25), (-s * 1.25, 0)],
        "triangle": [(0, -s * 1.2), (s * 1.1, s * 0.9), (-s * 1.1, s * 0.9)],
    }[shape]
    return polygon([(x + dx, y + dy) for dx, dy in corners], **attrs)


def whisker(x1: float, y1: float, x2: float, y2: float, cap: float = 4.0, open_low: bool = False,
            open_high: bool = False, **attrs: object) -> Markup:
    """An interval from (x1, y1) to (x2, y2) with perpendicular end caps.

    An *open* end (the bound is unbounded, ``null`` in the JSON) gets no cap
    and a dashed stroke, so it cannot be read as a finite bound.
    """
    length = math.hypot(x2 - x1, y2 - y1) or 1.0
    px, py = -(y2 - y1) / length * cap, (x2 - x1) / length * cap
    dashed = "3 2" if open_low or open_high else None
    parts = [line(x1, y1, x2, y2, stroke_dasharray=dashed)]
    for x, y, is_open in ((x1, y1, open_low), (x2, y2, open_high)):
        if not is_open:
            parts.append(line(x - px, y - py, x + px, y + py))
    return group(parts, class_="whisker", **attrs)


# --- scales ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """A linear map from a data domain ``[lo, hi]`` to a pixel range ``[start, end]`` (may be reversed)."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def clamp(self, value: float) -> float:
        """The pixel position of ``value`` pinned inside the domain."""
        return self(min(self.hi, max(self.lo, value)))

    def ticks(self, count: int = 5) -> list[float]:
        return nice_ticks(self.lo, self.hi, count)


def nice_step(span: float, count: int) -> float:
    """A 1-2-2.5-5 × 10ⁿ step giving about ``count`` intervals over ``span``."""
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values inside ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if t == 0 else t for t in ticks]


def domain(values: Iterable[float | None], include: Iterable[float] = (), pad: float = 0.08,
           minimum_span: float = 0.01) -> tuple[float, float]:
    """A padded, tick-aligned domain covering the finite ``values`` and every ``include`` value.

    ``None`` and infinite values are skipped (open bounds are drawn to the edge).
    """
    finite = [float(v) for v in (*values, *include) if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, minimum_span)
    if hi - lo < minimum_span:
        middle = (hi + lo) / 2
        lo, hi = middle - minimum_span / 2, middle + minimum_span / 2
    margin = (hi - lo) * pad
    step = nice_step(hi - lo + 2 * margin, 5)
    return math.floor((lo - margin) / step) * step, math.ceil((hi + margin) / step) * step


# --- frames and axes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The plotting area of one chart: outer size, margins, and the two scales."""

    width: float
    height: float
    left: float
    top: float
    right: float
    bottom: float
    x: Scale
    y: Scale


def frame(width: float, height: float, x_domain: tuple[float, float], y_domain: tuple[float, float],
          margins: tuple[float, float, float, float] = (56, 16, 16, 44)) -> Frame:
    """A frame with ``margins`` = (left, top, right, bottom); y grows upwards."""
    left, top, right, bottom = margins
    x = Scale(x_domain[0], x_domain[1], left, width - right)
    y = Scale(y_domain[0], y_domain[1], height - bottom, top)
    return Frame(width, height, left, top, width - right, height - bottom, x, y)


def axis_x(f: Frame, label: str, fmt, ticks: Sequence[float] | None = None) -> Markup:
    """Bottom axis with vertical grid lines, tick labels via ``fmt`` and a centred title."""
    parts = []
    for t in ticks if ticks is not None else f.x.ticks():
        x = f.x(t)
        parts += [line(x, f.top, x, f.bottom, class_="grid"), text(x, f.bottom + 14, fmt(t), "middle")]
    parts += [line(f.left, f.bottom, f.right, f.bottom, class_="axis-line"),
              text((f.left + f.right) / 2, f.height - 6, label, "middle", class_="axis-title")]
    return group(parts, class_="axis axis-x")


def axis_y(f: Frame, label: str, fmt, ticks: Sequence[float] | None = None) -> Markup:
    """Left axis with horizontal grid lines, tick labels via ``fmt`` and a rotated title."""
    parts = []
    for t in ticks if ticks is not None else f.y.ticks():
        y = f.y(t)
        parts += [line(f.left, y, f.right, y, class_="grid"), text(f.left - 6, y + 4, fmt(t), "end")]
    middle = (f.top + f.bottom) / 2
    parts += [line(f.left, f.top, f.left, f.bottom, class_="axis-line"),
              text(14, middle, label, "middle", class_="axis-title", transform=f"rotate(-90 14 {num(middle)})")]
    return group(parts, class_="axis axis-y")


def figure(width: float, height: float, name: str, description: str, body: Iterable[str],
           **attrs: object) -> Markup:
    """A standalone responsive ``<svg>`` with an accessible title and description."""
    return element("svg", {"viewBox": f"0 0 {num(width)} {num(height)}", "width": float(width),
                           "role": "img", "class_": "plot", **attrs},
                   title(name), element("desc", None, description), *body)


# --- labels ---------------------------------------------------------------------------------------------


def dodge(positions: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Shift label baselines apart by at least ``gap`` (keeping their order), inside ``[low, high]``.

    A greedy sweep down then up: enough for the handful of arms of a run.
    """
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    placed = [positions[i] for i in order]
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    if placed and placed[-1] > high:
        placed[-1] = high
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(positions)
    for k, i in enumerate(order):
        out[i] = max(low, placed[k])
    return out


# --- colour ---------------------------------------------------------------------------------------------


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(max(0.0, min(255.0, c))):02x}" for c in rgb)


def interpolate(palette: Sequence[str], t: float) -> str:
    """The colour at ``t`` ∈ [0, 1] along ``palette`` (linear in RGB between stops)."""
    t = min(1.0, max(0.0, t)) * (len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    a, b = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in (palette[i], palette[i + 1]))
    return _hex([x + (y - x) * (t - i) for x, y in zip(a, b)])


def sequential(value: float, lo: float, hi: float) -> str:
    """Viridis colour of ``value`` on ``[lo, hi]`` (saturates outside)."""
    return interpolate(SEQUENTIAL, (value - lo) / (hi - lo) if hi > lo else 0.0)


def diverging(value: float, limit: float) -> str:
    """Blue below 0, neutral at 0, red above, saturating at ±``limit``."""
    return interpolate(DIVERGING, 0.5 + 0.5 * (value / limit if limit > 0 else 0.0))


def cell(x: float, y: float, width: float, height: float, fill: str, tooltip: str | None = None) -> Markup:
    """One heat-map cell (with an escaped tooltip when given)."""
    if tooltip is None:
        return rect(x, y, width, height, fill=fill)
    return element("rect", {"x": float(x), "y": float(y), "width": float(width), "height": float(height),
                            "fill": fill}, title(tooltip))


def color_bar(x: float, y: float, width: float, height: float, color, lo: float, hi: float,
              labels: Sequence[tuple[float, str]], steps: int = 24) -> Markup:
    """A horizontal legend: ``color(v)`` for v over ``[lo, hi]``, with ``labels`` at given values."""
    step = width / steps
    parts = [rect(x + k * step, y, step + 0.5, height, fill=color(lo + (hi - lo) * (k + 0.5) / steps))
             for k in range(steps)]
    for value, label in labels:
        px = x + (value - lo) / (hi - lo) * width
        parts += [line(px, y + height, px, y + height + 3, class_="axis-line"),
                  text(px, y + height + 13, label, "middle", class_="small")]
    return group(parts, class_="color-bar")
