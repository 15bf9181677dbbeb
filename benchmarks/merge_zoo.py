"""The zoo merge story: each expert alone vs. merges of both, accuracy on every sub-task.

    python benchmarks/merge_zoo.py [--n 100] [--seed 0]

The experts (``python -m nexus_ray.training experts``) are arith-policy fine-tuned on one
sub-task each (``nexus_ray.tasks.subtasks``: long +/- chains, multiplication-heavy). Every
merge is an ordinary mergekit-style config run by ``nexus_ray.merge.run.merge``; scoring is
greedy decoding on ``--n`` held-out problems per sub-task (``nexus_ray.tuning.subtask_score``).
Writes benchmarks/results/merge/zoo_merge.json (configs included) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nexus_ray.merge.run import merge
from nexus_ray.tasks import subtasks
from nexus_ray.tuning.subtask_score import score
from nexus_ray.zoo.registry import resolve

RESULTS = Path(__file__).parent / "results" / "merge" / "zoo_merge.json"
EXPERTS = ["arith-expert-addsub", "arith-expert-mul"]


def configs() -> dict[str, dict]:
    """The merges compared: mergekit's usual settings for two experts on a shared base."""

    def gta(method: str, weight: float = 1.0, **model_params) -> dict:
        return {
            "merge_method": method,
            "base_model": "arith-policy",
            "models": [{"model": e, "parameters": {"weight": weight, **model_params}} for e in EXPERTS],
            "dtype": "float32",
        }

    return {
        "linear (soup)": {
            "merge_method": "linear",
            "models": [{"model": e, "parameters": {"weight": 0.5}} for e in EXPERTS],
            "dtype": "float32",
        },
        "task_arithmetic (weights 1)": gta("task_arithmetic"),
        "ties (density 0.5)": gta("ties", density=0.5),
        "ties (density 0.9)": gta("ties", density=0.9),
        "dare_ties (density 0.5, weights 1)": gta("dare_ties", density=0.5),
        "dare_ties (density 0.5, weights 0.5)": gta("dare_ties", 0.5, density=0.5),
        "dare_linear (density 0.7, weights 0.5)": gta("dare_linear", 0.5, density=0.7),
        "della (density 0.5, eps 0.1)": gta("della", density=0.5, epsilon=0.1),
        "della_linear (density 0.7, eps 0.1, weights 0.5)": gta(
            "della_linear", 0.5, density=0.7, epsilon=0.1
        ),
        "breadcrumbs_ties (density 0.9, weights 1)": gta("breadcrumbs_ties", density=0.9, gamma=0.01),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="held-out problems per sub-task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random merges")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for name in ["arith-policy", *EXPERTS]:
        start = time.time()
        rows.append(
            {
                "model": name,
                "accuracy": score(resolve(name), args.n),
                "score_s": round(time.time() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg) in enumerate(configs().items()):
            stats = merge(cfg, Path(tmp) / f"m{i}", seed=args.seed, progress=False)
            start = time.time()
            acc = score(stats.out, args.n)
            rows.append(
                {
                    "model": name,
                    "config": cfg,
                    "accuracy": acc,
                    "merge_s": round(stats.seconds, 2),
                    "score_s": round(time.time() - start, 1),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_per_subtask": args.n,
        "seed": args.seed,
        "subtasks": list(subtasks.SUBTASKS),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    names = list(subtasks.SUBTASKS)
    print("\n| model | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for r in rows:
        accs = [r["accuracy"][n] for n in names]
        print(
            f"| {r['model']} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {sum(accs) / len(accs):.2f} |"
        )


if __name__ == "__main__":
    main()
