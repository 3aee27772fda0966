"""Per-arm results and samples in lm-eval's own layout, written by lm-eval's ``EvaluationTracker``.

``RUN_DIR/lm_eval/<arm>/results_<date>.json`` and ``samples_<task>_<date>.jsonl`` are what
``lm_eval --output_path RUN_DIR/lm_eval --log_samples`` would have written for that arm, so lm-eval's
readers (``lm_eval.utils.get_results_filenames`` …), Zeno, W&B and hub pushes read them unchanged.
The samples are lm-eval's own logged records, kept in the item store; the gate's files are untouched.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..files import child
from ..schema import LM_EVAL_DIR
from .engine import Arm
from .runner import ResolvedTask
from .store import Item


def write(run_dir: Path, items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[ResolvedTask],
          arms: Sequence[Arm], base_model: str) -> Path:
    """One lm-eval results file and one samples file per task, for every arm; returns ``RUN_DIR/lm_eval``.

    The files say what was run, as lm-eval's own CLI would: ``model_args`` are the backend's real
    arguments (``pretrained``, ``lora``: the adapter directory), the chat template is the one the prompts
    were rendered with, and ``limit``, the seeds, ``lm_eval_version``, ``date`` and ``git_hash`` are set.
    What lm-eval has no field for (the arm, its adapter's sha256, per-task limits and chat settings, the
    sample order's seed) is under ``release_gate``.
    """
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.loggers.utils import add_env_info, add_tokenizer_info, get_git_commit_hash

    root = Path(run_dir) / LM_EVAL_DIR
    tokenizer = _tokenizer(base_model)
    template = _chat_template(tokenizer) if any(t.request.chat_template for t in tasks) else None
    shared: dict[str, Any] = {"git_hash": get_git_commit_hash(), "date": time.time()}
    add_env_info(shared)
    if tokenizer is not None:
        add_tokenizer_info(shared, SimpleNamespace(tokenizer=tokenizer, eot_token_id=tokenizer.eos_token_id,
                                                   max_length=None))
    for arm in arms:
        shutil.rmtree(child(root, arm.name, "arm"), ignore_errors=True)  # one current record per arm
        tracker = EvaluationTracker(output_path=str(root))
        model_args = {"pretrained": base_model, **({"lora": str(arm.adapter)} if arm.adapter else {})}
        general = tracker.general_config_tracker
        general.log_experiment_args(model_source="release-gate", model_args=model_args, system_instruction=None,
                                    chat_template=template, fewshot_as_multiturn=template is not None)
        general.model_name = general.model_name_sanitized = arm.name  # RUN_DIR/lm_eval/<arm>/
        samples = {t.request.name: [copy.deepcopy(s) for item in items[(arm.name, t.request.name)]
                                    for s in item.samples or []] for t in tasks}
        document = {**results(arm, items, tasks, model_args), **copy.deepcopy(shared)}
        tracker.save_results_aggregated(results=document, samples=samples)
        for task, task_samples in samples.items():
            if task_samples:
                tracker.save_results_samples(task_name=task, samples=task_samples)
    return root


def results(arm: Arm, items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[ResolvedTask],
            model_args: dict[str, str]) -> dict[str, Any]:
    """lm-eval's aggregated-results document for one arm (means and standard errors per metric)."""
    limits = {t.request.name: t.request.limit for t in tasks}
    seed = tasks[0].sample_seed if tasks else None
    out: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                           "higher_is_better": {}, "n-samples": {},
                           "config": {"model": "release-gate", "model_args": model_args, "batch_size": None,
                                      "batch_sizes": [], "device": None, "use_cache": None,
                                      "limit": _one(limits.values()), "bootstrap_iters": 0,
                                      "gen_kwargs": _one(t.request.gen_kwargs() for t in tasks),
                                      "random_seed": None, "numpy_seed": None, "torch_seed": None,
                                      "fewshot_seed": None},
                           "release_gate": {"arm": arm.name, "adapter_sha256": arm.sha256 or None,
                                            "sample_seed": seed, "limit": limits,
                                            "apply_chat_template": {t.request.name: t.request.chat_template
                                                                    for t in tasks}}}
    for task in tasks:
        name = task.request.name
        scored = items[(arm.name, name)]
        entry: dict[str, Any] = {"alias": name}
        for key in sorted({k for item in scored for k in item.metrics}):
            values = [item.metrics[key] for item in scored if key in item.metrics]
            metric, _, filter_name = key.partition(",")
            mean = sum(values) / len(values)
            variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else math.nan
            entry[key] = mean
            entry[f"{metric}_stderr,{filter_name}"] = math.sqrt(variance / len(values)) if len(values) > 1 else "N/A"
        out["results"][name] = entry
        out["configs"][name] = task.task.dump_config()
        out["versions"][name] = (task.task.config.metadata or {}).get("version")
        out["n-shot"][name] = task.task.get_config("num_fewshot") or 0
        out["higher_is_better"][name] = task.task.higher_is_better()
        out["n-samples"][name] = {"original": task.available, "effective": len(scored)}
    return out


def _one(values: Iterable[Any]) -> Any:
    """The value every task shares, else None (lm-eval's run-wide fields; per task under ``release_gate``)."""
    distinct = {repr(v): v for v in values}
    return next(iter(distinct.values())) if len(distinct) == 1 else None


def _tokenizer(base_model: str) -> Any | None:
    """The base model's tokenizer; None where it is not on this machine (server mode may name a remote model,
    and then scores without a chat template): its fields are then left out, as lm-eval leaves them out."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError):
        return None


def _chat_template(tokenizer: Any | None) -> str | None:
    """The tokenizer's chat template, as the runner renders prompts with it (lm-eval records the text)."""
    template = getattr(tokenizer, "chat_template", None)
    return str(template) if template else None
