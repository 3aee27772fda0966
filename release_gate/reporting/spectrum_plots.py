"""The report's spectral plots (SPEC §8): σ before/after an edit, α heat maps, cross-layer alignment.

Drawn from the variants' ``spectral_edit.json`` sidecars and the input adapter's ``inspect.json``
(paper Fig. 1); the decision only picks the colours and which arm's module is shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from ..document import DecisionDocument
from ..schema import Standing
from . import svg
from .plots import color_class, legend_block

# --- (1) spectra ----------------------------------------------------------------------------------------


def chosen_module(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The module the variant changed most (relative L1 change of σ), ties by name."""
    def change(m: Mapping[str, Any]) -> float:
        total = sum(m["sigma"]) or 1.0
        return sum(abs(a - b) for a, b in zip(m["sigma_new"], m["sigma"])) / total
    return max(sidecar["modules"], key=lambda m: (change(m), m["name"]))


def spectrum(document: DecisionDocument, sidecars: Mapping[str, Mapping[str, Any]], arm: str) -> Markup:
    """σ before and after every arm's edit for the module ``arm`` changed most."""
    module = chosen_module(sidecars[arm])
    name = module["name"]
    by_arm = {a: next(m for m in s["modules"] if m["name"] == name) for a, s in sidecars.items()}
    rank = len(module["sigma"])
    peak = max(max(m["sigma_new"]) for m in by_arm.values())
    f = svg.frame(620, 320, (0.5, rank + 0.5), (0.0, svg.domain([0.0, peak, max(module["sigma"])], pad=0.04)[1]),
                  margins=(62, 20, 200, 46))
    ks = range(1, rank + 1)
    body = [svg.axis_x(f, "component k (by σ before the edit)", lambda v: f"{v:g}",
                       ticks=[k for k in ks if rank <= 16 or k % 4 in (0, 1)]),
            svg.axis_y(f, "singular value σ", lambda v: f"{v:.3g}"),
            svg.polyline([(f.x(k), f.y(s)) for k, s in zip(ks, module["sigma"])], class_="before"),
            *(svg.marker(f.x(k), f.y(s), "circle", 4.0, class_="before-point") for k, s in zip(ks, module["sigma"]))]
    for a, m in by_arm.items():
        dashed = "4 3" if document.standing(a) == Standing.CONTROL else None
        body.append(svg.group([svg.polyline([(f.x(k), f.y(s)) for k, s in zip(ks, m["sigma_new"])],
                                             stroke_dasharray=dashed),
                               *(svg.marker(f.x(k), f.y(s), "circle", 2.2) for k, s in zip(ks, m["sigma_new"]))],
                              class_=f"series {color_class(document, a)}", data_arm=a))
    legend = legend_block(f.right + 24, f.top + 8, [("before (baseline)", "square", "before-key")],
                          [(a, "circle", color_class(document, a)) for a in by_arm])
    return svg.figure(f.width, f.height, f"Spectrum of {name}", f"σ before and after each edit of {name}.",
                      [*body, legend], data_plot="spectrum", data_module=name)


def layer_rows(modules: Sequence[Mapping[str, Any]]) -> list[int | None]:
    return sorted({m["layer"] for m in modules}, key=lambda v: -1 if v is None else v)


def alpha_map(arm: str, sidecar: Mapping[str, Any], cell: float = 5.0) -> Markup:
    """α per component as a heat map: rows = layers, columns = module kinds × components (log₂ scale)."""
    modules = sidecar["modules"]
    kinds = list(dict.fromkeys(m["kind"] for m in modules))
    layers = layer_rows(modules)
    rank = max(len(m["alpha"]) for m in modules)
    limit = min(3.0, max(0.05, *(abs(log2(a)) for m in modules for a in m["alpha"])))
    left, top, gap = 34.0, 34.0, 8.0
    width = left + len(kinds) * (rank * cell + gap) + 8
    height = top + len(layers) * cell + 52
    body = []
    for j, kind in enumerate(kinds):
        x0 = left + j * (rank * cell + gap)
        body.append(svg.text(x0 + rank * cell / 2, top - 6, kind, "middle", class_="small"))
    for m in modules:
        x0 = left + kinds.index(m["kind"]) * (rank * cell + gap)
        y0 = top + layers.index(m["layer"]) * cell
        cells = [svg.cell(x0 + k * cell, y0, cell, cell, svg.diverging(log2(a), limit))
                 for k, a in enumerate(m["alpha"])]
        tip = f"{m['name']}: α = " + ", ".join(f"{a:.2f}" for a in m["alpha"])
        body.append(svg.group([*cells, svg.title(tip)]))
    for i, layer in enumerate(layers):
        if len(layers) <= 12 or i % 5 == 0:
            body.append(svg.text(left - 4, top + i * cell + cell - 1, "–" if layer is None else str(layer), "end",
                                 class_="small"))
    body.append(svg.text(8, top - 6, "layer", class_="small"))
    bar_y = top + len(layers) * cell + 12
    bar_w = min(width - left - 12, 150.0)
    body.append(svg.color_bar(left, bar_y, bar_w, 8, lambda v: svg.diverging(v, limit), -limit, limit,
                              [(-limit, f"×{2 ** -limit:.2g}"), (0.0, "×1"), (limit, f"×{2 ** limit:.2g}")]))
    return svg.figure(width, height, f"α of {arm}", f"Per-component scaling α of every edited module of {arm}.",
                      [svg.text(8, 14, arm, class_="map-title"), *body], data_plot="alpha-map", data_arm=arm)


def log2(value: float) -> float:
    """log₂ with α = 0 (a removed component) pinned far below any colour limit."""
    return math.log2(value) if value > 0 else -math.inf


# --- (2) alignment (paper Fig. 1) -----------------------------------------------------------------------


def matrix_map(name: str, layers: Sequence[Any], matrix: Sequence[Sequence[float]], random: float,
               cell: float = 7.0) -> Markup:
    """A layer × layer heat map; colour saturates at the largest off-diagonal value (the diagonal is 1)."""
    n = len(layers)
    off = [matrix[i][j] for i in range(n) for j in range(n) if i != j]
    hi = max([*off, random * 2, 1e-6])
    left, top = 34.0, 28.0
    size = n * cell
    body = [svg.text(left, 14, name, class_="map-title")]
    for i in range(n):
        for j in range(n):
            body.append(svg.cell(left + j * cell, top + i * cell, cell, cell, svg.sequential(matrix[i][j], 0, hi),
                                 f"layers {layers[i]} × {layers[j]}: {matrix[i][j]:.3f}" if n <= 12 else None))
    for i, layer in enumerate(layers):
        if n <= 12 or i % 5 == 0:
            body += [svg.text(left - 4, top + i * cell + cell - 1, str(layer), "end", class_="small"),
                     svg.text(left + i * cell + cell / 2, top + size + 11, str(layer), "middle", class_="small")]
    body.append(svg.color_bar(left, top + size + 22, min(size, 160.0), 8, lambda v: svg.sequential(v, 0, hi),
                              0.0, hi, [(0.0, "0"), (hi, f"{hi:.2f}")]))
    random_x = left + min(size, 160.0) * random / hi
    body += [svg.line(random_x, top + size + 30, random_x, top + size + 46, class_="axis-line"),
             svg.text(random_x, top + size + 56, "random", "start" if random_x < left + 20 else "middle",
                      class_="small")]
    return svg.figure(left + size + 10, top + size + 62, name, f"{name} between every pair of layers.", body,
                      data_plot="alignment")


def alignment_maps(inspect: Mapping[str, Any]) -> list[Markup]:
    """Per residual-writing projection: |u₁ᵀu₁′| and top-m subspace overlap across layers."""
    maps = []
    for kind, block in inspect.get("alignment", {}).items():
        if len(block["layers"]) < 2:
            continue
        maps.append(matrix_map(f"{kind}: |u₁·u₁′|", block["layers"], block["u1_abs_cos"],
                               block["random_u1_abs_cos"]))
        maps.append(matrix_map(f"{kind}: Align_U (top-{block['m']})", block["layers"], block["align_u"],
                               block["random_align_u"]))
    return maps


def cross_module(inspect: Mapping[str, Any]) -> Markup | None:
    """o_proj vs down_proj top-m overlap within each layer, against the random-subspace level."""
    block = inspect.get("cross_module")
    if not block:
        return None
    layers, values = block["layers"], block["align_u"]
    f = svg.frame(620, 220, (-0.5, len(layers) - 0.5), (0.0, svg.domain([0.0, *values])[1]),
                  margins=(62, 16, 110, 44))
    width = (f.right - f.left) / len(layers) * 0.7
    ticks = [i for i in range(len(layers)) if len(layers) <= 16 or i % 5 == 0]
    body = [svg.axis_x(f, "layer", lambda v: str(layers[int(v)]), ticks=ticks),
            svg.axis_y(f, f"Align_U (top-{block['m']})", lambda v: f"{v:.2g}")]
    body += [svg.element("rect", {"x": f.x(i) - width / 2, "y": f.y(v), "width": width,
                                  "height": f.y(0) - f.y(v), "class_": "bar"},
                         svg.title(f"layer {layers[i]}: {v:.3f}"))
             for i, v in enumerate(values)]
    body += [svg.line(f.left, f.y(block["random_align_u"]), f.right, f.y(block["random_align_u"]), class_="budget"),
             svg.text(f.right + 6, f.y(block["random_align_u"]) + 4, "random level", class_="budget-label")]
    return svg.figure(f.width, f.height, "o_proj vs down_proj within a layer",
                      "Top-m subspace overlap of the two residual writers of each layer.", body,
                      data_plot="cross-module")
