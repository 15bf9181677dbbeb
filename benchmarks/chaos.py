"""No lost answers when a replica dies: kill a policy replica under 100 solves in flight.

    python benchmarks/chaos.py --replicas 2 [--requests 100] [--strategy weighted --budget 4]

Starts its own Ray (2 CPUs) and the service of deployments/local-cpu.yaml with ``--replicas``
PolicyWorker replicas (``--num-cpus`` each), posts ``--requests`` seeded solves of arith
problems with known answers over real HTTP all at once, and kills the policy replica with the
most calls in flight (``ray.kill``, no restart: Serve starts a replacement) as soon as one has
``--min-in-flight``. Prints correct 200s, wrong 200s, 503s, other errors, hung requests (no
answer within ``--bound``), p50/p99 latency of the 200s and the time to recovery: from the kill
to the first 200 for a request sent after it (a probe, one greedy solve at a time), and to the
replacement replica running. Writes benchmarks/results/chaos/replicas-<N>.json.
"""

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
from ray import serve
from tqdm import tqdm

from nexus_ray.config import load_service_config
from nexus_ray.serving import admission, chaos
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import wait_healthy
from nexus_ray.tasks import arith

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deployments" / "local-cpu.yaml"
APP, PLANNER = "nexus", "planner-chaos-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(replicas: int, num_cpus: float) -> str:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="chaos")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config, _ = load_service_config(CONFIG)
    args = config.model_dump() | {"planner_name": PLANNER, "num_cpus": num_cpus}
    args["policy_worker"] |= {"replicas": replicas, "num_cpus": num_cpus}
    args["prm_worker"] |= {"num_cpus": num_cpus}
    admission.clear_state(PLANNER)
    serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 600)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=2, help="PolicyWorker replicas")
    parser.add_argument("--requests", type=int, default=100, help="solves in flight at once")
    parser.add_argument("--strategy", default="weighted")
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--levels", default="1", help="arith levels of the problems (level 1: pass@1 1.000)")
    parser.add_argument("--seed", type=int, default=16, help="of the problem set")
    parser.add_argument(
        "--min-in-flight", type=int, default=30, help="kill once a replica has this many calls"
    )
    parser.add_argument("--num-cpus", type=float, default=0.25, help="CPUs reserved per replica")
    parser.add_argument(
        "--bound", type=float, default=120, help="seconds after which a request counts as hung"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chaos")
    opts = parser.parse_args()

    load_before = os.getloadavg()
    t0 = time.monotonic()
    print(f"starting Ray and the service ({opts.replicas} policy replica(s), {opts.num_cpus:g} CPU each) ...")
    problems = arith.generate_set(opts.requests, opts.seed, tuple(int(x) for x in opts.levels.split(",")))
    bodies = [{"problem": p.expression, "strategy": opts.strategy, "budget": opts.budget} for p in problems]
    try:
        url = start(opts.replicas, opts.num_cpus)
        print(f"  healthy after {time.monotonic() - t0:.0f} s")
        began = time.monotonic()
        flood = chaos.Flood(url + "/v1/solve", bodies, opts.bound)
        killed: list = []

        def kill_and_watch() -> None:  # the recovery watch starts at the kill, beside the flood
            kill = chaos.kill_busiest_replica(APP, "PolicyWorker", opts.min_in_flight)
            probe = {"problem": "1+2", "strategy": "greedy"}
            killed.extend(
                [
                    kill,
                    chaos.watch_recovery(url + "/v1/solve", probe, kill, APP, "PolicyWorker", opts.replicas),
                ]
            )

        killer = threading.Thread(target=kill_and_watch)
        killer.start()
        with tqdm(total=opts.requests, desc="solves answered", unit="solve") as bar:

            def tick(done: int) -> None:
                bar.update(done - bar.n)

            outcomes = flood.outcomes(tick)
        killer.join()
        wall = time.monotonic() - began
        kill, recovery = killed
        print(
            f"killed {kill.replica.split('::')[-1]} with {kill.calls_in_flight} calls in flight, "
            f"{kill.at - began:.1f} s into the run"
        )
        print("waiting for the replacement replica ...")
        recovery.join()
    finally:
        serve.shutdown()
        ray.shutdown()
    report = chaos.Report.of(outcomes, [p.answer for p in problems])
    sent_before_kill = sum(o.sent < kill.at for o in outcomes)

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    print(
        f"\n{opts.requests} x {opts.strategy}@{opts.budget}, {opts.replicas} policy replica(s), one killed:"
    )
    print(f"  correct 200s      {report.correct}")
    print(f"  wrong 200s        {report.wrong}")
    print(f"  503s              {report.unavailable}")
    print(f"  other errors      {report.other}")
    print(f"  {f'hung (> {opts.bound:g} s)':18}{report.hung}")
    print(f"  latency of 200s   p50 {secs(report.p50_s)}, p99 {secs(report.p99_s)}")
    print(f"  answering again   {secs(recovery.answering_s)} after the kill (first 200 sent after it)")
    print(f"  replaced          {secs(recovery.replaced_s)} after the kill (replacement replica running)")
    print(f"  run               {wall:.1f} s; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "options": {k: v for k, v in vars(opts).items() if k != "out"},
        "killed": {"replica": kill.replica, "calls_in_flight": kill.calls_in_flight},
        "requests_sent_before_kill": sent_before_kill,
        "report": report.__dict__,
        "answering_again_s": recovery.answering_s,
        "replacement_running_s": recovery.replaced_s,
        "run_s": round(wall, 2),
        "outcomes": [
            {"status": o.status, "error": o.error, "seconds": round(o.seconds, 3)} for o in outcomes
        ],
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"replicas-{opts.replicas}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if report.hung == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
