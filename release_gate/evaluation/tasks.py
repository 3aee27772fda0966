"""Offline lm-eval tasks over the packaged assets (SPEC §10), plus user task directories.

lm-eval's own task YAMLs fetch data from the hub. Each offline task here is a
small YAML that ``include:``s the built-in one and points ``dataset_path:
json`` at a fetched asset, written into a task directory at run time (the
include must be an absolute path into the installed lm-eval). The offline
tasks keep the built-in names, so configs say ``ifeval`` or ``gsm8k`` either
way; ``include_defaults=False`` keeps lm-eval from scanning its 14k tasks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..assets import Assets
from ..errors import BadInput
from ..files import write_jsonl_atomic, write_text_atomic


@dataclass(frozen=True)
class OfflineTask:
    """How one built-in task is re-pointed at a local JSONL file."""

    name: str
    builtin: str
    asset: str
    split: str
    overrides: tuple[tuple[str, Any], ...] = ()


OFFLINE_TASKS = (
    OfflineTask("commonsense_qa", "commonsense_qa/default.yaml", "commonsense_qa", "validation",
                (("training_split", None),)),
    OfflineTask("ifeval", "ifeval/ifeval.yaml", "ifeval", "train"),
    OfflineTask("gsm8k", "gsm8k/gsm8k.yaml", "gsm8k", "test",
                (("num_fewshot", 0), ("training_split", None), ("fewshot_split", None))),
    OfflineTask("gsm8k_cot", "gsm8k/gsm8k-cot.yaml", "gsm8k", "test"),
)


def builtin_task_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


CODE_TASKS = ("humaneval",)
TEMPLATES = Path(__file__).with_name("task_templates")


def write_json_task(task: OfflineTask, data_file: Path, directory: Path) -> Path:
    """One task YAML: the built-in ``task.builtin`` re-pointed at a local JSON(L) ``data_file``."""
    split_key = "test_split" if task.split != "validation" else "validation_split"
    config: dict[str, Any] = {
        "include": str(builtin_task_dir() / task.builtin),
        "task": task.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {task.split: str(data_file)}},
        split_key: task.split,
        **dict(task.overrides),
    }
    return write_text_atomic(directory / f"{task.name}.yaml", yaml.safe_dump(config, sort_keys=False))


def write_ifeval_task(name: str, rows: Iterable[dict[str, Any]], directory: Path) -> Path:
    """lm-eval's IFEval (its checkers and metrics) as task ``name`` over ``rows`` in IFEval's format
    (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``): a subset of it, or prompts of one's own."""
    directory.mkdir(parents=True, exist_ok=True)
    data = write_jsonl_atomic(directory / f"{name}.jsonl", rows)
    ifeval = next(t for t in OFFLINE_TASKS if t.name == "ifeval")
    write_json_task(replace(ifeval, name=name), data, directory)
    return directory


def write_offline_tasks(assets: Assets, directory: Path, allow_code_execution: bool = False) -> Path:
    """Write the offline task YAMLs for ``assets`` into ``directory`` (idempotent).

    HumanEval runs model-written code; its task is written only when the
    caller allows code execution, so it cannot run by accident.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if allow_code_execution:
        write_template_task("humaneval", directory, "humaneval", assets.humaneval)
    for task in OFFLINE_TASKS:
        write_json_task(task, Path(getattr(assets, task.asset)), directory)
    return directory


def offline_task_dir(assets: Assets, cache_dir: Path, allow_code_execution: bool = False) -> Path:
    """The offline tasks for ``assets``, written into the cache: ``tasks/default``, or ``tasks/code-execution``
    when code execution is allowed (so HumanEval never appears in a run that did not allow it)."""
    folder = "code-execution" if allow_code_execution else "default"
    return write_offline_tasks(assets, Path(cache_dir) / "tasks" / folder, allow_code_execution)


def default_offline_tasks(cache_dir: Path | None = None) -> Path:
    """The packaged offline tasks as an lm-eval include path, IFEval's NLTK data pointed at.

    ``release-gate lm-eval``'s default include path; from Python,
    ``TaskManager(include_path=default_offline_tasks())``. :class:`BadInput` until
    ``release-gate assets fetch`` has run.
    """
    from ..assets import default_cache_dir, load

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    assets = load(root)
    prepare_environment(assets)
    return offline_task_dir(assets, root)


def write_template_task(template: str, directory: Path, task: str, data_file: Path) -> Path:
    """A task of our own (``task_templates/<template>.yaml``) named ``task`` over ``data_file``, with its
    ``<template>_utils.py`` (the scoring its YAML names) beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    utils = TEMPLATES / f"{template}_utils.py"
    if utils.is_file():
        write_text_atomic(directory / utils.name, utils.read_text(encoding="utf-8"))
    text = (TEMPLATES / f"{template}.yaml").read_text(encoding="utf-8").format(task=task, data_file=data_file)
    return write_text_atomic(directory / f"{task}.yaml", text)


class _TagBlindLoader(yaml.SafeLoader):
    """Reads a task YAML as plain data: lm-eval's ``!function`` tags become None instead of imports."""


_TagBlindLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def dangling_include(task: str, include_paths: str | Path | list[str | Path] | None) -> str | None:
    """Why ``task`` cannot load when its YAML ``include:``s a file that is gone, else None.

    Offline task YAMLs include the built-in one by absolute path into one Python environment's lm-eval.
    A directory written by another environment (a shared cache, a deleted virtualenv) keeps pointing
    there, and lm-eval then reports only an unknown task name: this says which file and what it lacks.
    """
    roots = [include_paths] if isinstance(include_paths, (str, Path)) else include_paths or []
    for path in (p for root in roots for p in sorted(Path(root).rglob("*.yaml"))):
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagBlindLoader)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # not ours to judge: lm-eval reports what it cannot read
        if not isinstance(config, dict) or config.get("task") != task:
            continue
        includes = config.get("include") or []
        for include in [includes] if isinstance(includes, str) else includes:
            if not (path.parent / Path(include).expanduser()).is_file():
                return (f"{path}: its include {include} does not exist (written by another Python "
                        "environment?); rewrite the task directory with this environment, e.g. re-run "
                        "`release-gate demo` for the demo's tasks")
    return None


def prepare_environment(assets: Assets) -> None:
    """IFEval counts sentences with NLTK's punkt_tab: point NLTK at the packaged copy."""
    os.environ.setdefault("NLTK_DATA", str(assets.nltk_data))
    import nltk

    if str(assets.nltk_data) not in nltk.data.path:
        nltk.data.path.insert(0, str(assets.nltk_data))


def task_manager(include_paths: list[Path]) -> Any:
    """A TaskManager over local task directories only (no 15 s scan of the built-ins)."""
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise BadInput(f"{path}: task directory not found")
    return TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False)
