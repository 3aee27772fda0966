"""Store first, then the backend: every arm on every task, chunk by chunk, whatever the backend.

Items are scored in :func:`~.runner.chunks` of at most ``CHUNK_ITEMS`` items, and each (arm, chunk)
is stored as soon as it is scored, so a kill loses at most one chunk per arm. Arms that lack the same
items of a chunk go to the backend together (the vLLM backend answers them in one engine pass).
Another run on the same store may be scoring the same chunk: its items are read under the store's
locks rather than scored twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from ..errors import RuntimeFailure
from .engine import Arm
from .progress import Progress, progress_or_own
from .protocol import EvaluationBackend
from .runner import BuiltTask, ResolvedTask, chunks, stored_items
from .store import Item, ItemStore

logger = logging.getLogger(__name__)


def evaluate(
    backend: EvaluationBackend, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], store: ItemStore,
    sizes: Mapping[str, int] | None = None, *, progress: Progress | None = None, template: str | None = None,
    start: Callable[[], None] | None = None,
) -> dict[tuple[str, str], list[Item]]:
    """Scores of every arm on the first ``sizes[task]`` items of every task, evaluating only what the store lacks.

    Returns items by (arm, task) in sampled order. A task whose request says ``chat_template`` has its
    prompts rendered with the backend's chat template (``template``, default :meth:`~.protocol.
    EvaluationBackend.template`), which is part of its store key. ``progress`` (the caller's, across
    looks) counts arm × items; without one, this call shows its own. ``start`` (default: the backend's)
    runs before the first item the store lacks, once per call: a run whose items another run scored
    while it waited on the store's locks starts nothing.
    """
    engine_key = backend.store_key()
    if any(t.request.chat_template for t in tasks) and template is None:
        template = backend.template()
    wanted = {t.request.name: t.doc_ids((sizes or {}).get(t.request.name)) for t in tasks}
    expected = {(a.name, task): len(ids) for a in arms for task, ids in wanted.items()}
    scorer = _Scorer(backend, store, start or backend.start)
    with progress_or_own(progress, expected) as progress:
        out: dict[tuple[str, str], list[Item]] = {}
        for resolved in tasks:
            name = resolved.request.name
            task = BuiltTask(resolved)
            stored = {arm.name: stored_items(store, arm, task, template, wanted[name], engine_key) for arm in arms}
            for arm in arms:
                progress.add(arm.name, name, stored[arm.name], scored=False)
            for chunk in chunks(wanted[name]):
                scorer.complete(task, chunk, arms, (name, task.store_key(template, chunk), engine_key), stored, progress)
            for arm in arms:
                out[(arm.name, name)] = [stored[arm.name][d] for d in wanted[name] if d in stored[arm.name]]
                if len(out[(arm.name, name)]) != len(wanted[name]):
                    raise RuntimeFailure(f"{arm.name} / {name}: lm-eval returned {len(out[(arm.name, name)])} of "
                                         f"{len(wanted[name])} items")
    return out


class _Scorer:
    """The backend behind the store's locks, started on the first item the store lacks."""

    def __init__(self, backend: EvaluationBackend, store: ItemStore, start: Callable[[], None]) -> None:
        self.backend, self.store, self._start = backend, store, start
        self._started = False

    def complete(self, task: BuiltTask, chunk: list[int], arms: Sequence[Arm], where: tuple[str, str, str],
                 stored: dict[str, dict[int, Item]], progress: Progress) -> None:
        """Score what the arms lack of ``chunk``, re-reading the store under its locks first."""
        name = where[0]
        lacking = [arm for arm in arms if any(d not in stored[arm.name] for d in chunk)]
        if not lacking:
            return
        with self.store.locked(lacking, *where):
            for arm in lacking:
                found = {d: item for d, item in self.store.load(arm, *where).items() if d in chunk}
                stored[arm.name].update(found)
                progress.add(arm.name, name, found, scored=False)
            missing = {arm.name: [d for d in chunk if d not in stored[arm.name]] for arm in lacking}
            if task.resolved.random_fewshot:  # prompts depend on the whole chunk: it is built and stored whole
                missing = {arm: list(chunk) if ids else [] for arm, ids in missing.items()}
            for ids, group in _groups(lacking, missing).items():
                self._score(task, ids, group, where, stored, progress)

    def _score(self, task: BuiltTask, ids: tuple[int, ...], group: list[Arm], where: tuple[str, str, str],
               stored: dict[str, dict[int, Item]], progress: Progress) -> None:
        """Score ``ids`` for every arm of ``group`` and store each arm's items as soon as they come."""
        if not self._started:
            self._start()
            self._started = True
        name = where[0]
        logger.debug("%s: %d new items for %s", name, len(ids), ", ".join(a.name for a in group))
        answers = self.backend.score(group, task, ids)
        for arm in group:
            with progress.scoring(f"{arm.name} / {name}"):
                items = next(answers)
            self.store.save(arm, *where, items)
            stored[arm.name].update({i.doc_id: i for i in items})
            progress.add(arm.name, name, (i.doc_id for i in items), scored=True)


def _groups(arms: Sequence[Arm], missing: Mapping[str, list[int]]) -> dict[tuple[int, ...], list[Arm]]:
    """Arms that lack exactly the same items, by those items (arms lacking nothing are left out)."""
    groups: dict[tuple[int, ...], list[Arm]] = {}
    for arm in arms:
        if missing[arm.name]:
            groups.setdefault(tuple(missing[arm.name]), []).append(arm)
    return groups
