"""``release-gate demo``: the embedded offline default, the whole gate end to end on a CPU.

Base SmolLM2-135M-Instruct from the packaged assets; a demo LoRA adapter
(r 16, α 32, the seven projections) trained here with PEFT on a training
slice of CommonsenseQA and cached; calibration on a disjoint slice; the
target is lm-eval's CommonsenseQA task over a third, held-out slice; the
guard is IFEval. The demo writes an ordinary run config and runs
``release-gate run`` on it, so everything it shows is the product itself.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .assets import Assets, default_cache_dir, fetch
from .config import load_run_config
from .constants import LLAMA_PROJECTIONS
from .evaluation.tasks import OfflineTask, write_json_task
from .files import atomic_directory, content_key
from .run import RunResult, prepare_run_dir, run
from .surgery.adapter import load_adapter
from .surgery.calibration import CalibrationConfig, Example, answer_nll, encode, length_buckets
from .surgery.inspect import diagnose, format_text

logger = logging.getLogger(__name__)

DEMO_POLICIES = ("abs_select", "smooth_abs", "grad_direction")


@dataclass(frozen=True)
class DemoSlices:
    """Disjoint row ranges of the CommonsenseQA validation set (1221 rows)."""

    train: range = range(0, 512)
    calibration: range = range(512, 640)
    evaluation: range = range(640, 1221)


@dataclass(frozen=True)
class TrainingRecipe:
    """How the demo adapter is trained (part of its cache key)."""

    r: int = 16
    lora_alpha: int = 32
    epochs: int = 1
    learning_rate: float = 5e-4
    batch_size: int = 8
    seed: int = 0


def csqa_prompt(row: dict[str, Any]) -> tuple[str, str]:
    """A multiple-choice prompt and its answer letter (the target format)."""
    choices = "\n".join(f"{label}. {text}" for label, text in zip(row["choices"]["label"], row["choices"]["text"]))
    return f"Question: {row['question']}\n{choices}\nAnswer:", f" {row['answerKey']}"


HELDOUT_TASK = OfflineTask("commonsense_qa_heldout", "commonsense_qa/default.yaml", "commonsense_qa", "validation",
                           (("training_split", None),))


def write_heldout_task(rows: list[dict[str, Any]], indices: range, directory: Path) -> Path:
    """lm-eval's CommonsenseQA task over the held-out rows only (disjoint from training and calibration)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "commonsense_qa_heldout.jsonl"
    data.write_text("".join(json.dumps(rows[i]) + "\n" for i in indices), encoding="utf-8")
    write_json_task(HELDOUT_TASK, data, directory)
    return directory


def write_slice(rows: list[dict[str, Any]], indices: range, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in indices:
        prompt, answer = csqa_prompt(rows[i])
        lines.append(json.dumps({"prompt": prompt, "answer": answer, "id": rows[i]["id"]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_demo_adapter(model_dir: Path, train_file: Path, out: Path, recipe: TrainingRecipe) -> Path:
    """Train the demo LoRA with PEFT (answer-token loss) and save it atomically."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.lora_alpha, target_modules=list(LLAMA_PROJECTIONS),
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    calibration_like = CalibrationConfig(train_file)
    rows = [json.loads(line) for line in train_file.read_text().splitlines() if line.strip()]
    encoded = [encode(Example(i, i + 1, r["prompt"], r["answer"]), tokenizer, calibration_like) for i, r in enumerate(rows)]
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate)
    inner = peft_model.base_model.model
    peft_model.train()
    batches = length_buckets(encoded, recipe.batch_size)
    rng = random.Random(recipe.seed)
    with tqdm(total=recipe.epochs * len(batches), desc="training demo adapter", unit="step") as bar:
        for _ in range(recipe.epochs):
            rng.shuffle(batches)
            for batch in batches:
                loss = answer_nll(inner, encoded, batch, tokenizer.pad_token_id) / len(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    with atomic_directory(out) as tmp:
        peft_model.save_pretrained(tmp)
    return out


def demo_adapter(assets: Assets, cache_dir: Path, train_file: Path, recipe: TrainingRecipe) -> Path:
    """The cached demo adapter, trained on first use."""
    key = content_key([recipe.__dict__, train_file.read_text()])
    path = cache_dir / "demo" / f"adapter-{key}"
    if not (path / "adapter_model.safetensors").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_demo_adapter(assets.model_dir, train_file, path, recipe)
    stable = cache_dir / "demo" / "adapter"  # the name examples/smollm2-offline.yaml uses
    if not stable.is_symlink() or stable.resolve() != path.resolve():
        tmp = stable.with_name(".adapter.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path.name)
        tmp.replace(stable)
    return path


@dataclass(frozen=True)
class DemoSize:
    """How much of the held-out target and the IFEval guard the demo scores (CPU time budget)."""

    target_limit: int | None = 120
    guard_limit: int | None = 16
    guard_max_gen_toks: int | None = 96


#: ``--full``: every held-out row, all 541 IFEval prompts, IFEval's own token cap.
FULL = DemoSize(None, None, None)


def demo_config(base_model: Path, adapter: Path, calibration: Path, tasks: Path, out_dir: Path,
                cache_dir: Path, size: DemoSize) -> dict[str, Any]:
    """The run config the demo executes (written to ``<out>/config.yaml`` so it can be re-run by hand)."""
    guard: dict[str, Any] = {"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.05}
    guard.update({k: v for k, v in (("limit", size.guard_limit), ("max_gen_toks", size.guard_max_gen_toks))
                  if v is not None})
    target: dict[str, Any] = {"task": HELDOUT_TASK.name, "metric": "acc"}
    if size.target_limit is not None:
        target["limit"] = size.target_limit
    return {
        "base_model": str(base_model), "adapter": str(adapter), "output": {"dir": str(out_dir.resolve())},
        "cache_dir": str(cache_dir),
        "calibration": {"file": str(calibration), "n": len(DemoSlices().calibration)},
        "policies": list(DEMO_POLICIES), "controls": {"seeds": [0, 1, 2]},
        "evaluation": {"include_path": [str(tasks)], "max_model_len": 1024},
        "targets": [target], "guards": [guard],
        "gate": {"alpha": 0.05, "min_gain": 0.0, "mode": "statistical", "holm": True},
    }


def run_demo(out_dir: Path, cache_dir: Path | None = None, size: DemoSize = DemoSize()) -> RunResult:
    """Run the embedded default end to end: assets, adapter, the whole gate, the report."""
    cache_dir = Path(cache_dir or default_cache_dir())
    prepare_run_dir(out_dir, cache_dir / "demo", resume=True)
    assets = fetch(cache_dir)
    rows = [json.loads(line) for line in assets.commonsense_qa.read_text().splitlines() if line.strip()]
    slices = DemoSlices()
    demo_dir = cache_dir / "demo"
    train_file = write_slice(rows, slices.train, demo_dir / "data" / "csqa_train.jsonl")
    calib_file = write_slice(rows, slices.calibration, demo_dir / "data" / "csqa_calibration.jsonl")
    tasks = write_heldout_task(rows, slices.evaluation, demo_dir / "tasks")
    adapter_dir = demo_adapter(assets, cache_dir, train_file, TrainingRecipe())
    logger.info(format_text(diagnose(load_adapter(adapter_dir)), max_rows=8))
    config = demo_config(assets.model_dir, adapter_dir, calib_file, tasks, out_dir, cache_dir, size)
    config_path = out_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return run(load_run_config(config_path), resume=True)
