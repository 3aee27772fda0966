"""An lm-eval model backend, registered as ``release-gate``, driving one shared engine.

lm-eval builds the requests and scores the answers; this class only turns
requests into vLLM calls on the shared :class:`~.engine.Engine`, with the
LoRA of its arm. Tokenization follows lm-eval's ``TemplateLM`` (the same
context/continuation split as its HF backend), so scores are comparable
with ``HFLM`` + PEFT.
"""

from __future__ import annotations

import atexit
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's built-in models first: its registry loads them only while empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..errors import BadInput
from .engine import Arm, Engine, EngineSettings, engine_overrides

DEFAULT_MAX_GEN_TOKS = 256
logger = logging.getLogger(__name__)
#: Engines started for lm-eval's own CLI, by settings: every adapter of one invocation shares one.
_ENGINES: dict[str, Engine] = {}


@register_model("release-gate")
class SharedEngineLM(TemplateLM):
    """lm-eval ``LM`` for one arm on a shared engine (``for_arm`` gives the others).

    From lm-eval's own CLI (``--model release-gate --model_args pretrained=…,lora=…``) the engine is
    started here, sized for every adapter named in ``adapters`` (``a|b|c``; ``release-gate lm-eval``
    fills it in when ``lora=`` is given several times), and shared by all of them. Any other model
    argument is a vLLM engine argument (``tensor_parallel_size=2``); unknown names are refused.
    """

    def __init__(
        self, engine: Engine | None = None, arm: Arm | None = None, pretrained: str | None = None,
        lora: str | None = None, add_bos_token: bool | None = None, batch_size: int | str = 64,
        peers: tuple[Arm, ...] = (), stash: dict | None = None, device: str | None = None,
        max_batch_size: int | None = None, peft: str | None = None, lora_local_path: str | None = None,
        adapters: str | None = None, **engine_args: Any,
    ) -> None:
        super().__init__()
        if engine is None:  # lm_eval.simple_evaluate(model="release-gate", model_args="pretrained=…,lora=…")
            engine, arm = standalone(pretrained, lora or peft or lora_local_path, adapters, device, engine_args)
        self.engine = engine
        self.arm = arm or Arm.base()
        self.add_bos_token = add_bos_token
        self.batch_size_per_call = int(batch_size) if str(batch_size).isdigit() else int(max_batch_size or 64)
        self.peers = tuple(p for p in peers if p.name != self.arm.name)
        self.stash: dict[tuple[str, Any], Any] = {} if stash is None else stash

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> SharedEngineLM:
        """lm-eval's CLI always adds its ``--device`` (default ``cuda``), which lm-eval's own vLLM model ignores:
        only a ``device=`` the user wrote in ``model_args`` is checked against this vLLM build."""
        return super().create_from_arg_string(arg_string, _without_device(additional_config))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> SharedEngineLM:
        """As :meth:`create_from_arg_string`, for ``model_args`` given as a mapping."""
        return super().create_from_arg_obj(arg_dict, _without_device(additional_config))

    def for_arm(self, arm: Arm) -> SharedEngineLM:
        """The same engine (and cross-arm stash), another adapter: no engine restart."""
        everyone = (self.arm, *self.peers)
        return SharedEngineLM(
            self.engine, arm, add_bos_token=self.add_bos_token, batch_size=self.batch_size_per_call,
            peers=tuple(a for a in everyone if a.name != arm.name), stash=self.stash,
        )

    def batched_with(self, peers: tuple[Arm, ...]) -> SharedEngineLM:
        """Cross-arm batching: each engine call also computes ``peers``' answers and stashes them.

        lm-eval asks one arm at a time; the first arm's requests go to the engine
        once for every pending arm (a per-prompt LoRA list), and the other arms'
        identical requests are then answered from the stash.
        """
        return SharedEngineLM(self.engine, self.arm, add_bos_token=self.add_bos_token,
                              batch_size=self.batch_size_per_call, peers=peers, stash={})

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.engine.settings.max_model_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids as vLLM would make them; no second BOS when a chat template already wrote one."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            templated = bool(bos) and string.startswith(bos)
            add_special_tokens = self.add_bos_token is not False and not templated
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's chat messages with the model's own template (``apply_chat_template=True``).

        Instruct models are scored as they are served; ``add_generation_prompt``
        is false only when lm-eval continues a prefilled assistant turn.
        """
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """Sum of continuation log-probs and whether each continuation token is the argmax.

        Single-token continuations that share a context (every multiple-choice
        task with letter answers) are scored together with one forward pass of
        the context (``logprob_token_ids``); longer ones use prompt log-probs
        over the whole sequence (vLLM-CPU has no ``prompt_logprob_start``).
        """
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        shared: dict[tuple[int, ...], list[int]] = defaultdict(list)
        longer: list[int] = []
        for i, (_, context, continuation) in enumerate(requests):
            fits = len(context) + 1 <= self.max_length
            (shared[tuple(context)].append(i) if len(continuation) == 1 and fits else longer.append(i))
        self._score_next_tokens(requests, shared, results)
        self._score_continuations(requests, longer, results)
        return results  # type: ignore[return-value]

    def _score_next_tokens(self, requests, groups: dict[tuple[int, ...], list[int]], results: list) -> None:
        from vllm import SamplingParams

        contexts = list(groups)
        per_group = [SamplingParams(temperature=0.0, max_tokens=1, detokenize=False,
                                    logprob_token_ids=sorted({requests[i][2][0] for i in groups[c]}))
                     for c in contexts]
        outputs = self._generate([list(c) for c in contexts], per_group)
        for context, output in zip(contexts, outputs):
            completion = output.outputs[0]
            scores, chosen = completion.logprobs[0], completion.token_ids[0]
            for i in groups[context]:
                token = requests[i][2][0]
                results[i] = (scores[token].logprob, token == chosen)

    def _score_continuations(self, requests, members: list[int], results: list) -> None:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False, prompt_logprobs=1)
        prompts = [(requests[i][1] + requests[i][2])[-self.max_length :] for i in members]
        for i, tokens, output in zip(members, prompts, self._generate(prompts, params)):
            results[i] = _continuation_score(output.prompt_logprobs, tokens, len(tokens) - len(requests[i][2]))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            windows = [
                ((), *make_disjoint_window(w))
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(request.args[0], add_special_tokens=False),
                    prefix_token=self.prefix_token_id, max_seq_len=self.max_length - 1, context_len=1,
                )
            ]
            results.append(sum(score for score, _ in self._loglikelihood_tokens(windows)))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation; requests with the same generation settings share one call."""
        from vllm import SamplingParams

        groups: dict[str, list[int]] = defaultdict(list)
        settings: dict[str, dict[str, Any]] = {}
        for i, request in enumerate(requests):
            kwargs = dict(request.args[1])
            key = repr(sorted(kwargs.items(), key=lambda kv: kv[0]))
            groups[key].append(i)
            settings[key] = kwargs
        results: list[str] = [""] * len(requests)
        for key, members in groups.items():
            kwargs = settings[key]
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            params = SamplingParams(temperature=0.0, max_tokens=max_gen, stop=until or None, seed=self.engine.settings.seed)
            budget = self.max_length - max_gen
            prompts = [self.tok_encode(requests[i].args[0])[-budget:] for i in members]
            for i, output in zip(members, self._generate(prompts, params)):
                results[i] = output.outputs[0].text
        return results

    def _generate(self, prompts: list[list[int]], params: Any) -> list[Any]:
        """Engine outputs for this arm; ``params`` is one ``SamplingParams`` or one per prompt.

        Prompts not already stashed are sent once for this arm and every peer
        arm; the peers' outputs are stashed for their own lm-eval runs.
        """
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        keys = [(tuple(p), repr(sp)) for p, sp in zip(prompts, per_prompt)]
        missing = [i for i, key in enumerate(keys) if (self.arm.name, key) not in self.stash]
        arms = (self.arm, *self.peers)
        step = max(1, self.batch_size_per_call // len(arms))
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            outputs = self.engine.generate(
                [prompts[i] for _ in arms for i in chunk], [per_prompt[i] for _ in arms for i in chunk],
                [arm for arm in arms for _ in chunk],
            )
            for j, arm in enumerate(arms):
                for i, output in zip(chunk, outputs[j * len(chunk) : (j + 1) * len(chunk)]):
                    self.stash[(arm.name, keys[i])] = output
        return [self.stash.pop((self.arm.name, key)) for key in keys]


def _continuation_score(prompt_logprobs: list[dict | None], tokens: list[int], start: int) -> tuple[float, bool]:
    """Score ``tokens[start:]`` from per-position prompt log-probs (entry 0 is ``None``)."""
    total, greedy = 0.0, True
    for position in range(start, len(tokens)):
        entries = prompt_logprobs[position]
        token = tokens[position]
        total += entries[token].logprob
        best = max(entries.values(), key=lambda lp: lp.logprob)
        greedy = greedy and entries[token].logprob >= best.logprob
    return total, greedy


def _without_device(additional_config: dict | None) -> dict:
    """lm-eval's extra model settings less its CLI-wide ``device`` (see ``create_from_arg_string``)."""
    return {k: v for k, v in (additional_config or {}).items() if k != "device"}


def standalone(pretrained: str | None, adapter: str | None, adapters: str | None, device: str | None,
               engine_args: dict[str, Any]) -> tuple[Engine, Arm]:
    """The engine (started once per settings, reused by later adapters) and this model's arm."""
    if not pretrained:
        raise BadInput("model_args: pretrained=<base model directory or name> is required")
    check_device(device)
    paths = [p for p in (adapters or "").split("|") if p]
    mine = Path(adapter).resolve() if adapter else None
    if mine is not None and mine not in {Path(p).resolve() for p in paths}:
        paths.append(adapter)
    arms = adapter_arms(paths)
    settings = EngineSettings.for_arms(pretrained, arms or [Arm.base()], **engine_overrides(engine_args, "model_args"))
    engine = _ENGINES.get(settings.key())
    if engine is None:
        logger.info("release-gate backend: one vLLM engine for %d adapter(s) of %s", len(arms), pretrained)
        engine = _ENGINES[settings.key()] = Engine(settings)
    return engine, next((a for a in arms if a.adapter == mine), Arm.base())


def adapter_arms(paths: Sequence[str | Path]) -> list[Arm]:
    """One arm per adapter directory, named after its folder.

    Folders that share a name (``A/grad_direction``, ``B/grad_direction``) get their content hash
    appended (``grad_direction-1a2b3c4d5e6f``): the name keys the engine's cross-arm stash and
    ``release-gate lm-eval``'s output sub-directories, so two adapters must never share one.
    """
    arms = [Arm.from_adapter(path.name or "lora", path) for path in dict.fromkeys(Path(p).resolve() for p in paths)]
    names = [arm.name for arm in arms]
    return [replace(arm, name=f"{arm.name}-{arm.sha256[:12]}") if names.count(arm.name) > 1 else arm for arm in arms]


def check_device(device: str | None) -> None:
    """vLLM runs on the platform its wheel was built for; a ``device`` asking for another one is refused."""
    if not device:
        return
    from vllm.platforms import current_platform

    wanted = str(device).split(":")[0]
    if wanted not in ("cpu", "cuda"):
        raise BadInput(f"model_args: device={device!r}: vLLM runs on cpu or cuda")
    if wanted == "cuda" and current_platform.is_cpu() or wanted == "cpu" and not current_platform.is_cpu():
        raise BadInput(f"model_args: device={device!r}, but this vLLM build runs on "
                       f"{'the CPU' if current_platform.is_cpu() else 'the GPU'}")


@atexit.register
def _close_engines() -> None:
    for engine in _ENGINES.values():
        engine.close()
    _ENGINES.clear()
