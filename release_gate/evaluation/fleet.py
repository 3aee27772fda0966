"""The ``server`` backend: arms scored on one or many OpenAI-compatible servers that already run.

The scale-out path: each endpoint may itself be tensor/data-parallel or a Ray cluster, and N
replicas of one base model serve one run together; the project adds no distribution layer of its
own. lm-eval builds each chunk's requests once (:class:`~.runner.BuiltTask`); the requests are then
split across the live endpoints by item, and each endpoint answers its share with its own
concurrency. Each arm's adapter is loaded on an endpoint the first time that endpoint gets a share
of it, and unloaded when the backend closes. An endpoint that fails (unreachable after its retries,
an error answer) is dropped for the rest of the run and its share is asked of the others; an item's
score does not depend on the endpoint that answered it (every request is greedy and scored alone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from lm_eval.api.model import LM

from ..errors import BadInput, RuntimeFailure
from ..files import content_key
from .engine import Arm
from .protocol import BackendContext, EvaluationBackend, register_backend
from .runner import BuiltTask
from .server import LORA_APIS, Server, completions_model, load, unload
from .store import Item

logger = logging.getLogger(__name__)


@register_backend("server")
class ServerBackend(EvaluationBackend):
    """Endpoints serving the same base model; the items of every chunk are shared among the live ones."""

    def __init__(self, endpoints: Sequence[Server]) -> None:
        if not endpoints:
            raise BadInput("evaluation.server: at least one endpoint is required")
        self.endpoints = tuple(endpoints)
        self.live = list(endpoints)
        self._loaded: dict[tuple[str, str], Arm] = {}  # adapters this backend loaded, by (endpoint url, arm name)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, context: BackendContext) -> ServerBackend:
        section = context.evaluation.server
        model, tokenizer = section.model or context.base_model, section.tokenizer or context.base_model
        return cls([Server(endpoint.url, model, tokenizer, api_key=endpoint.api_key, api_key_env=endpoint.api_key_env,
                           concurrency=endpoint.concurrency, batch_size=section.batch_size, timeout=section.timeout,
                           retries=section.max_retries, lora_api=LORA_APIS[section.lora_api])
                    for endpoint in section.endpoint_list()])

    def score(self, arms: Sequence[Arm], task: BuiltTask, doc_ids: Sequence[int]) -> Iterator[list[Item]]:
        for arm in arms:
            try:
                yield task.score(_Shared(self, arm), doc_ids)
            except (BadInput, RuntimeFailure):
                raise
            except Exception as exc:  # lm-eval's HTTP clients raise many types; keep the cause
                raise RuntimeFailure(f"evaluation servers failed on {task.resolved.request.name} for {arm.name}: "
                                     f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Unload every adapter this backend loaded (a failure is logged: the scores are already stored)."""
        for endpoint in self.live:
            for arm in [arm for (url, _), arm in sorted(self._loaded.items()) if url == endpoint.url]:
                try:
                    unload(endpoint, arm)
                except (BadInput, RuntimeFailure) as error:
                    logger.warning("could not unload %s from %s: %s", arm.lora_name, endpoint.url, error)
        self._loaded.clear()

    @property
    def record(self) -> dict[str, Any]:
        first = self.endpoints[0]
        return {"server": {"endpoints": [e.url for e in self.endpoints], "model": first.model,
                           "tokenizer": first.tokenizer, "lora_api": first.lora_api.name}}

    def store_key(self) -> str:
        """The served model, its tokenizer and where it is served (the API key is not part of it).

        One endpoint keeps the key a single ``url`` always had, so existing stores and look ledgers stay valid.
        """
        urls = sorted(e.url for e in self.endpoints)
        first = self.endpoints[0]
        return content_key({"server": urls[0] if len(urls) == 1 else urls, "model": first.model,
                            "tokenizer": first.tokenizer})

    # --- endpoints -----------------------------------------------------------------------------------------

    def ready(self, endpoint: Server, arm: Arm) -> None:
        """Load ``arm`` on ``endpoint`` unless this backend already did."""
        with self._lock:
            if (endpoint.url, arm.name) in self._loaded:
                return
        load(endpoint, arm)
        with self._lock:
            self._loaded[(endpoint.url, arm.name)] = arm

    def drop(self, endpoint: Server, error: BaseException) -> None:
        """Take a failed endpoint out of the run; with none left, the evaluation fails with its error."""
        with self._lock:
            if endpoint in self.live:
                self.live.remove(endpoint)
            left = len(self.live)
        if not left:
            raise RuntimeFailure(f"every evaluation server failed; the last, {endpoint.url}: "
                                 f"{type(error).__name__}: {error}") from error
        logger.warning("evaluation server %s failed (%s: %s): its items go to the %d other(s)", endpoint.url,
                       type(error).__name__, error, left)


def shares(requests: Sequence[Any], pending: Sequence[int], endpoints: Sequence[Server]) -> dict[Server, list[int]]:
    """``pending`` request indices split across ``endpoints`` by item: every request of an item goes to one."""
    items = sorted({requests[i].doc_id for i in pending})
    per = -(-len(items) // len(endpoints))  # ceil: contiguous blocks of items, one per endpoint
    owner = {doc: endpoints[k // per] for k, doc in enumerate(items)}
    out: dict[Server, list[int]] = {}
    for i in pending:
        out.setdefault(owner[requests[i].doc_id], []).append(i)
    return out


class _Shared(LM):
    """lm-eval's model for one arm over every live endpoint: each item's requests go to one endpoint."""

    def __init__(self, backend: ServerBackend, arm: Arm) -> None:
        super().__init__()
        self.backend, self.arm = backend, arm
        self._models: dict[str, Any] = {}

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return self._spread("loglikelihood", requests)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return self._spread("loglikelihood_rolling", requests)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return self._spread("generate_until", requests)

    @property
    def tokenizer_name(self) -> str:
        return self._model(self.backend.endpoints[0]).tokenizer_name

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._model(self.backend.endpoints[0]).apply_chat_template(chat_history, add_generation_prompt)

    def _model(self, endpoint: Server) -> Any:
        if endpoint.url not in self._models:
            self._models[endpoint.url] = completions_model(endpoint, self.arm)
        return self._models[endpoint.url]

    def _spread(self, method: str, requests: list[Any]) -> list[Any]:
        """Every answer, from whichever live endpoint holds its item; a failed endpoint's share is asked again."""
        answers: list[Any] = [None] * len(requests)
        pending = list(range(len(requests)))
        while pending:
            split = shares(requests, pending, list(self.backend.live))
            models = {endpoint: self._model(endpoint) for endpoint in split}  # built here: one thread at a time
            pending = []
            with ThreadPoolExecutor(len(split)) as pool:
                futures = {pool.submit(self._answer, endpoint, models[endpoint], method, [requests[i] for i in ids]):
                           (endpoint, ids) for endpoint, ids in split.items()}
                for future in as_completed(futures):
                    endpoint, ids = futures[future]
                    try:
                        answers_here = future.result()
                    except BadInput:
                        raise
                    except Exception as error:  # unreachable, refused, or killed mid-answer: ask another one
                        self.backend.drop(endpoint, error)
                        pending += ids
                        continue
                    for i, answer in zip(ids, answers_here):
                        answers[i] = answer
        return answers

    def _answer(self, endpoint: Server, model: Any, method: str, requests: list[Any]) -> list[Any]:
        self.backend.ready(endpoint, self.arm)
        return getattr(model, method)(requests, disable_tqdm=True)
