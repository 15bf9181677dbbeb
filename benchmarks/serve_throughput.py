"""The service's three figures, each measured side by side in one run.

    python benchmarks/serve_throughput.py [--solves 64] [--skip-cold-start]

1. PRM scoring throughput through a RewardWorker with cross-request batching vs. one call
   at a time, at 16 and 64 concurrent solves (each solve scores its 4 best-of-4 samples in
   one call, as ``weighted`` does).
2. ``/v1/solve`` over real HTTP vs. the same strategy run in this process on the same engine
   type, at the same concurrency (solves per second).
3. Cold start: seconds from ``serve run deployments/local-cpu.yaml`` to the first 200.

Writes benchmarks/results/serve_throughput.json.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
from ray import serve

from nexus_ray.config import WorkerConfig, load_service_config
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import GenerationParams, ScoreRequest
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import request, wait_healthy
from nexus_ray.serving.workers import RewardWorker, worker_options
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import ARITH

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_throughput.json"
CONFIG = ROOT / "deployments" / "local-cpu.yaml"


def score_requests(problems: list[str], n: int) -> list[list[ScoreRequest]]:
    """Per solve, the n sampled solutions it asks the PRM to score (real policy samples)."""
    policy = build_policy_engine(load_service_config(CONFIG)[0].policy)
    prompts = [ARITH.prompt(p) for p in problems]
    results = policy.generate_sync(prompts, GenerationParams(n=n, temperature=1.0, max_tokens=200, seed=0))
    return [[ScoreRequest(p, ARITH.steps(c.text)) for c in r.completions] for p, r in zip(prompts, results)]


async def _score_all(handle, solves: list[list[ScoreRequest]]) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(handle.score.remote(reqs) for reqs in solves))
    return sum(s.tokens for r in results for s in r), time.perf_counter() - start


def prm_batching(problems: list[str], concurrencies: list[int]) -> list[dict]:
    prm = load_service_config(CONFIG)[0].prm
    handles = {}
    for batching in (True, False):
        worker = WorkerConfig(replicas=1, num_cpus=0.5, batching=batching)
        app = RewardWorker.options(**worker_options(prm, worker)).bind(prm.model_dump(), batching)
        handles[batching] = serve.run(app, name=f"prm-batching-{batching}", route_prefix=None)
    rows = []
    all_solves = score_requests(problems[: max(concurrencies)], 4)
    for c in concurrencies:
        solves = all_solves[:c]
        row = {"concurrent_solves": c}
        for batching, handle in handles.items():
            asyncio.run(_score_all(handle, solves[:2]))  # warm-up
            tokens, seconds = asyncio.run(_score_all(handle, solves))
            row["batched" if batching else "one_call_at_a_time"] = round(tokens / seconds, 1)
            print(f"  PRM, {c:3d} concurrent solves, batching={batching!s:<5}: {tokens / seconds:9.0f} tok/s")
        row["ratio"] = round(row["batched"] / row["one_call_at_a_time"], 2)
        rows.append(row)
    for batching in handles:
        serve.delete(f"prm-batching-{batching}")
    return rows


def http_vs_in_process(problems: list[str], concurrency: int, strategy: str, budget: int) -> dict:
    config, _ = load_service_config(CONFIG)
    serve.run(
        build_app(config.model_dump() | {"planner_name": "bench-planner"}), name="nexus", route_prefix="/"
    )
    url = "http://127.0.0.1:8000"
    wait_healthy(url, 300)
    body = lambda p: {"problem": p, "strategy": strategy, "budget": budget}
    request(url + "/v1/solve", body(problems[0]))  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(lambda p: request(url + "/v1/solve", body(p))[0], problems))
    http_s = time.perf_counter() - start
    assert set(statuses) == {200}, statuses
    serve.delete("nexus")

    policy, prm = build_policy_engine(config.policy), build_reward_engine(config.prm)

    async def run_all() -> float:
        sem = asyncio.Semaphore(concurrency)

        async def one(p: str) -> None:
            async with sem:
                await registry.run(
                    strategy, SearchContext(policy, prm, ARITH.prompt(p), ARITH, seed=0), budget
                )

        await one(problems[0])  # warm-up
        t = time.perf_counter()
        await asyncio.gather(*(one(p) for p in problems))
        return time.perf_counter() - t

    local_s = asyncio.run(run_all())
    out = {
        "strategy": strategy,
        "budget": budget,
        "concurrency": concurrency,
        "solves": len(problems),
        "http_solves_per_s": round(len(problems) / http_s, 2),
        "in_process_solves_per_s": round(len(problems) / local_s, 2),
        "ratio": round(local_s / http_s, 3),
    }
    print(
        f"  /v1/solve over HTTP: {out['http_solves_per_s']} solves/s; in process: "
        f"{out['in_process_solves_per_s']} solves/s; ratio {out['ratio']}"
    )
    return out


def cold_start() -> dict:
    """A fresh `serve run` in its own local Ray cluster, timed to the first 200 on /v1/solve."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(CONFIG)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - start < 600:
            try:
                if (
                    request(
                        "http://127.0.0.1:8000/v1/solve", {"problem": "1+2", "strategy": "greedy"}, timeout=10
                    )[0]
                    == 200
                ):
                    break
            except OSError:
                pass
            time.sleep(0.25)
        seconds = time.perf_counter() - start
        print(f"  cold start, serve run -> first 200: {seconds:.1f} s")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "stop", "--force"], env=env, capture_output=True
        )
    return {"seconds_to_first_200": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--solves", type=int, default=64, help="solves for the HTTP vs in-process figure")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--strategy", default="weighted")
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--skip-cold-start", action="store_true")
    args = parser.parse_args()
    problems = [e.problem for e in datasets.load("arith-test")][::3][: max(64, args.solves)]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    if not args.skip_cold_start:
        out["cold_start"] = cold_start()  # first: it needs port 8000 and its own cluster
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    out["prm_batching"] = prm_batching(problems, [16, 64])
    out["http_vs_in_process"] = http_vs_in_process(
        problems[: args.solves], args.concurrency, args.strategy, args.budget
    )
    serve.shutdown()
    ray.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
