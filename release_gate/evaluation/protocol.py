"""One seam for every evaluation backend: what scores items, behind one base class and a registry.

The session (:mod:`.session`) owns the item store, the canary and the gate's looks; a backend owns
only the scoring: the in-process vLLM engine (``vllm``, :mod:`.in_process`), OpenAI-compatible
servers (``server``, :mod:`.fleet`), or a third party's. ``evaluation.backend`` in the run config
names one. Like lm-eval's ``LM`` and ``register_model``, adding a backend is one new module whose
class carries one ``@register_backend("name")`` line; a package that ships one outside this project
declares it as an entry point of the ``release_gate.backends`` group (its module is imported when
the name is asked for, and the decorator registers the class).
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from ..errors import BadInput
from .engine import Arm
from .runner import BuiltTask
from .store import Item

logger = logging.getLogger(__name__)
#: The entry-point group through which installed packages offer backends.
ENTRY_POINT_GROUP = "release_gate.backends"
#: This project's own backends, by name: the module that registers each (imported on first use).
BUILT_IN = {"vllm": "release_gate.evaluation.in_process", "server": "release_gate.evaluation.fleet"}
_REGISTRY: dict[str, type[EvaluationBackend]] = {}


@dataclass(frozen=True)
class BackendContext:
    """What a backend is built from: the run's base model, every arm it will score, the config's section.

    ``evaluation`` is the run config's ``evaluation`` section (a higher layer's pydantic model, read by
    attribute): each backend reads its own settings from it.
    """

    base_model: str
    arms: tuple[Arm, ...]
    evaluation: Any


class EvaluationBackend(abc.ABC):
    """Scores arms on items of a task; the session asks only for what the store lacks.

    A backend starts lazily (:meth:`start` runs once, on the first item the store does not hold), so a
    run whose every item is stored starts nothing. Its :meth:`store_key` names what makes its scores
    what they are (engine settings, the served model): stored items are reused only under the same key.
    """

    #: The registered name (set by :func:`register_backend`).
    name: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, context: BackendContext) -> EvaluationBackend:
        """The backend a run config asks for (its settings were validated when the config was loaded)."""

    def start(self) -> None:  # noqa: B027  (a hook: a backend of servers that already run acquires nothing)
        """Acquire what scoring needs (an engine); called before the first score, and again is a no-op."""

    def close(self) -> None:  # noqa: B027  (a hook, as start)
        """Release what :meth:`start` acquired (called on the session's exit, also after an error)."""

    def probe(self, arms: Sequence[Arm]) -> dict[str, Any]:
        """The probe canary's report (decision.json's ``canary``), run once after :meth:`start`.

        A backend that cannot look inside the model says so; the session's per-item canary (base and
        baseline answer identically everywhere) runs for every backend.
        """
        return {"probe": f"not run by the {self.name} backend (per-item check only)"}

    @abc.abstractmethod
    def score(self, arms: Sequence[Arm], task: BuiltTask, doc_ids: Sequence[int]) -> Iterator[list[Item]]:
        """Items ``doc_ids`` of ``task`` for each arm: one list per arm, in the order of ``arms``.

        Each arm's items are yielded as soon as they are scored, so the caller stores them at once (a
        kill loses at most the arm in flight). ``arms`` lack exactly these items: a backend may answer
        them together (one engine pass for all).
        """

    @property
    @abc.abstractmethod
    def record(self) -> dict[str, Any]:
        """What scored the items, recorded in decision.json (never a secret)."""

    @abc.abstractmethod
    def store_key(self) -> str:
        """The engine part of the item store's key; known without starting anything."""

    def template(self) -> str | None:
        """The chat template that renders prompts of tasks that ask for one (part of their store key)."""
        return None


def register_backend(name: str) -> Callable[[type[EvaluationBackend]], type[EvaluationBackend]]:
    """Class decorator: ``@register_backend("name")`` makes the class ``evaluation.backend: name``."""

    def register(cls: type[EvaluationBackend]) -> type[EvaluationBackend]:
        existing = _REGISTRY.get(name)
        if existing is not None:
            raise BadInput(f"evaluation backend {name!r} is registered twice: by {_qualified(existing)} and by "
                           f"{_qualified(cls)} (uninstall one of them)")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def backend_names() -> list[str]:
    """Every backend a config may name: built in, registered, or offered by an installed package."""
    return sorted({*BUILT_IN, *_REGISTRY, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def backend_class(name: str) -> type[EvaluationBackend]:
    """The class registered as ``name``, importing its module (built in, or an entry point) if needed."""
    if name not in _REGISTRY and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=name) if name not in _REGISTRY else ():
        logger.info("evaluation backend %r from %s", name, entry.value)
        entry.load()
    if name not in _REGISTRY:
        raise BadInput(f"evaluation.backend: unknown backend {name!r} (known: {', '.join(backend_names())})")
    return _REGISTRY[name]


def create_backend(name: str, context: BackendContext) -> EvaluationBackend:
    """The backend ``name`` for this run (nothing is started: see :meth:`EvaluationBackend.start`)."""
    return backend_class(name).from_config(context)
