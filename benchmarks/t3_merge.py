"""T3 test-time merging on the zoo experts against static merges and oracle routing.

    python benchmarks/t3_merge.py                       # the T3 search's best rule, 100 + 100 problems
    python benchmarks/t3_merge.py --gamma -100 --lambda-max 2 --no-normalize
    python benchmarks/t3_merge.py --modulate none    # without the rows over the static merge

The held-out problems of both sub-tasks (``nexus_ray.tasks.subtasks``), shuffled together
(seeded) and sent in engine batches of ``--batch-size``, as a service would see them: ``t3``
merges per prompt, ``t3_batch`` once per (mixed) batch; both again with the rule's coefficients
modulating the best static merge (``--modulate``: expert i's weight in it times lambda_i /
mean(lambda)), beside that static merge served as it is. Greedy, exact step check. The static
rows (the Tune search's best merge, the soup, each expert, oracle routing = each sub-task to its
expert) are read from the merge search's summary (same problems, same scorer). Latency per
request: a batch's wall time over its size, T3 against the plain engine on the base (any static
merge serves at that cost); compute overhead: the coefficients' forward passes over the prompt
(``merge_probe_tokens``) against what generation spent. Writes ``t3_merge.json``,
``coefficients.png`` (the coefficients by sub-task) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from nexus_ray.config import EngineConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.merge.run import merge_into
from nexus_ray.tasks import arith
from nexus_ray.tasks.subtasks import SUBTASKS, eval_set

BASE, EXPERTS = "arith-policy", ["arith-expert-addsub", "arith-expert-mul"]
GREEDY = GenerationParams(n=1, temperature=0.0, max_tokens=200, seed=0)


def mixed_problems(n: int, seed: int) -> list[tuple[str, arith.Problem]]:
    """Every sub-task's first ``n`` held-out problems, shuffled together."""
    items = [(name, p) for name in SUBTASKS for p in eval_set(name, n)]
    random.Random(seed).shuffle(items)
    return items


def run_engine(engine, items: list[tuple[str, arith.Problem]], batch_size: int) -> dict:
    """Greedy accuracy per sub-task, latency per request, the ledger's tokens, coefficients."""
    correct = {name: 0 for name in SUBTASKS}
    coeffs: dict[str, list[list[float]]] = {name: [] for name in SUBTASKS}
    probe = prefill = generated = 0
    seconds = 0.0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [p.prompt for _, p in batch]
        began = time.perf_counter()
        results = engine.generate_sync(prompts, GREEDY)
        seconds += time.perf_counter() - began
        lambdas = engine.coefficients(prompts) if hasattr(engine, "coefficients") else [[]] * len(batch)
        for (name, problem), r, lam in zip(batch, results, lambdas):
            correct[name] += arith.check(problem.expression, r.completions[0].text).correct
            coeffs[name].append(list(lam))
            probe += r.merge_probe_tokens
            prefill += r.prompt_tokens
            generated += r.completion_tokens
    per = {name: sum(1 for n, _ in items if n == name) for name in SUBTASKS}
    accuracy = {name: correct[name] / per[name] for name in SUBTASKS}
    out = {
        "accuracy": accuracy,
        "objective": sum(accuracy.values()) / len(accuracy),
        "latency_ms_per_request": 1000 * seconds / len(items),
        "tokens_per_request": {
            "merge_probe": probe / len(items),
            "prefill": prefill / len(items),
            "generated": generated / len(items),
        },
        "coefficients": coeffs,
    }
    if hasattr(engine, "timings"):
        out["seconds"] = {k: round(v, 3) for k, v in engine.timings.items()} | {"merges": engine.merges}
    return out


def static_rows(summary_path: Path) -> dict[str, dict]:
    """The merge search's recorded rows: its best merge, the soup, each expert, oracle routing."""
    s = json.loads(summary_path.read_text())
    best = s["best"]["recheck"]
    rows = {
        "best static merge (Tune)": best,
        "soup (uniform linear)": s["baselines"]["uniform linear"],
    }
    experts = {m: s["baselines"][f"expert {m}"] for m in EXPERTS}
    for m, r in experts.items():
        rows[f"{m} alone"] = r
    oracle = {"acc_addsub": experts[EXPERTS[0]]["acc_addsub"], "acc_mul": experts[EXPERTS[1]]["acc_mul"]}
    rows["oracle routing"] = oracle | {"objective": (oracle["acc_addsub"] + oracle["acc_mul"]) / 2}
    return {
        k: {"addsub": v["acc_addsub"], "mul": v["acc_mul"], "objective": v["objective"]}
        for k, v in rows.items()
    }


def plot(coeffs: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    """Histograms of each expert's coefficient, one colour per sub-task, one row per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(coeffs)
    fig, axes = plt.subplots(len(methods), len(EXPERTS), figsize=(4.4 * len(EXPERTS), 3.0 * len(methods)))
    for row, method in enumerate(methods):
        for col, expert in enumerate(EXPERTS):
            ax = axes[row][col]
            for name in SUBTASKS:
                values = [c[col] for c in coeffs[method][name]]
                ax.hist(values, bins=30, alpha=0.6, label=f"{name} prompts")
            ax.set_title(f"{method}: coefficient of {expert}", fontsize=9)
            ax.set_xlabel("lambda")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/t3_merge.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=100, help="held-out problems per sub-task")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per engine batch (mixed sub-tasks)")
    p.add_argument(
        "--search", default="benchmarks/results/tune/t3-zoo/best-t3.yaml", help="the T3 rule to run"
    )
    p.add_argument("--lambda-min", type=float, default=None, help="overrides the rule's lambda_min")
    p.add_argument("--lambda-max", type=float, default=None, help="overrides the rule's lambda_max")
    p.add_argument("--gamma", type=float, default=None, help="overrides the rule's gamma")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--static", default="benchmarks/results/tune/merge-zoo/summary.json", help="merge search summary"
    )
    p.add_argument(
        "--modulate",
        default="benchmarks/results/tune/merge-zoo/best-merge.yaml",
        help="a static merge for the coefficients to modulate (rows 'over the static merge'); none: skip",
    )
    p.add_argument("--out", default="benchmarks/results/t3", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="the shuffle of the mixed problems")
    args = p.parse_args(argv)

    import yaml

    rule = yaml.safe_load(Path(args.search).read_text()) if Path(args.search).exists() else {}
    for key in ("lambda_min", "lambda_max", "gamma", "normalize"):
        if getattr(args, key) is not None:
            rule[key] = getattr(args, key)
    items = mixed_problems(args.n, args.seed)
    results: dict[str, dict] = {}
    plain = build_policy_engine(EngineConfig(model=BASE, enable_prefix_caching=False))
    results["base, plain engine (latency reference)"] = run_engine(plain, items, args.batch_size)
    for method in ("t3", "t3_batch"):
        engine = build_policy_engine(
            EngineConfig(model=BASE, experts=EXPERTS, merge=rule | {"method": method})
        )
        results[method] = run_engine(engine, items, args.batch_size)
    if args.modulate != "none":
        served = build_policy_engine(EngineConfig(model=BASE, enable_prefix_caching=False))
        merge_into(served.model, args.modulate)
        results["best static merge, served in this run"] = run_engine(served, items, args.batch_size)
        for method in ("t3", "t3_batch"):
            engine = build_policy_engine(
                EngineConfig(
                    model=BASE, experts=EXPERTS, merge=rule | {"method": method, "static": args.modulate}
                )
            )
            results[f"{method} over the static merge"] = run_engine(engine, items, args.batch_size)
    static = static_rows(Path(args.static))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot({m: results[m]["coefficients"] for m in ("t3", "t3_batch")}, out / "coefficients.png")
    for r in results.values():
        r.pop("coefficients", None)
    report = {
        "rule": rule,
        "n": args.n,
        "batch_size": args.batch_size,
        "measured": results,
        "recorded": static,
    }
    (out / "t3_merge.json").write_text(json.dumps(report, indent=1) + "\n")

    reference = results["base, plain engine (latency reference)"]["latency_ms_per_request"]
    print(f"rule {rule}, {args.n} problems per sub-task, batches of {args.batch_size}\n")
    print("| model | addsub | mul | mean | latency ms/request | merge-probe tokens / generation tokens |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["tokens_per_request"]
        overhead = t["merge_probe"] / (t["prefill"] + t["generated"])
        print(
            f"| {name} | {r['accuracy']['addsub']:.2f} | {r['accuracy']['mul']:.2f} | {r['objective']:.3f} "
            f"| {r['latency_ms_per_request']:.0f} ({r['latency_ms_per_request'] / reference:.2f}x) "
            f"| {t['merge_probe']:.0f} / {t['prefill'] + t['generated']:.0f} ({overhead:+.0%}) |"
        )
    for name, r in static.items():
        print(f"| {name} (recorded) | {r['addsub']:.2f} | {r['mul']:.2f} | {r['objective']:.3f} | | |")
    print(f"\nwrote {out / 't3_merge.json'} and {out / 'coefficients.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
