"""Markdown tables of an eval run's summary.json, as RESULTS.md shows them.

    python benchmarks/strategy_tables.py benchmarks/results/strategies-arith-test/summary.json

Per budget: accuracy per strategy, overall and per level, and mean compute; then the best
strategy per level and budget (the ``winners`` the eval harness computed).
"""

import argparse
import json
from pathlib import Path


def tables(summary: dict) -> str:
    rows = summary["rows"]
    levels = sorted({r["level"] for r in rows if r["level"] != "all"}, key=str)
    strategies = list(dict.fromkeys(summary["strategies"]))
    cell = {(r["strategy"], r["budget"], r["level"]): r for r in rows}
    out = []
    for budget in summary["budgets"]:
        out.append(
            f"Budget {budget} generations (accuracy; last column: mean policy-token equivalents "
            "per problem, all levels)\n"
        )
        out.append("| strategy | all | " + " | ".join(f"L{lv}" for lv in levels) + " | compute |")
        out.append("|---|" + "---|" * (len(levels) + 2))
        for s in strategies:
            b = None if s == "greedy" else budget
            if (s, b, "all") not in cell:
                continue
            accs = [cell[(s, b, lv)]["accuracy"] for lv in ["all", *levels]]
            compute = cell[(s, b, "all")]["mean_policy_token_equivalents"]
            out.append(f"| {s} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {compute:.0f} |")
        out.append("")
    out.append(
        "Best strategy per level and budget (ties go to the cheaper one; greedy competes at every budget):\n"
    )
    out.append("| level | " + " | ".join(f"budget {b}" for b in summary["budgets"]) + " |")
    out.append("|---|" + "---|" * len(summary["budgets"]))
    best = {(w["level"], w["budget"]): w for w in summary["winners"]}
    for lv in ["all", *levels]:
        out.append(
            f"| {lv} | "
            + " | ".join(
                f"{best[(lv, b)]['strategy']} ({best[(lv, b)]['accuracy']:.3f})" for b in summary["budgets"]
            )
            + " |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("summary", type=Path)
    print(tables(json.loads(parser.parse_args().summary.read_text())))


if __name__ == "__main__":
    main()
