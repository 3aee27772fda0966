"""report.html in a real headless Chromium, rendered from a stored run (tests/fixtures/run, made by
tests/fixtures/make_run_fixture.py from a real SmolLM2 run): no console errors, no network, one marker per
arm, the decision text equal to decision.json, model outputs and task names shown as text, never run."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from release_gate.reporting import render_report
from release_gate.reporting.browser import open_report
from release_gate.reporting.render import index_ranges
from release_gate.reporting.svg import dodge, element, nice_ticks

from factories import promote_in

FIXTURE = Path(__file__).parent / "fixtures" / "run"
#: Screenshots for a person to look at (reports/* is gitignored).
ARTIFACTS = Path(__file__).resolve().parents[1] / "reports" / "test-artifacts"
SCRIPT = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'
#: No "/" (the task name is also a file name under items/).
TASK = 'csqa<script>window.__xss=3"><img src=x onerror="window.__xss=4">'
PLOTS_JS = """() => Array.from(document.querySelectorAll('svg[data-plot]')).map(svg => ({
    plot: svg.dataset.plot, arm: svg.dataset.arm || null, width: svg.getBoundingClientRect().width,
    markers: Array.from(svg.querySelectorAll('.marker[data-arm]')).map(m => m.dataset.arm)}))"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def read(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))


def write(run_dir: Path, document: dict[str, Any]) -> None:
    (run_dir / "decision.json").write_text(json.dumps(document, indent=1), encoding="utf-8")


def candidates(document: dict[str, Any]) -> list[str]:
    return [arm for arm, info in document["arms"].items() if info["role"] in ("variant", "control")]


def plots_by_kind(page) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for plot in page.evaluate(PLOTS_JS):
        found.setdefault(plot["plot"], []).append(plot)
    return found


def check_decision(page, document: dict[str, Any]) -> None:
    """The badge and the promoted arm say what decision.json says, on the first screen."""
    assert page.inner_text("#outcome").strip() == document["outcome"]
    assert page.get_attribute("#decision", "data-outcome") == document["outcome"]
    promoted = document["promoted"]
    if promoted:
        assert page.inner_text("#promoted-arm").strip() == promoted["arm"]
    else:
        assert page.locator("#promoted-arm").count() == 0
    assert page.inner_text("#decision .why").strip() == document["reasons"][0]
    for selector in ("#decision", "#criteria", 'svg[data-plot="reward-risk"]'):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["y"] < page.viewport_size["height"], f"{selector} is below the first screen"
    assert page.locator("#criteria tbody tr").count() == len(document["variants"])


def test_report_renders_in_chromium(run_dir: Path) -> None:
    document = read(run_dir)
    path = render_report(run_dir)
    assert path == run_dir / "report.html"
    with open_report(path) as opened:
        page = opened.page
        assert opened.errors == []
        assert opened.external_requests() == []
        check_decision(page, document)
        plots = plots_by_kind(page)
        guards = [t for t, v in document["tasks"].items() if v["role"] == "guard"]
        assert len(plots["reward-risk"]) == max(1, len(guards))
        for plot in plots["reward-risk"]:
            assert sorted(plot["markers"]) == sorted(candidates(document))
        variants = list(document["variants"])
        assert Counter(plots["guided-random"][0]["markers"]) == {v: len(document["tasks"]) + 1 for v in variants}
        assert Counter(plots["forest"][0]["markers"]) == Counter(c["arm"] for c in document["comparisons"])
        assert sorted(p["arm"] for p in plots["alpha-map"]) == sorted(candidates(document))
        assert len(plots["spectrum"]) == 1
        assert len(plots["alignment"]) == 2 * len(json.loads((run_dir / "inspect.json").read_text())["alignment"])
        assert all(p["width"] > 100 for kind in plots.values() for p in kind)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"))
        page.emulate_media(color_scheme="dark")
        background = page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
        assert background != "rgb(255, 255, 255)"
        page.screenshot(path=str(ARTIFACTS / "report-dark.png"))
        page.emulate_media(media="print", color_scheme="dark")
        assert page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor") == "rgb(255, 255, 255)"
        assert not page.locator("nav.toc").is_visible()
        assert opened.errors == []
    print(f"screenshots: {ARTIFACTS / 'report.png'}, {ARTIFACTS / 'report-dark.png'}")


def test_sortable_tables_sort(run_dir: Path) -> None:
    with open_report(render_report(run_dir)) as opened:
        page = opened.page
        page.click("#comparisons thead th:nth-child(7)")
        values = [float(v) for v in page.eval_on_selector_all(
            "#comparisons tbody td:nth-child(7)", "cells => cells.map(c => c.dataset.sort)")]
        assert values == sorted(values)
        assert opened.errors == []


def rename(value: Any, old: str, new: str) -> Any:
    """``value`` with every string (and key) equal to ``old`` replaced by ``new``."""
    if isinstance(value, dict):
        return {rename(k, old, new): rename(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rename(v, old, new) for v in value]
    return new if value == old else value


def inject(run_dir: Path, task: str) -> None:
    """Rename ``task`` to the hostile name and make every variant disagree with baseline on a hostile output."""
    write(run_dir, rename(read(run_dir), task, TASK))
    for path in sorted((run_dir / "items").glob(f"*/{task}.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        metric = next(iter(rows[0]["metrics"]))
        rows[0]["metrics"][metric] = 0.0 if path.parent.name == "baseline" else 1.0
        rows[0]["response"] = SCRIPT
        rows[0]["prompt"] = SCRIPT
        path.unlink()
        (path.parent / f"{TASK}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_model_outputs_and_task_names_render_as_text(run_dir: Path) -> None:
    task = next(iter(read(run_dir)["tasks"]))
    inject(run_dir, task)
    with open_report(render_report(run_dir)) as opened:
        page = opened.page
        assert page.evaluate("() => window.__xss") is None
        assert opened.errors == []
        assert page.locator("img").count() == 0
        assert page.locator("script").count() == 1
        assert SCRIPT in page.locator("pre.response").first.inner_text()
        assert TASK in page.inner_text("#tasks")
        assert TASK in page.locator('svg[data-plot="forest"]').text_content()


def test_promote_highlights_the_winner(run_dir: Path) -> None:
    winner = next(iter(read(run_dir)["variants"]))
    document = promote_in(read(run_dir), winner, "0" * 64).to_json()
    write(run_dir, document)
    with open_report(render_report(run_dir)) as opened:
        page = opened.page
        check_decision(page, document)
        halo = page.locator(f'svg[data-plot="reward-risk"] .s-winner[data-arm="{winner}"] .halo')
        assert halo.count() == len(page.locator('svg[data-plot="reward-risk"]').all())
        assert page.locator(f'#criteria tbody tr[data-arm="{winner}"]').get_attribute("data-arm") == winner
        assert page.locator("#criteria tbody tr").first.get_attribute("data-arm") == winner
        assert opened.errors == []


def test_svg_primitives() -> None:
    assert str(element("text", {"data_arm": 'a"<b>'}, "<x>&")) == '<text data-arm="a&#34;&lt;b&gt;">&lt;x&gt;&amp;</text>'
    assert nice_ticks(-0.104, 0.104) == [-0.1, -0.05, 0.0, 0.05, 0.1]
    assert dodge([10, 10, 10], 12, 0, 100) == [10, 22, 34]
    assert dodge([95, 96], 12, 0, 100) == [88, 100]


def test_calibration_indices_are_summarised() -> None:
    assert index_ranges([0, 1, 2, 5, 9, 10]) == "6 rows: 0–2, 5, 9–10"
    assert index_ranges([]) == "none recorded"
