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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import child
from ..schema import LM_EVAL_DIR
from .engine import Arm
from .runner import ResolvedTask
from .store import Item


def write(run_dir: Path, items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[ResolvedTask],
          arms: Sequence[Arm], base_model: str) -> Path:
    """One lm-eval results file and one samples file per task, for every arm; returns ``RUN_DIR/lm_eval``."""
    from lm_eval.loggers import EvaluationTracker

    root = Path(run_dir) / LM_EVAL_DIR
    for arm in arms:
        shutil.rmtree(child(root, arm.name, "arm"), ignore_errors=True)  # one current record per arm
        tracker = EvaluationTracker(output_path=str(root))
        model_args = {"peft": arm.name, "pretrained": base_model, **({"lora": str(arm.adapter)} if arm.adapter else {})}
        tracker.general_config_tracker.log_experiment_args(
            model_source="release-gate", model_args=model_args, system_instruction=None, chat_template=None,
            fewshot_as_multiturn=True)
        samples = {t.request.name: [copy.deepcopy(s) for item in items[(arm.name, t.request.name)]
                                    for s in item.samples or []] for t in tasks}
        tracker.save_results_aggregated(results=results(arm, items, tasks, model_args), samples=samples)
        for task, task_samples in samples.items():
            if task_samples:
                tracker.save_results_samples(task_name=task, samples=task_samples)
    return root


def results(arm: Arm, items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[ResolvedTask],
            model_args: dict[str, str]) -> dict[str, Any]:
    """lm-eval's aggregated-results document for one arm (means and standard errors per metric)."""
    out: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                           "higher_is_better": {}, "n-samples": {},
                           "config": {"model": "release-gate", "model_args": model_args, "batch_size": None,
                                      "limit": None, "bootstrap_iters": 0}}
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
