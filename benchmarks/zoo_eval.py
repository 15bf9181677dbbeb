"""Zoo quality tables: policy pass@1 / pass@16 per level, PRM step AUROC, best-of-16 selection.

    python benchmarks/zoo_eval.py [--samples 16] [--dataset arith-test]
    python benchmarks/zoo_eval.py --pair chat            # chat-policy + chat-prm on chat-test

Samples ``--samples`` solutions per problem at temperature 1.0 from the pair's policy (prompted
in its task format), labels every step exactly, scores every step with its PRM (in the PRM's
format), and reports per level:
pass@1 (mean over samples), pass@k (any of k correct), majority vote, and PRM selection
(weighted = Snell's best-of-N weighted, argmax) with the PRM's ``last`` and ``min`` step
aggregation, over the same k samples, side by side. ``last_conf`` multiplies the PRM's last
step score by the policy's own confidence in the sample, the probability of its least likely
token (free: the sampler returns the logprobs): a check of the PRM by the policy's
certainty. ``deepconf`` uses no PRM: DeepConf's lowest group confidence of the sample
(``search/confidence.py``, the defaults of the ``deepconf`` strategy) as the selection signal.
Writes benchmarks/results/zoo_eval[-chat][-<dataset>][-<prm>].json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from nexus_ray.config import DEFAULT_PRM, local_models
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import GenerationParams, ScoreRequest
from nexus_ray.jobs.eval import select_examples
from nexus_ray.search.aggregate import aggregate_steps, select
from nexus_ray.search.confidence import token_confidences, trace_confidence
from nexus_ray.search.deepconf_offline import DeepConfOfflineParams
from nexus_ray.tasks import arith, datasets, mathchat
from nexus_ray.tasks.format import ARITH, TaskFormat, chat_math
from nexus_ray.tasks.grading import is_equivalent
from nexus_ray.training.prm import auroc
from nexus_ray.zoo.registry import resolve

RESULTS = Path(__file__).parent / "results"


def arith_labels(problem: str, solution: str) -> list[int]:
    """Exact per-step labels (the answer line is a step too)."""
    verdict = arith.check(problem, solution)
    return list(verdict.step_correct) + [int(verdict.correct)] * (verdict.answer is not None)


def chat_labeller(dataset: str):
    """Exact per-step labels against the gold solutions of a built-in chat set."""
    gold = {p.problem: p for p in datasets.builtin_chat_problems(dataset)}
    return lambda problem, solution: [int(ok) for ok in mathchat.step_labels(gold[problem], solution)]


def pair(name: str, dataset: str, prm: str) -> tuple[object, object, TaskFormat, object]:
    """Policy and PRM engines, the task format, and the step labeller of a zoo pair."""
    if name == "arith":
        models = local_models("hf", prm=prm)
        return build_policy_engine(models.policy), build_reward_engine(models.prm), ARITH, arith_labels
    models = local_models("hf", "chat-policy", "chat-prm")
    models.prm.format = "qwen-prm"
    fmt = chat_math(resolve("chat-policy"))
    return build_policy_engine(models.policy), build_reward_engine(models.prm), fmt, chat_labeller(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pair", choices=["arith", "chat"], default="arith", help="which zoo pair")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--dataset", default=None, help="default: arith-test or chat-test")
    parser.add_argument("--per-level", type=int, default=None, help="only the first N problems of each level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prm",
        default=DEFAULT_PRM["hf"],
        help="arith pair: the step checker, a zoo name or directory (default: %(default)s)",
    )
    args = parser.parse_args()
    start = time.time()
    dataset = args.dataset or f"{args.pair}-test"
    policy, prm, fmt, labeller = pair(args.pair, dataset, args.prm)
    examples = select_examples(dataset, args.per_level)
    k = args.samples
    conf = DeepConfOfflineParams()
    params = GenerationParams(
        n=k, temperature=1.0, max_tokens=200, seed=args.seed, logprobs=True, top_logprobs=conf.top_k
    )
    modes = ("last", "min", "last_conf", "deepconf")

    per_level: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    step_scores, step_labels = [], []
    pairs_won = dict.fromkeys(modes, 0.0)  # within a problem: does a right solution outscore a wrong one?
    pairs = 0
    chunk = max(1, 256 // k)
    for s in tqdm(range(0, len(examples), chunk), desc="policy + PRM", unit="batch"):
        batch = examples[s : s + chunk]
        prompts = [fmt.prompt(e.problem) for e in batch]
        results = policy.generate_sync(prompts, params)
        conversations = [fmt.messages(e.problem) if fmt.chat is not None else () for e in batch]
        requests = [
            ScoreRequest(p, fmt.steps(c.text), m)
            for p, m, r in zip(prompts, conversations, results)
            for c in r.completions
        ]
        scored = iter(prm.score_sync(requests))
        for e, r in zip(batch, results):
            texts = [c.text for c in r.completions]
            answers = [fmt.answer(t) for t in texts]
            correct = [is_equivalent(a, e.answer, fmt.answer_kind) for a in answers]
            scores: dict[str, list[float]] = {mode: [] for mode in modes}
            for c, t in zip(r.completions, texts):
                step_s = next(scored).scores
                scores["last"].append(aggregate_steps(step_s, "last"))
                scores["min"].append(aggregate_steps(step_s, "min"))
                scores["last_conf"].append(scores["last"][-1] * math.exp(min(c.logprobs, default=0.0)))
                confidences = token_confidences(c, conf.top_k)
                scores["deepconf"].append(trace_confidence(confidences, "lowest", conf.window, conf.tail))
                labels = labeller(e.problem, t)
                # Lines after the answer line (rare) are not steps the checker labels.
                step_scores += step_s[: len(labels)]
                step_labels += labels[: len(step_s)]
            for i, ci in enumerate(correct):
                for j, cj in enumerate(correct):
                    if ci and not cj:
                        pairs += 1
                        for mode, sc in scores.items():
                            a, b = sc[i], sc[j]
                            pairs_won[mode] += 1.0 if a > b else 0.5 if a == b else 0.0
            row = per_level[e.level or 0]
            row["pass@1"].append(sum(correct) / k)
            row[f"pass@{k}"].append(float(any(correct)))
            row["majority"].append(float(correct[select(answers, None, "majority")]))
            for mode, sc in scores.items():
                row[f"weighted_{mode}"].append(float(correct[select(answers, sc, "weighted")]))
                row[f"argmax_{mode}"].append(float(correct[select(answers, sc, "argmax")]))

    table = {
        level: {m: round(sum(v) / len(v), 3) for m, v in metrics.items()}
        | {"problems": len(metrics["pass@1"])}
        for level, metrics in sorted(per_level.items())
    }
    for row in table.values():  # the share of sampling's headroom the PRM's selection captures
        room = row[f"pass@{k}"] - row["pass@1"]
        for mode in ("last", "last_conf", "deepconf"):
            key = "headroom_captured" + ("" if mode == "last" else f"_{mode}")
            row[key] = round((row[f"weighted_{mode}"] - row["pass@1"]) / room, 3) if room > 0 else None
    out = {
        "pair": args.pair,
        "dataset": dataset,
        "samples": k,
        "temperature": 1.0,
        "per_level": table,
        "prm_step_auroc": round(auroc(step_scores, step_labels), 4),
        "prm_steps_scored": len(step_labels),
        "prm_within_problem_auroc": round(pairs_won["last"] / max(1, pairs), 4),
        "prm_x_confidence_within_problem_auroc": round(pairs_won["last_conf"] / max(1, pairs), 4),
        "deepconf_within_problem_auroc": round(pairs_won["deepconf"] / max(1, pairs), 4),
        "prm_within_problem_pairs": pairs,
        "seconds": round(time.time() - start, 1),
    }
    name = "zoo_eval" + ("" if args.pair == "arith" else f"-{args.pair}")
    name += "" if dataset == f"{args.pair}-test" else f"-{dataset}"
    name += "" if args.prm == "arith-prm" or args.pair != "arith" else f"-{Path(args.prm).name}"
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    cols = [f"{sel}_{mode}" for mode in modes for sel in ("weighted", "argmax")]
    cols = ["pass@1", f"pass@{k}", "majority", *cols]
    rooms = ["headroom_captured", "headroom_captured_last_conf", "headroom_captured_deepconf"]
    print(f"\n| level | problems | {' | '.join(cols + rooms)} |")
    print("|---|---|" + "---|" * (len(cols) + len(rooms)))
    for level, row in table.items():
        cells = [f"{row[c]:.3f}" for c in cols] + ["-" if row[c] is None else f"{row[c]:.2f}" for c in rooms]
        print(f"| {level} | {row['problems']} | " + " | ".join(cells) + " |")
    print(f"\nPRM step-level AUROC on {len(step_labels)} held-out steps: {out['prm_step_auroc']:.4f}")
    print(
        f"PRM within-problem AUROC (a right solution's last-step score above a wrong one's, "
        f"{pairs} pairs): {out['prm_within_problem_auroc']:.4f}"
    )
    print(
        f"PRM x policy confidence, within-problem AUROC: {out['prm_x_confidence_within_problem_auroc']:.4f}"
    )
    print(f"DeepConf confidence (no PRM), within-problem AUROC: {out['deepconf_within_problem_auroc']:.4f}")
    print(f"({out['seconds']} s; wrote {path})")


if __name__ == "__main__":
    main()
