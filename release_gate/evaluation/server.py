"""Server mode: evaluate arms against an existing vLLM OpenAI-compatible server (SPEC §6).

The scale-out path: the server may be tensor/data-parallel or a Ray cluster,
and the project adds no distribution layer of its own. Each arm is loaded
with ``/v1/load_lora_adapter`` under its content-hashed name (unless
``/v1/models`` already lists it), scored with lm-eval's ``local-completions``
(``concurrency`` requests in flight, ``batch_size`` prompts per request, so a
data-parallel deployment is kept busy), and unloaded afterwards. Requests
carry the API key (``evaluation.server.api_key``, else ``$OPENAI_API_KEY``;
never written to ``decision.json`` or logs); connection failures and 5xx
answers are retried with exponential backoff; the server's JSON errors
(``{"error": {"message", "type", "code"}}``) are parsed, not searched. The
server must run with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
(for a server without that flag, see ``release-gate serve-args``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
import tenacity

from ..errors import BadInput, RuntimeFailure
from ..files import content_key
from .engine import Arm
from .progress import Progress, progress_or_own
from .runner import BuiltTask, ResolvedTask, chunks, stored_items
from .store import Item, ItemStore

logger = logging.getLogger(__name__)
#: HTTP statuses worth asking again (the server is busy or restarting), and the first wait in seconds.
RETRY_STATUSES = (429, 502, 503, 504)
BACKOFF_SECONDS = 0.5


class ServerError(Exception):
    """The server's own structured answer to a refused request."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(f"HTTP {status} {type}: {message}")
        self.status, self.type, self.message = status, type, message


def _transient(error: BaseException) -> bool:
    """Worth asking again: no connection or answer in time, or a busy or restarting server."""
    if isinstance(error, ServerError):
        return error.status in RETRY_STATUSES
    return isinstance(error, requests.ConnectionError | requests.Timeout)


def parse_error(status: int, body: str) -> ServerError:
    """vLLM's ``{"error": {"message", "type", "code"}}`` (or its older flat form), else the raw text."""
    try:
        document = json.loads(body)
    except ValueError:
        return ServerError(status, "HTTPError", body.strip()[:500])
    error = document.get("error", document) if isinstance(document, dict) else {}
    if not isinstance(error, dict):
        return ServerError(status, "HTTPError", str(error)[:500])
    return ServerError(int(error.get("code") or status), str(error.get("type") or "HTTPError"),
                       str(error.get("message") or body)[:500])


@dataclass(frozen=True)
class Server:
    """An OpenAI-compatible vLLM server, the tokenizer of its base model, and how to talk to it."""

    url: str
    model: str
    tokenizer: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    batch_size: int = 8
    timeout: float = 600.0
    retries: int = 3

    @property
    def key_or_env(self) -> str | None:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or None

    def headers(self) -> dict[str, str]:
        key = self.key_or_env
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        """POST ``payload`` (GET without one) and return the decoded answer, retrying transient failures.

        ``retries`` more attempts after the first, waiting ``BACKOFF_SECONDS`` · 2^k between them.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_transient), stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=BACKOFF_SECONDS), reraise=True,
            before_sleep=lambda state: logger.warning(
                "vLLM server %s%s: %s; retrying in %.1f s", self.url, path, state.outcome.exception(),
                state.next_action.sleep),
        )
        try:
            return retrying(self._once, path, payload)
        except requests.RequestException as exc:
            raise RuntimeFailure(f"vLLM server at {self.url} is not reachable: {exc}") from None

    def _once(self, path: str, payload: dict[str, Any] | None) -> Any:
        response = requests.request(
            "GET" if payload is None else "POST", f"{self.url.rstrip('/')}{path}", json=payload,
            headers={"Content-Type": "application/json", **self.headers()}, timeout=self.timeout,
        )
        if not response.ok:
            raise parse_error(response.status_code, response.text)
        try:
            return response.json()
        except ValueError:
            return response.text

    def served_models(self) -> set[str]:
        """Names the server serves now (``/v1/models``): the base model and every loaded adapter."""
        answer = self.request("/v1/models")
        return {entry.get("id") for entry in answer.get("data", [])} if isinstance(answer, dict) else set()

    def key(self) -> str:
        """Identifies what serves the scores (part of the store key; the API key is not)."""
        return content_key({"server": self.url, "model": self.model, "tokenizer": self.tokenizer})


def refused(error: ServerError, what: str) -> Exception:
    """The error a refusal means for the user: their input (exit 2) or the server (exit 1)."""
    if error.status in (401, 403):
        return BadInput(f"vLLM server refused the API key for {what} ({error}); set evaluation.server.api_key "
                        "or $OPENAI_API_KEY to the server's --api-key")
    if error.status >= 500 and "rank" in error.message.lower():
        return BadInput(f"{what}: its rank is above the server's --max-lora-rank ({error})")
    if error.status in (400, 404):
        return BadInput(f"vLLM server refused {what} ({error})")
    return RuntimeFailure(f"vLLM server failed on {what} ({error})")


def load(server: Server, arm: Arm) -> None:
    """Load ``arm``'s adapter under its content-hashed name (a no-op for the base model or one already served)."""
    if arm.adapter is None:
        return
    try:
        if arm.lora_name in server.served_models():
            return  # same content, same name: the server already holds exactly this adapter
        server.request("/v1/load_lora_adapter", {"lora_name": arm.lora_name, "lora_path": str(arm.adapter)})
    except ServerError as error:
        raise refused(error, f"loading adapter {arm.adapter} (rank {arm.rank})") from None


def unload(server: Server, arm: Arm) -> None:
    if arm.adapter is None:
        return
    try:
        server.request("/v1/unload_lora_adapter", {"lora_name": arm.lora_name})
    except ServerError as error:
        if error.status == 404:
            raise RuntimeFailure(f"vLLM server refused to unload {arm.lora_name}: it is not loaded ({error})") from None
        raise refused(error, f"unloading {arm.lora_name}") from None


def evaluate_arm_task(server: Server, arm: Arm, task: BuiltTask, doc_ids: Sequence[int]) -> list[Item]:
    """Score items ``doc_ids`` of one (arm, task) through lm-eval's ``local-completions`` against the server."""
    import lm_eval.models  # noqa: F401  (lm-eval imports its built-ins only while its registry is empty)
    from lm_eval.api.registry import get_model

    model = get_model("local-completions")(
        model=server.model if arm.adapter is None else arm.lora_name,
        base_url=f"{server.url.rstrip('/')}/v1/completions", tokenizer=server.tokenizer,
        tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=server.concurrency,
        batch_size=server.batch_size, max_retries=server.retries, timeout=int(server.timeout),
        header={"Content-Type": "application/json", **server.headers()} if server.key_or_env else None,
    )
    try:
        return task.score(model, doc_ids)
    except Exception as exc:  # lm-eval's HTTP client raises many types; keep the cause
        raise RuntimeFailure(f"vLLM server at {server.url} failed on {task.resolved.request.name} for {arm.name}: "
                             f"{type(exc).__name__}: {exc}") from exc


def evaluate(
    server: Server, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], store: ItemStore,
    sizes: Mapping[str, int] | None = None, progress: Progress | None = None,
) -> dict[tuple[str, str], list[Item]]:
    """The first ``sizes[task]`` items of every (arm, task) through the server, evaluating only what ``store`` lacks.

    Each adapter is loaded once for everything it misses and unloaded after use. Items are scored in
    :func:`~.runner.chunks`, each stored as soon as it is scored (a kill loses at most one chunk); each
    task's requests are built once per chunk for all arms (:class:`~.runner.BuiltTask`).
    """
    built = [BuiltTask(task) for task in tasks]
    wanted = {t.resolved.request.name: t.resolved.doc_ids((sizes or {}).get(t.resolved.request.name)) for t in built}
    out: dict[tuple[str, str], list[Item]] = {}
    with progress_or_own(progress, {(a.name, t): len(ids) for a in arms for t, ids in wanted.items()}) as progress:
        for arm in arms:
            pending = []
            for task in built:
                name = task.resolved.request.name
                stored = stored_items(store, arm, task, None, wanted[name], server.key())
                progress.add(arm.name, name, stored, scored=False)
                pending.append((task, stored, [c for c in chunks(wanted[name]) if any(d not in stored for d in c)]))
            if any(missing for *_, missing in pending):
                load(server, arm)
                try:
                    for task, stored, missing in pending:
                        for chunk in missing:
                            _score_chunk(server, arm, task, chunk, stored, store, progress)
                finally:
                    unload(server, arm)
            for task, stored, _ in pending:
                name = task.resolved.request.name
                out[(arm.name, name)] = [stored[d] for d in wanted[name]]
    return out


def _score_chunk(server: Server, arm: Arm, task: BuiltTask, chunk: list[int], stored: dict[int, Item],
                 store: ItemStore, progress: Progress) -> None:
    """Score what ``arm`` lacks of ``chunk`` (all of it when prompts depend on the chunk) and store it."""
    name = task.resolved.request.name
    ids = chunk if task.resolved.random_fewshot else [d for d in chunk if d not in stored]
    with progress.scoring(f"{arm.name} / {name}"):
        items = evaluate_arm_task(server, arm, task, ids)
    store.save(arm, name, task.store_key(None, chunk), server.key(), items)
    stored.update({i.doc_id: i for i in items})
    progress.add(arm.name, name, (i.doc_id for i in items), scored=True)
