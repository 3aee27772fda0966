"""Re-render a run's report.html and save a PNG of its first screen (the README's docs/report.png).

Usage: ``.venv/bin/python scripts/screenshot_report.py RUN_DIR OUT.png [--full-page] [--dark]``

Uses the same headless Chromium helper as tests/test_report.py (Debian's chromium,
driven by playwright); refuses to save a screenshot of a page that logged errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from release_gate.reporting import render_report
from release_gate.reporting.browser import screenshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished release-gate run directory")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--full-page", action="store_true", help="the whole report, not only the first screen")
    parser.add_argument("--dark", action="store_true", help="render with prefers-color-scheme: dark")
    args = parser.parse_args(argv)
    report = render_report(args.run_dir)
    screenshot(report, args.out, full_page=args.full_page, color_scheme="dark" if args.dark else "light")
    print(f"{report} → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
