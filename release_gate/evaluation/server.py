"""One OpenAI-compatible server (SPEC §6): requests, errors, and adapters loaded at runtime.

The ``server`` backend (:mod:`.fleet`) talks to one or many of these. Each arm is loaded under its
content-hashed name (unless ``/v1/models`` already lists it) through the server's runtime-LoRA API
(:data:`LORA_APIS`: vLLM's ``/v1/load_lora_adapter`` by default) and scored with lm-eval's
``local-completions`` (``concurrency`` requests in flight, ``batch_size`` prompts per request, so a
data-parallel deployment is kept busy). Requests carry the API key (the endpoint's ``api_key``, else
``$<api_key_env>``, else ``$OPENAI_API_KEY``; never written to ``decision.json`` or logs);
connection failures and busy answers are retried with exponential backoff; the server's JSON errors
(``{"error": {"message", "type", "code"}}``) are parsed, not searched. A vLLM server must run with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (for a server without that flag, see
``release-gate serve-args``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import requests
import tenacity

from ..errors import BadInput, RuntimeFailure
from .engine import Arm

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
class LoraApi:
    """How a server loads and unloads a LoRA adapter at runtime: the place for another server's protocol.

    Both requests carry ``{"lora_name", "lora_path"}`` (unload: the name only); requests then name the
    adapter as their ``model``. vLLM's is tested here; SGLang's (``/load_lora_adapter``, the same
    payload; ``--enable-lora`` and ``--lora-target-modules`` on its server) is not.
    """

    name: str
    load: str
    unload: str


LORA_APIS = {api.name: api for api in (LoraApi("vllm", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"),
                                       LoraApi("sglang", "/load_lora_adapter", "/unload_lora_adapter"))}


@dataclass(frozen=True)
class Server:
    """An OpenAI-compatible server, the tokenizer of its base model, and how to talk to it."""

    url: str
    model: str
    tokenizer: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    batch_size: int = 8
    timeout: float = 600.0
    retries: int = 3
    #: the environment variable that holds this server's API key (when ``api_key`` is not given)
    api_key_env: str = "OPENAI_API_KEY"
    lora_api: LoraApi = LORA_APIS["vllm"]

    @property
    def key_or_env(self) -> str | None:
        return self.api_key or os.environ.get(self.api_key_env) or None

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


def refused(error: ServerError, what: str) -> Exception:
    """The error a refusal means for the user: their input (exit 2) or the server (exit 1)."""
    if error.status in (401, 403):
        return BadInput(f"vLLM server refused the API key for {what} ({error}); set the endpoint's api_key or "
                        "api_key_env (default $OPENAI_API_KEY) to the server's --api-key")
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
        server.request(server.lora_api.load, {"lora_name": arm.lora_name, "lora_path": str(arm.adapter)})
    except ServerError as error:
        raise refused(error, f"loading adapter {arm.adapter} (rank {arm.rank})") from None


def unload(server: Server, arm: Arm) -> None:
    if arm.adapter is None:
        return
    try:
        server.request(server.lora_api.unload, {"lora_name": arm.lora_name})
    except ServerError as error:
        if error.status == 404:
            raise RuntimeFailure(f"vLLM server refused to unload {arm.lora_name}: it is not loaded ({error})") from None
        raise refused(error, f"unloading {arm.lora_name}") from None


def completions_model(server: Server, arm: Arm) -> Any:
    """lm-eval's ``local-completions`` model for ``arm`` on ``server`` (the arm must be loaded)."""
    import lm_eval.models  # noqa: F401  (lm-eval imports its built-ins only while its registry is empty)
    from lm_eval.api.registry import get_model

    return get_model("local-completions")(
        model=server.model if arm.adapter is None else arm.lora_name,
        base_url=f"{server.url.rstrip('/')}/v1/completions", tokenizer=server.tokenizer,
        tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=server.concurrency,
        batch_size=server.batch_size, max_retries=server.retries, timeout=int(server.timeout),
        header={"Content-Type": "application/json", **server.headers()} if server.key_or_env else None,
    )
