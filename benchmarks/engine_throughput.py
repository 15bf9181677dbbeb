"""Tokens/s of the transformers engine vs. the vLLM engine on the zoo policy, side by side.

    python benchmarks/engine_throughput.py [--requests 64] [--n 4] [--rounds 3]

Sends ``--requests`` concurrent sampling requests (one prompt each, ``--n`` samples,
temperature 1) to each engine, as a search strategy's concurrent solves would, and measures
generated tokens per second of wall time. The HF engine serves concurrent calls one at a
time (no cross-request batching), so it is also measured with all prompts in one batched
call, its best case. Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from nexus_ray.config import CPU_KV_CACHE_BYTES, EngineConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import ARITH

RESULTS = Path(__file__).parent / "results" / "engine_throughput.json"


async def concurrent(engine, prompts: list[str], params: GenerationParams) -> int:
    results = await asyncio.gather(*(engine.generate([p], params) for p in prompts))
    return sum(r[0].completion_tokens for r in results)


def measure(label: str, run, rounds: int) -> dict:
    run()  # warm-up
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        tokens = run()
        seconds = time.perf_counter() - start
        rate = tokens / seconds
        best = max(best or 0.0, rate)
        print(f"  {label:<28} {tokens:6d} tokens in {seconds:6.2f} s = {rate:8.0f} tok/s")
    return {"tokens_per_s": round(best, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    args = parser.parse_args()
    examples = datasets.load("arith-test")
    prompts = [ARITH.prompt(examples[i % len(examples)].problem) for i in range(args.requests)]
    params = GenerationParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)

    gpu = args.device != "cpu"
    hf = build_policy_engine(EngineConfig(model="arith-policy", device=args.device))
    vllm = build_policy_engine(
        EngineConfig(
            model="arith-policy",
            engine="vllm",
            dtype="float32",
            max_model_len=256,
            gpu_memory_utilization=0.3,
            kv_cache_memory_bytes=None if gpu else CPU_KV_CACHE_BYTES,
            enforce_eager=not gpu,
        )
    )
    print(f"{args.requests} concurrent requests x n={args.n}, up to {args.max_tokens} tokens each")
    out = {
        "requests": args.requests,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "device": args.device,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "hf_concurrent": measure(
            "hf, concurrent calls", lambda: asyncio.run(concurrent(hf, prompts, params)), args.rounds
        ),
        "hf_one_batch": measure(
            "hf, one batched call",
            lambda: sum(r.completion_tokens for r in hf.generate_sync(prompts, params)),
            args.rounds,
        ),
        "vllm_concurrent": measure(
            "vllm, concurrent calls", lambda: asyncio.run(concurrent(vllm, prompts, params)), args.rounds
        ),
    }
    out["ratio_vllm_vs_hf_concurrent"] = round(
        out["vllm_concurrent"]["tokens_per_s"] / out["hf_concurrent"]["tokens_per_s"], 2
    )
    out["ratio_vllm_vs_hf_one_batch"] = round(
        out["vllm_concurrent"]["tokens_per_s"] / out["hf_one_batch"]["tokens_per_s"], 2
    )
    vllm.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"vLLM / HF (concurrent calls): {out['ratio_vllm_vs_hf_concurrent']}x")
    print(f"vLLM / HF (HF's best case, one batched call): {out['ratio_vllm_vs_hf_one_batch']}x")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
