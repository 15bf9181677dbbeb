"""Tree search with and without the transformers engine's prefix cache: wall time and ledger.

    python benchmarks/tree_cache.py --strategies beam,dvts,lookahead,mcts --budget 16 --problems 40

Two pairs of engines on the same weights: one caching (the policy's prompt prefixes,
``prefix_cache_tokens``, and the step checker's scored steps, ``PieceCache``), one not; every
(problem, strategy) runs on both, alternating which goes first, with the same seed. Reports per
strategy the wall time of each, the ledger's prefill tokens, PRM tokens and total compute
(policy-token equivalents), whether the answers agree, and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.engines.hf import HFPolicyEngine, HFRewardEngine
from nexus_ray.jobs.eval import select_examples
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.tasks.format import ARITH
from nexus_ray.zoo.registry import resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--strategies", default="beam,dvts,lookahead,mcts")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--problems", type=int, default=40, help="taken evenly from levels 3-5 of arith-test")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tree_cache.json"))
    args = p.parse_args(argv)
    per_level = -(-args.problems // 3)
    examples = [e for e in select_examples("arith-test", per_level) if e.level in (3, 4, 5)][: args.problems]
    engines = {
        "uncached": (
            HFPolicyEngine(resolve("arith-policy")),
            HFRewardEngine(resolve("arith-prm"), max_batch_size=16),
        ),
        "cached": (
            HFPolicyEngine(resolve("arith-policy"), prefix_cache_tokens=32768),
            HFRewardEngine(resolve("arith-prm"), max_batch_size=16, cache_tokens=32768),
        ),
    }
    load_before = os.getloadavg()[0]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "budget": args.budget,
        "problems": len(examples),
        "strategies": {},
    }
    for strategy in args.strategies.split(","):
        rows = {
            name: {"seconds": 0.0, "prefill": 0, "prm": 0, "compute": 0.0, "answers": []} for name in engines
        }
        for i, e in enumerate(examples):
            order = list(engines) if i % 2 == 0 else list(reversed(engines))
            for name in order:
                ctx = SearchContext.for_problem(*engines[name], ARITH, e.problem, seed=i)
                start = time.perf_counter()
                result = asyncio.run(registry.run(strategy, ctx, args.budget))
                rows[name]["seconds"] += time.perf_counter() - start
                rows[name]["prefill"] += result.ledger.policy_prefill_tokens
                rows[name]["prm"] += result.ledger.prm_tokens
                rows[name]["compute"] += result.ledger.policy_token_equivalents
                rows[name]["answers"].append(result.answer)
        same = sum(a == b for a, b in zip(rows["cached"]["answers"], rows["uncached"]["answers"]))
        summary = {
            name: {
                "seconds_per_problem": round(r["seconds"] / len(examples), 3),
                "prefill_per_problem": round(r["prefill"] / len(examples), 1),
                "prm_tokens_per_problem": round(r["prm"] / len(examples), 1),
                "compute_per_problem": round(r["compute"] / len(examples), 1),
            }
            for name, r in rows.items()
        }
        summary["same_answers"] = f"{same}/{len(examples)}"
        summary["speedup"] = round(rows["uncached"]["seconds"] / rows["cached"]["seconds"], 2)
        summary["compute_ratio"] = round(rows["uncached"]["compute"] / rows["cached"]["compute"], 2)
        report["strategies"][strategy] = summary
        u, c = summary["uncached"], summary["cached"]
        wall = (
            f"wall {u['seconds_per_problem']:.2f} -> {c['seconds_per_problem']:.2f} s ({summary['speedup']}x)"
        )
        prefill = f"prefill {u['prefill_per_problem']:.0f} -> {c['prefill_per_problem']:.0f}"
        prefill += f", PRM tokens {u['prm_tokens_per_problem']:.0f} -> {c['prm_tokens_per_problem']:.0f}"
        ledger = f"ledger {u['compute_per_problem']:.0f} -> {c['compute_per_problem']:.0f}"
        print(
            f"{strategy}@{args.budget}: {wall}, {prefill}, {ledger} ({summary['compute_ratio']}x), "
            f"same answers {summary['same_answers']}"
        )
    report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"load average {report['load_average'][0]} -> {report['load_average'][1]}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
