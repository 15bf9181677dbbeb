"""Merge numerics: every method's error against a float64 reference, nexus_ray vs. mergekit 0.1.5.

On the parity checkpoints (zoo arith-policy + arith-expert-addsub + arith-expert-mul, every
tensor), float32 and bf16 inputs; the reference is each method's math in float64 on the same
input values, and DARE/DELLA use the same masks in both tools (tests/merge_oracle/numerics.py
says how). Prints a markdown table of max / mean absolute error. Needs `make setup-mergekit`.

    .venv/bin/python benchmarks/merge_numerics.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.merge_oracle import numerics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        errs = numerics.errors(numerics.checkpoint_tensors(), list(numerics.PARAMS), Path(tmp))
    print("| method | dtype | nexus_ray max / mean abs error | mergekit max / mean abs error |")
    print("|---|---|---|---|")
    for method in numerics.PARAMS:
        for dtype in numerics.DTYPES:
            cells = [
                f"{e.max_abs:.3g} / {e.mean_abs:.3g}"
                for e in (errs[(method, dtype, t)] for t in ("nexus_ray", "mergekit"))
            ]
            print(f"| {method} | {dtype} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
