"""Tasks as lm-eval loads and scores them, for every backend: loaded once, built once per chunk.

lm-eval builds requests and scores items; a backend only answers the requests
(:mod:`.protocol`). Each task is loaded once (:func:`resolve_task`) and its
requests are built once per chunk of at most ``CHUNK_ITEMS`` items for every
arm (:class:`BuiltTask`): only the answers differ between arms. The loop that
answers from the store first and scores the rest is :mod:`.scoring`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ..constants import CHUNK_ITEMS
from ..errors import BadInput
from ..files import content_key
from .engine import Arm
from .store import Item, ItemStore
from .tasks import CODE_TASKS, dangling_include

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRequest:
    """One task to score: lm-eval name, the metric the gate reads, and run limits.

    ``metric`` may name a filter (``exact_match,strict-match``); a bare name is
    accepted when the task has a single filter.
    """

    name: str
    metric: str
    limit: int | None = None
    num_fewshot: int | None = None
    max_gen_toks: int | None = None
    chat_template: bool = False

    def gen_kwargs(self) -> str | None:
        return None if self.max_gen_toks is None else f"max_gen_toks={self.max_gen_toks}"


@dataclass(frozen=True)
class ResolvedTask:
    """A task lm-eval has loaded: its content key, the metric key to read, and its items' sampled order.

    ``order`` is a seeded permutation of the evaluation split (``evaluation.sample_seed``): the first n
    items of it are a random sample of the task, and a larger n extends a smaller one. ``key`` leaves
    the limit out, so stored items serve every limit.
    """

    request: TaskRequest
    task: Any
    key: str
    metric_key: str
    order: tuple[int, ...] = ()
    sample_seed: int = 0

    @property
    def size(self) -> int:
        """Items the task scores: its split, capped by ``limit``."""
        limit = self.request.limit
        return min(limit, len(self.order)) if limit else len(self.order)

    @property
    def available(self) -> int:
        return len(self.order)

    def doc_ids(self, n: int | None = None) -> list[int]:
        """The first ``n`` items (default: all ``size``) in sampled order."""
        return list(self.order[: self.size if n is None else min(n, self.size)])

    @property
    def random_fewshot(self) -> bool:
        """Few-shot examples drawn at random: an item's prompt depends on the items built with it."""
        shots = self.task.get_config("num_fewshot") or 0
        fewshot = self.task.get_config("fewshot_config")
        sampler = fewshot.get("sampler", "default") if isinstance(fewshot, dict) else getattr(fewshot, "sampler", "default")
        return shots > 0 and sampler != "first_n"


def sample_order(n_docs: int, seed: int, task: str) -> tuple[int, ...]:
    """A seeded permutation of ``range(n_docs)``, independent per task name."""
    import numpy as np

    entropy = int(content_key({"seed": seed, "task": task}), 16)
    return tuple(int(i) for i in np.random.default_rng(entropy).permutation(n_docs))


def resolve_task(request: TaskRequest, manager: Any, sample_seed: int = 0) -> ResolvedTask:
    """Load ``request.name`` from the task manager and check the metric it must produce.

    The returned task is the one every arm is scored on: ``request``'s
    few-shot and generation settings are applied to it here, once, the way
    ``lm_eval.simple_evaluate`` applies them (the key covers them separately).
    """
    from lm_eval.tasks import get_task_dict

    _seed_like_lm_eval()  # a task's process_docs may shuffle (lm-eval seeds before loading)
    try:
        task = get_task_dict([request.name], manager)[request.name]
    except (KeyError, ValueError) as exc:
        if request.name in CODE_TASKS:
            raise BadInput(f"task {request.name!r} executes model-written code: it runs only with "
                           "allow_code_execution: true") from None
        cause = dangling_include(request.name, getattr(manager, "include_path", None))
        raise BadInput(cause or f"unknown task {request.name!r} ({exc})") from None
    config = task.config
    metrics = [m["metric"] for m in (config.metric_list or [])]
    filters = [f["name"] for f in (config.filter_list or [])] or ["none"]
    metric_key = _metric_key(request, metrics, filters)
    payload = {
        "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
        "num_fewshot": request.num_fewshot, "max_gen_toks": request.max_gen_toks,
        "lm_eval": metadata.version("lm_eval"),
    }
    key = content_key(payload)
    _apply_overrides(task, request)
    return ResolvedTask(request, task, key, metric_key, sample_order(len(task.eval_docs), sample_seed, request.name),
                        sample_seed)


def _apply_overrides(task: Any, request: TaskRequest) -> None:
    """``simple_evaluate``'s per-task overrides: generation kwargs, few-shot count (0 stays 0)."""
    from lm_eval.utils import simple_parse_args_string

    gen_kwargs = request.gen_kwargs()
    if gen_kwargs and task.get_config("output_type") == "generate_until":
        task.set_config(key="generation_kwargs", value=simple_parse_args_string(gen_kwargs), update=True)
    if request.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=request.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)


def _seed_like_lm_eval() -> None:
    """The global seeds ``simple_evaluate`` sets, so a score never depends on what ran before."""
    import random

    import numpy as np
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.utils import set_torch_seed

    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    set_torch_seed(DEFAULT_OTHER_SEED)


def _metric_key(request: TaskRequest, metrics: list[str], filters: list[str]) -> str:
    name, _, filter_name = request.metric.partition(",")
    known = [f"{m},{f}" for f in filters for m in metrics]
    if name not in metrics:
        raise BadInput(f"task {request.name!r} does not produce metric {name!r} (it produces: {', '.join(known)})")
    if filter_name:
        if filter_name not in filters:
            raise BadInput(f"task {request.name!r} has no filter {filter_name!r} (it produces: {', '.join(known)})")
        return request.metric
    if len(filters) > 1:
        raise BadInput(f"task {request.name!r} metric {name!r} is ambiguous: name one of {', '.join(known)}")
    return f"{name},{filters[0]}"


def items_from_samples(samples: Sequence[dict[str, Any]]) -> list[Item]:
    """Per-item scalar metrics (keyed ``metric,filter``) from lm-eval's logged samples."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in samples:
        entry = by_doc.setdefault(int(sample["doc_id"]), {
            "metrics": {}, "target": str(sample.get("target", "")),
            "response": _first_text(sample.get("filtered_resps")), "prompt": _prompt(sample),
            "choice_logprobs": _choice_logprobs(sample), "samples": [],
        })
        entry["samples"].append(json.loads(json.dumps(sample, default=str)))  # lm-eval's own record, as JSON
        if entry["choice_logprobs"] is not None:
            entry["response"] = _chosen(sample, entry["choice_logprobs"])
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                entry["metrics"][f"{metric},{sample.get('filter', 'none')}"] = float(value)
    return [Item(doc_id=doc, **entry) for doc, entry in sorted(by_doc.items())]


def _choice_logprobs(sample: dict[str, Any]) -> list[float] | None:
    """A multiple-choice sample's log-likelihood per choice (``None`` for generated answers)."""
    responses = sample.get("filtered_resps")
    arguments = sample.get("arguments") or []
    if not isinstance(responses, (list, tuple)) or len(arguments) < 2 or len(responses) != len(arguments):
        return None
    scores = [r[0] if isinstance(r, (list, tuple)) else r for r in responses]
    return [float(x) for x in scores] if all(isinstance(x, (int, float)) for x in scores) else None


def _chosen(sample: dict[str, Any], logprobs: list[float]) -> str:
    """What a multiple-choice arm answered: the highest-scoring continuation (the report shows it)."""
    choice = sample["arguments"][max(range(len(logprobs)), key=logprobs.__getitem__)]
    return str(choice[1] if isinstance(choice, (list, tuple)) and len(choice) > 1 else choice).strip()


def _first_text(value: Any) -> str:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return str(value) if value is not None else ""


def _prompt(sample: dict[str, Any]) -> str:
    arguments = sample.get("arguments") or [[""]]
    first = arguments[0]
    return str(first[0] if isinstance(first, (list, tuple)) else first)


class BuiltTask:
    """A resolved task whose lm-eval requests are built once per chunk of items and answered by every arm.

    ``simple_evaluate`` reloads the task, re-renders every prompt (CSQA
    compiles a jinja template per document) and collects an environment
    report (``pip list``) on every call: 2.5 s per arm before any scoring.
    The requests do not depend on the arm, so lm-eval's own ``evaluate`` gets
    this object as the task: its first ``build_all_requests`` for a chunk
    builds them, every later one hands the same requests out with their
    answers cleared (the task keeps holding them: nothing of lm-eval's is
    written). Chunks are passed as lm-eval's ``samples`` (doc indices).
    Everything else is the loaded task's (``__getattr__``), so filters,
    metrics and logged samples are lm-eval's.
    """

    def __init__(self, resolved: ResolvedTask) -> None:
        self.resolved = resolved
        self.chat_template = resolved.request.chat_template
        self._built: tuple[str, list[Any]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolved.task, name)

    def store_key(self, template: str | None, doc_ids: Sequence[int] = ()) -> str:
        """The task part of the store key.

        A chat template (``template``: the tokenizer's) changes prompts and scores. With few-shot
        examples drawn at random, an item's prompt depends on the items built with it, so the key then
        names the whole chunk.
        """
        parts: dict[str, Any] = {"task": self.resolved.key}
        if self.chat_template:
            parts["chat_template"] = template
        if self.resolved.random_fewshot:
            parts["chunk"] = sorted(doc_ids)
        return self.resolved.key if len(parts) == 1 else content_key(parts)

    def build_all_requests(self, *, chat_template: Any = None, **settings: Any) -> None:
        """lm-eval's hook, called once per arm: build on first use (or new settings), else reuse.

        ``chat_template`` is the scoring LM's bound method, new for every arm;
        the prompts it renders depend only on the tokenizer, which
        ``tokenizer_name`` in ``settings`` names.
        """
        from lm_eval.defaults import DEFAULT_OTHER_SEED

        task = self.resolved.task
        key = repr(sorted(settings.items()))
        if self._built is None or self._built[0] != key or task.instances is not self._built[1]:
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
            task.build_all_requests(chat_template=chat_template, **settings)
            self._built = (key, task.instances)
            return
        for instance in self._built[1]:  # the task still holds these requests: only the answers are cleared
            instance.resps, instance.filtered_resps = [], {}

    def score(self, lm: Any, doc_ids: Sequence[int]) -> list[Item]:
        """lm-eval's ``evaluate`` of this task's items ``doc_ids`` with ``lm``: per-item scores."""
        from lm_eval.evaluator import evaluate as lm_eval_evaluate

        if not doc_ids:  # lm-eval reads an empty sample list as "every item"
            return []
        name = self.resolved.request.name
        _seed_like_lm_eval()
        with _without_lm_eval_bars():
            result = lm_eval_evaluate(
                lm=lm, task_dict={"tasks": {name: self}, "groups": {}}, limit=None,
                samples={name: sorted(doc_ids)},  # sorted: lm-eval maps positions back through this list
                bootstrap_iters=0, log_samples=True, apply_chat_template=self.chat_template,
                fewshot_as_multiturn=True,  # simple_evaluate's default
            )
        return items_from_samples(result["samples"][name])


@contextlib.contextmanager
def _without_lm_eval_bars() -> Iterator[None]:
    """lm-eval draws progress bars of its own in every call (building requests, tokenizing, API requests):
    here one per chunk. The evaluation has one bar for the whole run, so lm-eval's modules get a silent one."""
    from tqdm import tqdm

    drawing = [m for name, m in list(sys.modules.items()) if name.startswith("lm_eval") and getattr(m, "tqdm", None) is tqdm]
    for module in drawing:
        module.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        for module in drawing:
            module.tqdm = tqdm


def chunks(doc_ids: Sequence[int]) -> list[list[int]]:
    """``doc_ids`` (a prefix of a task's sampled order) cut every ``CHUNK_ITEMS`` items.

    The cuts sit at fixed positions of the sampled order, so every look and every run cuts the same
    chunks: a later look finds an earlier one's chunks whole, and a resumed run the killed one's.
    """
    return [list(doc_ids[start : start + CHUNK_ITEMS]) for start in range(0, len(doc_ids), CHUNK_ITEMS)]


def stored_items(store: ItemStore, arm: Arm, task: BuiltTask, template: str | None, doc_ids: Sequence[int],
                 engine_key: str) -> dict[int, Item]:
    """The stored items of ``arm`` among ``doc_ids`` (by doc_id): one directory, or one per chunk when the
    task's prompts depend on the chunk (:meth:`BuiltTask.store_key`)."""
    found: dict[int, Item] = {}
    wanted = set(doc_ids)
    for key in dict.fromkeys(task.store_key(template, chunk) for chunk in chunks(doc_ids)):
        found.update((d, item) for d, item in store.load(arm, task.resolved.request.name, key, engine_key).items()
                     if d in wanted)
    return found
