"""Server mode: evaluate arms against an existing vLLM OpenAI-compatible server (SPEC §6).

The scale-out path: the server may be tensor/data-parallel or a Ray cluster,
and the project adds no distribution layer of its own. Each arm is loaded
with ``/v1/load_lora_adapter`` under its content-hashed name, scored with
lm-eval's ``local-completions`` (tokenizer passed explicitly), and unloaded
afterwards. The server must run with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput, RuntimeFailure
from ..hashing import content_key
from .engine import Arm
from .runner import BuiltTask, ResolvedTask
from .store import Item, ItemStore


@dataclass(frozen=True)
class Server:
    """An OpenAI-compatible vLLM server and the tokenizer of its base model."""

    url: str
    model: str
    tokenizer: str
    timeout: float = 600.0

    def post(self, path: str, payload: dict[str, Any]) -> str:
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}{path}", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            raise _ServerRefused(exc.read().decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeFailure(f"vLLM server at {self.url} is not reachable: {exc}") from None

    def key(self) -> str:
        """Identifies what serves the scores (part of the store key)."""
        return content_key({"server": self.url, "model": self.model, "tokenizer": self.tokenizer})


class _ServerRefused(Exception):
    """The server answered with an HTTP error; the text is its own explanation."""


def load(server: Server, arm: Arm) -> None:
    """Load ``arm``'s adapter under its content-hashed name (a no-op for the base model)."""
    if arm.adapter is None:
        return
    try:
        server.post("/v1/load_lora_adapter", {"lora_name": arm.lora_name, "lora_path": str(arm.adapter)})
    except _ServerRefused as refusal:
        text = str(refusal)
        if "rank" in text.lower():
            raise BadInput(f"adapter {arm.adapter}: rank {arm.rank} is above the server's --max-lora-rank ({text})") from None
        if "already been loaded" in text:
            return  # same content, same name: the server already holds exactly this adapter
        raise RuntimeFailure(f"vLLM server refused to load {arm.adapter}: {text}") from None


def unload(server: Server, arm: Arm) -> None:
    if arm.adapter is None:
        return
    try:
        server.post("/v1/unload_lora_adapter", {"lora_name": arm.lora_name})
    except _ServerRefused as refusal:
        raise RuntimeFailure(f"vLLM server refused to unload {arm.lora_name}: {refusal}") from None


def evaluate_arm_task(server: Server, arm: Arm, task: BuiltTask, doc_ids: Sequence[int]) -> list[Item]:
    """Score items ``doc_ids`` of one (arm, task) through lm-eval's ``local-completions`` against the server."""
    import lm_eval.models  # noqa: F401  (lm-eval imports its built-ins only while its registry is empty)
    from lm_eval.api.registry import get_model

    model = server.model if arm.adapter is None else arm.lora_name
    model_args = (
        f"model={model},base_url={server.url.rstrip('/')}/v1/completions,tokenizer={server.tokenizer},"
        "tokenizer_backend=huggingface,num_concurrent=1,max_retries=2,tokenized_requests=True"
    )
    try:
        return task.score(get_model("local-completions").create_from_arg_string(model_args), doc_ids)
    except Exception as exc:  # lm-eval's HTTP client raises many types; keep the cause
        raise RuntimeFailure(f"vLLM server at {server.url} failed on {task.resolved.request.name} for {arm.name}: "
                             f"{type(exc).__name__}: {exc}") from exc


def evaluate(
    server: Server, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], store: ItemStore,
    sizes: Mapping[str, int] | None = None,
) -> dict[tuple[str, str], list[Item]]:
    """The first ``sizes[task]`` items of every (arm, task) through the server, evaluating only what ``store`` lacks.

    Each adapter is loaded once for everything it misses and unloaded after use; each task's
    requests are built once per chunk for all arms (:class:`~.runner.BuiltTask`).
    """
    built = [BuiltTask(task) for task in tasks]
    out: dict[tuple[str, str], list[Item]] = {}
    for arm in arms:
        pending = []
        for task in built:
            name = task.resolved.request.name
            wanted = task.resolved.doc_ids((sizes or {}).get(name))
            stored = store.load(arm, name, task.store_key(None, wanted), server.key())
            pending.append((task, wanted, stored, [d for d in wanted if d not in stored]))
        if any(missing for *_, missing in pending):
            load(server, arm)
            try:
                for task, wanted, stored, missing in pending:
                    if missing:
                        items = evaluate_arm_task(server, arm, task, missing)
                        store.save(arm, task.resolved.request.name, task.store_key(None, wanted), server.key(), items)
                        stored.update({i.doc_id: i for i in items})
            finally:
                unload(server, arm)
        for task, wanted, stored, _ in pending:
            out[(arm.name, task.resolved.request.name)] = [stored[d] for d in wanted]
    return out
