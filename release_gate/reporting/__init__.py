"""The self-contained HTML report of a run (SPEC §8): SVG plots drawn here, jinja templates in ``templates/``."""

from .render import render_report

__all__ = ["render_report"]
