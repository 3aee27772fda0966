"""``release-gate demo``: the embedded offline default, end to end on a CPU.

Base SmolLM2-135M-Instruct from the packaged assets; a demo LoRA adapter
(r 16, α 32, the seven projections) trained here with PEFT on a training
slice of CommonsenseQA and cached; one calibration pass on a disjoint slice;
every policy plus the random_index controls written as variants; the
adapter's spectral diagnostics. A third disjoint slice is reserved for the
target evaluation.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .assets import Assets, default_cache_dir, fetch
from .errors import BadInput
from .hashing import content_key
from .surgery.adapter import LLAMA_PROJECTIONS, load_adapter
from .surgery.calibration import CalibrationConfig, Example, answer_nll, encode, length_buckets
from .surgery.edit import refine
from .surgery.inspect import diagnose, format_text
from .surgery.policy_files import resolve_policy

DEMO_POLICIES = ("abs_select", "smooth_abs", "grad_direction", "random_index")
MARKER = ".release-gate-demo"


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
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    tmp.rename(out)
    return out


def demo_adapter(assets: Assets, cache_dir: Path, train_file: Path, recipe: TrainingRecipe) -> Path:
    """The cached demo adapter, trained on first use."""
    key = content_key([recipe.__dict__, train_file.read_text()])
    path = cache_dir / "demo" / f"adapter-{key}"
    if not (path / "adapter_model.safetensors").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_demo_adapter(assets.model_dir, train_file, path, recipe)
    return path


def prepare_output(out_dir: Path) -> None:
    """The demo owns its output directory; refuse to take over anything else."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise BadInput(f"{out_dir}: exists and was not written by the demo; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by release-gate demo\n")


def run_demo(out_dir: Path, cache_dir: Path | None = None, log=print) -> dict[str, Any]:
    """Run the embedded default; returns a summary (also written as ``demo.json``)."""
    started = time.perf_counter()
    cache_dir = Path(cache_dir or default_cache_dir())
    prepare_output(out_dir)
    assets = fetch(cache_dir, progress=log)
    rows = [json.loads(line) for line in assets.commonsense_qa.read_text().splitlines() if line.strip()]
    slices = DemoSlices()
    data_dir = cache_dir / "demo" / "data"
    train_file = write_slice(rows, slices.train, data_dir / "csqa_train.jsonl")
    calib_file = write_slice(rows, slices.calibration, data_dir / "csqa_calibration.jsonl")
    write_slice(rows, slices.evaluation, data_dir / "csqa_evaluation.jsonl")
    timings = {}
    t = time.perf_counter()
    adapter_dir = demo_adapter(assets, cache_dir, train_file, TrainingRecipe())
    timings["adapter"] = time.perf_counter() - t
    adapter = load_adapter(adapter_dir)
    arms = [arm for name in DEMO_POLICIES for arm in resolve_policy(name).arms()]
    calibration = CalibrationConfig(calib_file, n=len(slices.calibration))
    t = time.perf_counter()
    written = refine(
        str(assets.model_dir), adapter, arms, {a.name: out_dir / "variants" / a.name for a in arms},
        calibration, cache_dir,
    )
    timings["variants"] = time.perf_counter() - t
    diagnostics = diagnose(adapter)
    (out_dir / "inspect.json").write_text(json.dumps(diagnostics, indent=1))
    log(format_text(diagnostics, max_rows=8))
    log("")
    for path, variant in written:
        change = max(float(abs(e.alpha - 1.0).max()) for e in variant.edits)
        log(f"variant {variant.name:<16} max |α−1| {change:.3f}  -> {path}")
    summary = {
        "adapter": str(adapter_dir), "adapter_sha256": adapter.sha256, "base_model": str(assets.model_dir),
        "slices": {k: [v.start, v.stop] for k, v in slices.__dict__.items()},
        "variants": {variant.name: str(path) for path, variant in written},
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": time.perf_counter() - started}.items()},
    }
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=1))
    return summary
