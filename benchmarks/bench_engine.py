"""Evaluation at the hardware's limit (issue 23): LoRA-arm cost, workload time and agreement, per engine path.

The demo's shape, measured in one run on the same items: SmolLM2-135M, a rank-8 LoRA on o_proj/down_proj
(the baseline; ``--shape seven``: rank 16 on all seven projections) and three random_index variants of it,
the base model; CommonsenseQA answered in words
(generation, chat template), CommonsenseQA multiple choice (log-likelihood) and IFEval single-instruction
prompts (≤128 new tokens). Four engines, each with an empty item store, one at a time:

- ``multi_lora float32``: vLLM's multi-LoRA kernels in float32, the path before this change (the old default);
- ``merged float32``: W + ΔW written into the engine per arm (the default on a CPU without native bf16);
- ``merged bfloat16``: the default where the CPU has ``avx512_bf16`` (``evaluation.dtype: auto``);
- ``multi_lora bfloat16``: isolates the path's effect from the dtype's at bf16.

Arms are scored one at a time, so each arm's time is its own. Prints:

1. each engine's LoRA-arm decode throughput relative to the base model's on the same engine: 16 prompts ×
   128 new tokens, base and LoRA calls alternated (base, arm 1, base, arm 2, …) so that a machine whose
   load drifts still compares neighbours; the median of the neighbour ratios;
2. the workload's evaluation time per engine, and old / new (multi_lora float32 / this CPU's default);
3. per-item agreement (greedy): merged vs multi-LoRA at the same dtype (the path's own effect), and bf16 vs
   float32 on the merged path (the dtype's): identical generations, identical multiple-choice choices,
   and the largest log-likelihood difference.

    python benchmarks/bench_engine.py [--csqa 64] [--ifeval 16] [--shape o-down|seven] [--engines PATH:DTYPE ...]
                                      [--out benchmarks/results/bench_engine.txt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from release_gate.assets import fetch  # noqa: E402
from release_gate.constants import LLAMA_PROJECTIONS  # noqa: E402
from release_gate.embedded_demo import (  # noqa: E402
    GUARD_TASK,
    TARGET_METRIC,
    TARGET_TASK,
    DemoSlices,
    write_generative_task,
    write_single_instruction_ifeval,
)
from release_gate.evaluation.engine import Arm, Engine, EngineSettings, cpu_flags, resolve_dtype  # noqa: E402
from release_gate.evaluation.in_process import VllmBackend  # noqa: E402
from release_gate.evaluation.runner import TaskRequest, resolve_task  # noqa: E402
from release_gate.evaluation.session import EvaluationSession  # noqa: E402
from release_gate.evaluation.store import ItemStore  # noqa: E402
from release_gate.evaluation.tasks import prepare_environment, task_manager  # noqa: E402
from release_gate.files import read_jsonl  # noqa: E402

from factories import HELDOUT_TASK, smollm2_adapter, write_heldout_task  # noqa: E402

#: (lora_path, dtype) of each engine measured; the first is the old default, the path before this change.
ENGINES = (("multi_lora", "float32"), ("merged", "float32"), ("merged", "bfloat16"), ("multi_lora", "bfloat16"))


#: Adapter shapes (``--shape``): the demo's rank-8 o/down LoRA, and a rank-16 LoRA on all seven projections (the
#: common fine-tuning default; on vLLM its q/k/v and gate/up updates land in the packed qkv_proj/gate_up_proj).
SHAPES = {"o-down": {"r": 8, "alpha": 16, "targets": ("o_proj", "down_proj")},
          "seven": {"r": 16, "alpha": 32, "targets": LLAMA_PROJECTIONS}}


def build_arms(model_dir: Path, root: Path, shape: str) -> list[Arm]:
    """base, a baseline of ``shape``, and three random_index variants of it (the demo's arm shapes)."""
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.edit import decompose, make_variant, write_variant
    from release_gate.surgery.policies import RandomIndex

    baseline = smollm2_adapter(model_dir, root / "baseline", seed=5, **SHAPES[shape])
    adapter = load_adapter(baseline)
    spectra = decompose(adapter.select(SHAPES[shape]["targets"]))
    arms = [Arm.base(), Arm.from_adapter("baseline", baseline)]
    for seed in range(3):
        policy = RandomIndex(name=f"variant{seed}", seed=seed, amp_factor=3.0, sup_factor=0.3)
        out = write_variant(make_variant(adapter, spectra, policy), adapter, root / policy.name, str(model_dir), None)
        arms.append(Arm.from_adapter(policy.name, out))
    return arms


def tasks(assets, root: Path, csqa: int, ifeval: int) -> list:
    rows = read_jsonl(assets.commonsense_qa)
    manager = task_manager([write_generative_task(rows, DemoSlices().evaluation, root / "tasks"),
                            write_heldout_task(rows, DemoSlices().evaluation, root / "tasks"),
                            write_single_instruction_ifeval(assets.ifeval, root / "tasks")])
    requests = [TaskRequest(TARGET_TASK, TARGET_METRIC, limit=csqa, chat_template=True),
                TaskRequest(HELDOUT_TASK.name, "acc", limit=csqa),
                TaskRequest(GUARD_TASK, "prompt_level_strict_acc", limit=ifeval, chat_template=True,
                            max_gen_toks=128)]
    return [resolve_task(r, manager) for r in requests]


def measure(engine: tuple[str, str], model_dir: Path, arms: list[Arm], resolved: list, root: Path) -> tuple[dict, dict]:
    """Seconds per arm (all tasks) and every stored item, on a fresh engine and store."""
    path, dtype = engine
    settings = EngineSettings.for_arms(str(model_dir), arms, lora_path=path, dtype=dtype, max_model_len=1024)
    seconds, items = {}, {}
    store = ItemStore(root / f"items-{path}-{dtype}")
    with EvaluationSession(arms, resolved, store, VllmBackend(settings)) as session:
        sizes = {t.request.name: t.size for t in resolved}
        session.fetch({arms[0].name: {t.request.name: 1 for t in resolved}})  # engine start and warm-up, not timed
        for arm in arms:
            start = time.perf_counter()
            session.fetch({arm.name: sizes})
            seconds[arm.name] = time.perf_counter() - start
    for arm in arms:
        for task in resolved:
            items[(arm.name, task.request.name)] = stored(store, arm, task.request.name, settings.key())
    return seconds, items


def throughput(engine: tuple[str, str], model_dir: Path, arms: list[Arm], prompts: list[list[int]]) -> tuple[float, float]:
    """Median over LoRA arms of (arm tok/s) / (tok/s of the base call just before it), on one engine; and the
    base model's median tok/s."""
    from vllm import SamplingParams

    path, dtype = engine
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True, seed=0)
    settings = EngineSettings.for_arms(str(model_dir), arms, lora_path=path, dtype=dtype, max_model_len=1024)

    def rate(engine: Engine, arm: Arm) -> float:
        start = time.perf_counter()
        outputs = engine.generate(prompts, params, [arm] * len(prompts))
        return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - start)

    with Engine(settings) as engine:
        rate(engine, arms[0])  # warm-up
        pairs = [(rate(engine, arms[0]), rate(engine, arm)) for arm in arms[1:] for _ in range(2)]
    return statistics.median(lora / base for base, lora in pairs), statistics.median(base for base, _ in pairs)


def stored(store: ItemStore, arm: Arm, task: str, engine_key: str) -> dict:
    """Every item the store holds for (arm, task) under this engine, whatever the task key."""
    owner = store.directory(arm, task, "key", engine_key).parent
    found = {}
    for directory in owner.glob(f"{task}-*-{engine_key}"):
        found.update(store.load(arm, task, directory.name[len(task) + 1:-len(engine_key) - 1], engine_key))
    return found


def agreement(a: dict, b: dict) -> dict[str, tuple[int, int]]:
    """Items that agree / items compared, for generations and for multiple-choice choices; and the largest
    multiple-choice log-likelihood gap (key ``gap``, as ``(gap, 0)``)."""
    counts = {"generation": [0, 0], "multiple choice": [0, 0]}
    gap = 0.0
    for key, items in a.items():
        for doc_id, item in items.items():
            other = b[key].get(doc_id)
            if other is None:
                continue
            kind = counts["generation" if item.choice_logprobs is None else "multiple choice"]
            kind[0] += item.response == other.response  # the generation, or the chosen option
            kind[1] += 1
            if item.choice_logprobs is not None:
                gap = max(gap, max(abs(x - y) for x, y in zip(item.choice_logprobs, other.choice_logprobs)))
    return {**{k: (v[0], v[1]) for k, v in counts.items()}, "gap": (gap, 0)}


def agreement_line(label: str, a: dict, b: dict) -> str:
    found = agreement(a, b)
    parts = [f"{kind} {same}/{total} ({100 * same / max(total, 1):.1f}%)" for kind, (same, total) in found.items()
             if kind != "gap"]
    return f"per-item agreement, {label}: {'; '.join(parts)}; largest log-likelihood gap {found['gap'][0]:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csqa", type=int, default=64)
    parser.add_argument("--ifeval", type=int, default=16)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="o-down", help="the adapters' shape (default o-down)")
    parser.add_argument("--engines", nargs="+", default=[" ".join(e) for e in ENGINES], metavar="PATH:DTYPE",
                        help="engines to measure, e.g. multi_lora:float32 merged:bfloat16 (default: all four)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    engines = tuple(tuple(e.replace(":", " ").split()) for e in args.engines)
    assets = fetch()
    prepare_environment(assets)
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = Path(tmp)
        arms = build_arms(assets.model_dir, root, args.shape)
        resolved = tasks(assets, root, args.csqa, args.ifeval)
        results = {engine: measure(engine, assets.model_dir, arms, resolved, root) for engine in engines}
        ifeval = [row["prompt"] for row in read_jsonl(assets.ifeval)][:16]
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
        prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                      return_dict=True)["input_ids"]) for p in ifeval]
        speed = {engine: throughput(engine, assets.model_dir, arms, prompts) for engine in engines}
    flags = sorted(f for f in cpu_flags() if f.startswith("avx512"))
    default = ("merged", resolve_dtype("auto"))
    shape = SHAPES[args.shape]
    lines.append(f"workload: base + 4 LoRA arms (rank {shape['r']} on {'/'.join(shape['targets'])}); {args.csqa} CSQA-in-words (chat) + {args.csqa} CSQA "
                 f"multiple choice + {args.ifeval} IFEval single-instruction (≤128 tokens); SmolLM2-135M; "
                 f"{os.cpu_count()} cores; flags {' '.join(flags) or 'no avx512'}; this CPU's default: "
                 f"{' '.join(default)}")
    for engine, (seconds, _) in results.items():
        lora = [s for arm, s in seconds.items() if arm != "base"]
        ratio, base_rate = speed[engine]
        lines.append(f"{' '.join(engine):>20}: LoRA-arm decode throughput / base (16 × 128 tokens, alternated) = "
                     f"{ratio:.2f} (base {base_rate:.0f} tok/s); workload: base {seconds['base']:.1f} s, LoRA arms "
                     f"{', '.join(f'{s:.1f}' for s in lora)} s, total {sum(seconds.values()):.1f} s")
    if ENGINES[0] in results and default in results:
        old, new = (sum(results[e][0].values()) for e in (ENGINES[0], default))
        lines.append(f"workload evaluation time, old path ({' '.join(ENGINES[0])}) / this CPU's default "
                     f"({' '.join(default)}): {old:.1f} / {new:.1f} s = ×{old / new:.2f}")
    pairs = [*((f"merged vs multi_lora, {d}", ("multi_lora", d), ("merged", d)) for d in ("float32", "bfloat16")),
             ("bfloat16 vs float32, merged", ("merged", "float32"), ("merged", "bfloat16")),
             ("merged bfloat16 vs multi_lora float32 (new default vs old)", ENGINES[0], ("merged", "bfloat16"))]
    lines.extend(agreement_line(label, results[a][1], results[b][1]) for label, a, b in pairs
                 if a in results and b in results)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
