"""``release-gate demo``: the embedded offline default, the whole gate end to end on a CPU.

Base SmolLM2-135M-Instruct from the packaged assets; the demo LoRA adapter (r 8 on o_proj/down_proj, the
modules Spectral Surgery edits) is shipped in the package (``release_gate/demo_adapter/``): trained once
by :func:`train_demo_adapter` on CommonsenseQA rows 0–255 (1 epoch), answers in words through the chat template, so
every machine gates the same adapter (``--retrain`` reproduces the recipe into the cache). Calibration on
128 disjoint rows; the target is CommonsenseQA answered in words over the held-out rows, scored strictly
(the answer must be the gold option's words: what the adapter was trained to write); the guard is IFEval's
single-instruction prompts through the chat template; the gate is the product's default, sequential one.
Every choice was measured (docs/demo-recipes.md). The demo writes an ordinary run config and runs the
pipeline on it, so everything it shows is the product itself."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .assets import HUB_IDS, default_cache_dir, fetch
from .config import load_run_config
from .constants import DEFAULT_TARGETS
from .evaluation.tasks import write_ifeval_task, write_template_task
from .files import atomic_directory, content_key, read_jsonl, write_jsonl_atomic, write_text_atomic
from .pipeline import RunResult, prepare_run_dir, run
from .surgery.adapter import SAFETENSORS_FILE, load_adapter
from .surgery.calibration import CalibrationConfig, Example, answer_nll, encode, length_buckets
from .surgery.inspect import diagnose, format_text

logger = logging.getLogger(__name__)

#: abs_select and smooth_abs at ×3.0 / ×0.3 (policies/*_strong.yaml): the paper's ×1.25 / ×0.8 change about
#: 1% of this 135M adapter's answers; grad_direction at the paper's settings already moves about 20%.
DEMO_POLICIES = ("abs_select_strong", "smooth_abs_strong", "grad_direction")
#: The random_index controls take abs_select_strong's counts and factors (paper §3.4.3: a matched control).
DEMO_CONTROL_PARAMS = {"amp_factor": 3.0, "sup_factor": 0.3}


@dataclass(frozen=True)
class DemoSlices:
    """Disjoint row ranges of the CommonsenseQA validation set (1221 rows)."""

    train: range = range(0, 712)
    calibration: range = range(712, 840)
    evaluation: range = range(840, 1221)


@dataclass(frozen=True)
class TrainingRecipe:
    """How the demo adapter is trained (part of its cache key)."""

    r: int = 8
    lora_alpha: int = 16
    #: the modules Spectral Surgery edits by default, so every module of the demo adapter is refined
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    epochs: int = 2
    learning_rate: float = 2e-3
    warmup_steps: int = 8  # linear warm-up, then cosine decay to 0
    batch_size: int = 8
    seed: int = 0

    def learning_rate_at(self, step: int, total: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total``."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


#: The shipped adapter's recipe: one epoch over the first 256 training rows (32 steps, about a minute on two
#: cores, so ``--retrain`` and its test are cheap). It teaches the answer format the target scores; the
#: longer recipe (:class:`TrainingRecipe`'s defaults, 2 epochs over 712 rows) gains a few points of accuracy
#: at five times the training (docs/demo-recipes.md) and is the base of the gate-outcome tests' constructions.
DEMO_RECIPE = TrainingRecipe(epochs=1, warmup_steps=4)
DEMO_TRAIN_ROWS = range(0, 256)


def csqa_prompt(row: dict[str, Any]) -> tuple[str, str]:
    """A multiple-choice prompt and its answer letter (lm-eval's ``commonsense_qa`` format)."""
    choices = "\n".join(f"{label}. {text}" for label, text in zip(row["choices"]["label"], row["choices"]["text"]))
    return f"Question: {row['question'].strip()}\n{choices}\nAnswer:", f" {row['answerKey']}"


def csqa_answer(row: dict[str, Any]) -> str:
    """The gold option's text (what ``commonsense_qa_gen`` expects the model to write)."""
    return row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]


#: The demo's target: CommonsenseQA answered in words, held-out rows only, through the chat template.
TARGET_TASK = "commonsense_qa_gen_heldout"
#: Scored strictly: the answer is the gold option's words and nothing else (``commonsense_qa_gen``'s
#: ``exact``), the format the adapter was trained to write; ``acc`` also credits a letter or extra words.
TARGET_METRIC = "exact"
#: Held-out items the demo scores: all 381, so that the first look (40% of them) already separates the arms.
TARGET_LIMIT = None
#: The demo's looks, as fractions of each task's items: at a first look at 40% of the items (153 target items,
#: 26 guard prompts) every arm sits at its own point of the reward-vs-risk plot and the adapter's effect over
#: base is far beyond p = 0.001 (40 / 0, p = 9e-13); at a quarter (48 items) two controls changed no item and sat
#: on top of each other (docs/demo-recipes.md). Half the items separated the arms too, at more cost.
DEMO_LOOKS = (0.4, 1.0)


def write_generative_task(rows: list[dict[str, Any]], indices: range, directory: Path) -> Path:
    """``commonsense_qa_gen`` (the answer in words) over the held-out rows only."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{TARGET_TASK}.jsonl"
    write_jsonl_atomic(data, (rows[i] for i in indices))
    write_template_task("commonsense_qa_gen", directory, TARGET_TASK, data)
    return directory


#: The demo's guard: IFEval's prompts with exactly one instruction (305 of 541), through the chat template.
GUARD_TASK = "ifeval_single"


def write_single_instruction_ifeval(ifeval: Path, directory: Path) -> Path:
    """lm-eval's IFEval over its single-instruction prompts only.

    SmolLM2-135M satisfies almost no prompt that stacks two or three instructions (the base model passed
    none of the 32 in a 64-prompt sample, 6 of the 32 single ones): those prompts score 0 for every arm, so
    they cannot show a drop and only dilute the guard. On one instruction the prompt-level score is the
    instruction-following rate, which this model has and an edit can take away.
    """
    return write_ifeval_task(GUARD_TASK, (r for r in read_jsonl(ifeval) if len(r["instruction_id_list"]) == 1),
                             directory)


def write_slice(rows: list[dict[str, Any]], indices: range, path: Path) -> Path:
    """Prompt/answer rows in the target's format (the question with its options; the answer in words),
    rendered through the chat template by ``template: chat`` when trained on or calibrated with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl_atomic(path, ({"prompt": csqa_prompt(rows[i])[0], "answer": csqa_answer(rows[i]), "id": rows[i]["id"]}
                                     for i in indices))


def train_demo_adapter(model_dir: Path, train_file: Path, out: Path, recipe: TrainingRecipe) -> Path:
    """Train the demo LoRA with PEFT (answer-token loss) and save it atomically."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.lora_alpha, target_modules=list(recipe.target_modules),
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    # the config names the base by its Hub id, never by this machine's path (the demo adapter is shipped)
    peft_model.peft_config["default"].base_model_name_or_path = HUB_IDS.get(Path(model_dir).name, Path(model_dir).name)
    chat = CalibrationConfig(train_file, template="chat")  # the chat template renders prompts, as at evaluation
    rows = read_jsonl(train_file)
    encoded = [encode(Example(i, i + 1, r["prompt"], r["answer"]), tokenizer, chat) for i, r in enumerate(rows)]
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate)
    inner = peft_model.base_model.model
    peft_model.train()
    batches = length_buckets(encoded, recipe.batch_size)
    rng = random.Random(recipe.seed)
    total = recipe.epochs * len(batches)
    with tqdm(total=total, desc="training demo adapter", unit="step") as bar:
        for _ in range(recipe.epochs):
            rng.shuffle(batches)
            for batch in batches:
                for group in optimizer.param_groups:
                    group["lr"] = recipe.learning_rate_at(bar.n, total)
                loss = answer_nll(inner, encoded, batch, tokenizer.pad_token_id) / len(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    with atomic_directory(out) as tmp:
        peft_model.save_pretrained(tmp)
    return out


#: The demo adapter as shipped: trained once by :func:`train_demo_adapter` with :class:`TrainingRecipe` on
#: :attr:`DemoSlices.train`; ``recipe.json`` beside it records that recipe and the effect measured on the target.
SHIPPED_ADAPTER = Path(__file__).with_name("demo_adapter")
RECIPE_FILE = "recipe.json"


def shipped_recipe() -> dict[str, Any]:
    """``demo_adapter/recipe.json``: the recipe, training rows and measured effect of the shipped adapter."""
    return json.loads((SHIPPED_ADAPTER / RECIPE_FILE).read_text(encoding="utf-8"))


def recipe_record(recipe: TrainingRecipe, rows: range) -> dict[str, Any]:
    """The parts of ``recipe.json`` that :func:`retrained_adapter` reproduces (JSON types)."""
    return {"recipe": {**asdict(recipe), "target_modules": list(recipe.target_modules)},
            "train_rows": [rows.start, rows.stop]}


def retrained_adapter(model_dir: Path, cache_dir: Path, train_file: Path, recipe: TrainingRecipe) -> Path:
    """The demo adapter retrained from ``recipe`` (``demo --retrain``), cached by recipe and training rows."""
    key = content_key([recipe.__dict__, train_file.read_text()])
    path = cache_dir / "demo" / f"adapter-{key}"
    if not (path / SAFETENSORS_FILE).is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_demo_adapter(model_dir, train_file, path, recipe)
    return path


def link_demo_adapter(cache_dir: Path, adapter: Path) -> Path:
    """``<cache>/demo/adapter`` → the adapter the demo ran (the name examples/smollm2-offline.yaml uses)."""
    stable = cache_dir / "demo" / "adapter"
    target = adapter.resolve()
    if not stable.is_symlink() or stable.resolve() != target:
        tmp = stable.with_name(".adapter.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(stable)
    return stable


@dataclass(frozen=True)
class DemoSize:
    """How much of the held-out target and which IFEval guard the demo scores, the guard's budget, and
    whether the gate looks sequentially (the product's default: an arm stops once it can no longer pass).

    The budget is not below the guard's planned minimum detectable effect at this n (the plan prints
    both): a smaller budget could not be shown kept, and every variant would fail it by construction.
    """

    target_limit: int | None = TARGET_LIMIT
    guard_limit: int | None = 64
    guard_max_gen_toks: int | None = 128
    guard_budget: float = 0.20
    guard_task: str = GUARD_TASK
    sequential: bool = True
    looks: tuple[float, ...] = DEMO_LOOKS


#: ``--full``: every arm on every held-out item and all 541 IFEval prompts at IFEval's own token cap, in
#: one look (the budget can then be tighter).
FULL = DemoSize(None, None, None, 0.10, "ifeval", sequential=False)


def demo_config(base_model: Path, adapter: Path, calibration: Path, tasks: Path, out_dir: Path,
                cache_dir: Path, size: DemoSize) -> dict[str, Any]:
    """The run config the demo executes (written to ``<out>/config.yaml`` so it can be re-run by hand)."""
    guard: dict[str, Any] = {"task": size.guard_task, "metric": "prompt_level_strict_acc", "max_drop": size.guard_budget,
                             "chat_template": True}
    guard.update({k: v for k, v in (("limit", size.guard_limit), ("max_gen_toks", size.guard_max_gen_toks))
                  if v is not None})
    target: dict[str, Any] = {"task": TARGET_TASK, "metric": TARGET_METRIC, "chat_template": True}
    if size.target_limit is not None:
        target["limit"] = size.target_limit
    return {
        "base_model": str(base_model), "adapter": str(adapter), "output": {"dir": str(out_dir.resolve())},
        "cache_dir": str(cache_dir),
        "calibration": {"file": str(calibration), "n": len(DemoSlices().calibration), "template": "chat"},
        "policies": list(DEMO_POLICIES), "controls": {"seeds": [0, 1, 2], "params": dict(DEMO_CONTROL_PARAMS)},
        "evaluation": {"include_path": [str(tasks)], "max_model_len": 1024},
        "targets": [target], "guards": [guard],
        "gate": {"alpha": 0.05, "min_gain": 0.0, "mode": "statistical", "holm": True, "sequential": size.sequential,
                 **({"looks": list(size.looks)} if size.sequential else {})},
    }


def run_demo(out_dir: Path, cache_dir: Path | None = None, size: DemoSize = DemoSize(), *,
             retrain: bool = False) -> RunResult:
    """Run the embedded default end to end: assets, the demo adapter, the whole gate, the report.

    The shipped adapter is gated unless ``retrain``: then its recipe is trained into the cache (once) and
    gated instead, so anyone can check that the recipe, not the shipped bytes, gives the demo's story.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    prepare_run_dir(out_dir, cache_dir / "demo", resume=True)
    assets = fetch(cache_dir)
    rows = read_jsonl(assets.commonsense_qa)
    slices = DemoSlices()
    demo_dir = cache_dir / "demo"
    calib_file = write_slice(rows, slices.calibration, demo_dir / "data" / "csqa_calibration.jsonl")
    tasks = write_generative_task(rows, slices.evaluation, demo_dir / "tasks")
    write_single_instruction_ifeval(assets.ifeval, tasks)  # the guard, beside the target
    recipe = DEMO_RECIPE
    if retrain:
        train_file = write_slice(rows, DEMO_TRAIN_ROWS, demo_dir / "data" / "csqa_train.jsonl")
        adapter_dir = retrained_adapter(assets.model_dir, cache_dir, train_file, recipe)
    else:
        adapter_dir = SHIPPED_ADAPTER  # its recipe.json is DEMO_RECIPE on DEMO_TRAIN_ROWS (tests/test_demo.py)
    logger.info("demo adapter (%s): r %d, α %d on %s, CommonsenseQA rows %d–%d (answers in words, chat template), "
                "%d epoch%s, lr %g with warm-up and cosine decay", "retrained here" if retrain else "shipped",
                recipe.r, recipe.lora_alpha, "/".join(recipe.target_modules), DEMO_TRAIN_ROWS.start,
                DEMO_TRAIN_ROWS.stop - 1, recipe.epochs, "s" if recipe.epochs != 1 else "", recipe.learning_rate)
    logger.info("demo policies: %s; abs_select and smooth_abs at ×3.0 / ×0.3 because the paper's ×1.25 / ×0.8 "
                "change about 1%% of this small adapter's answers (docs/demo-recipes.md); random_index controls "
                "matched to ×3.0 / ×0.3", ", ".join(DEMO_POLICIES))
    logger.info(format_text(diagnose(load_adapter(adapter_dir)), max_rows=8))
    link_demo_adapter(cache_dir, adapter_dir)
    config = demo_config(assets.model_dir, adapter_dir, calib_file, tasks, out_dir, cache_dir, size)
    config_path = out_dir / "config.yaml"
    write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    return run(load_run_config(config_path), resume=True)
