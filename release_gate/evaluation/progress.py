"""One progress bar for a run's evaluation, counted in arm × items, with a rate and ETA that can be trusted.

tqdm's own rate counts every update: items answered from the store would make a resumed run look
fast, and one slow first update (the engine's warm-up, a whole task at once) makes an ETA of hours.
Here the rate is items *scored* in this run over the seconds spent scoring them, and no ETA is shown
until a first chunk has been scored. The total is what the gate may still ask for: every item of
every task for each arm it asked about at its last look (an arm it stops asking about is done), so
it is exact for a fixed design and shrinks as a sequential design stops arms.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..runlog import console

#: tqdm's layout less its own rate and ETA (the postfix carries ours).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"


class Progress:
    """Counts (arm, task, item) triples once each; ``expect`` sets what may still come, ``add`` what came."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, **bar_options: Any) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.clock = clock
        self.bar = tqdm(total=0, desc="evaluation", unit="arm×items", bar_format=BAR_FORMAT, **bar_options)
        self._stack = contextlib.ExitStack()  # log lines print above the bar, not through it
        terminal = [lg for lg in (logging.getLogger("release_gate"), logging.getLogger())
                    if any(console(h) for h in lg.handlers)]
        if terminal:
            self._stack.enter_context(logging_redirect_tqdm(terminal, tqdm_class=type(self.bar)))
        self.have: dict[tuple[str, str], set[int]] = {}
        self.scored = 0
        self.seconds = 0.0
        self.doing = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()
        self._stack.close()

    def expect(self, sizes: Mapping[tuple[str, str], int]) -> None:
        """The (arm, task) pairs asked for now and their full sizes; pairs not asked for are complete."""
        planned = {pair: len(ids) for pair, ids in self.have.items()} | dict(sizes)
        self.bar.total = sum(max(n, len(self.have.get(pair, ()))) for pair, n in planned.items())
        self._show()

    def add(self, arm: str, task: str, doc_ids: Iterable[int], *, scored: bool) -> None:
        """Items of (arm, task) now at hand: answered from the store, or ``scored`` in this run."""
        have = self.have.setdefault((arm, task), set())
        new = set(doc_ids) - have
        have |= new
        self.scored += len(new) if scored else 0
        self.bar.update(len(new))
        self._show()

    @contextlib.contextmanager
    def scoring(self, what: str) -> Iterator[None]:
        """Time spent scoring (the rate's denominator); ``what`` is shown while it runs."""
        self.doing = what
        self._show()
        started = self.clock()
        try:
            yield
        finally:
            self.seconds += self.clock() - started
            self.doing = ""

    @property
    def rate(self) -> float | None:
        """Items scored per second in this run; None before the first chunk is scored."""
        return self.scored / self.seconds if self.scored and self.seconds > 0 else None

    def eta(self) -> str | None:
        rate = self.rate
        if rate is None:
            return None
        left = max(0, (self.bar.total or 0) - self.bar.n)
        return str(datetime.timedelta(seconds=round(left / rate)))

    def postfix(self) -> str:
        rate = self.rate
        if rate is not None:
            parts = [f"{rate:.2f} items/s, ETA {self.eta()}"]
        else:
            parts = ["rate and ETA after the first chunk"] if self.doing else []
        return ", ".join(parts + ([self.doing] if self.doing else []))

    def _show(self) -> None:
        self.bar.set_postfix_str(self.postfix(), refresh=True)


@contextlib.contextmanager
def progress_or_own(progress: Progress | None, expected: Mapping[tuple[str, str], int]) -> Iterator[Progress]:
    """The caller's ``progress`` (one bar across looks), or a bar of this call's own expecting ``expected``."""
    if progress is not None:
        yield progress
        return
    with Progress() as own:
        own.expect(expected)
        yield own
