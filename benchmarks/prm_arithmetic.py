"""How often a re-deriving step checker gets a gold step's arithmetic exactly right, per operator.

A checker scored by re-deriving (``prm_local_score: rederive``) is only as good as its own
arithmetic: a right step it cannot re-derive scores low. Teacher-forced on gold steps of fresh
problems (levels 3-5, never in arith-calib or arith-test), a step counts as right when every
character of the replacement it reads is the checker's most likely next token.

    python benchmarks/prm_arithmetic.py --prm arith-prm-rewrite
    python benchmarks/prm_arithmetic.py --prm arith-prm-rewrite,/tmp/other/arith-prm-rewrite
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoModelForTokenClassification

from nexus_ray.engines.hf import rederive_logits
from nexus_ray.engines.rewrite_view import rewrite_spans
from nexus_ray.training.batches import ProblemStream
from nexus_ray.training.prm import IGNORE, pair_batch
from nexus_ray.zoo.registry import resolve
from nexus_ray.zoo.tokenizer import build_tokenizer


def operator(span: str) -> str:
    """The operator a span applies (its first character may be a minus sign)."""
    return next(ch for ch in span[1:] if ch in "+-*")


def gold_steps(n_per_level: int, seed: int) -> list[tuple[str, str]]:
    """One random step (a reduction, not the answer line) of ``n_per_level`` fresh problems
    per level 3-5."""
    rng = random.Random(seed)
    stream = ProblemStream(seed)
    out = []
    for level in (3, 4, 5):
        for p in stream.batch(level, n_per_level):
            lines = [p.expression, *p.steps]
            i = rng.randrange(len(p.steps))
            out.append((lines[i], lines[i + 1]))
    return out


def exact_by_operator(model_dir: str, steps: list[tuple[str, str]]) -> dict[str, tuple[float, int]]:
    model = AutoModelForTokenClassification.from_pretrained(resolve(model_dir)).eval()
    tok = build_tokenizer()
    right: dict[str, list[bool]] = {"+": [], "-": [], "*": []}
    for start in range(0, len(steps), 256):
        chunk = steps[start : start + 256]
        batch = pair_batch([(a, b, 1) for a, b in chunk], tok, "rewrite")
        with torch.inference_mode():
            guess = rederive_logits(model, batch["input_ids"], batch["attention_mask"]).argmax(-1)
        targets = batch["lm_labels"]
        ok = ((guess == targets) | (targets == IGNORE)).all(1)
        for (previous, step), good in zip(chunk, ok.tolist()):
            right[operator(rewrite_spans(previous, step)[1])].append(good)
    return {op: (sum(v) / max(1, len(v)), len(v)) for op, v in right.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prm", default="arith-prm-rewrite", help="comma-separated zoo names or directories")
    p.add_argument("--per-level", type=int, default=300, help="gold steps per level (3, 4, 5)")
    p.add_argument("--seed", type=int, default=99)
    args = p.parse_args(argv)
    steps = gold_steps(args.per_level, args.seed)
    print("| checker | op | arithmetic right | steps |\n|---|---|---|---|")
    for name in args.prm.split(","):
        for op, (rate, n) in exact_by_operator(name, steps).items():
            print(f"| {name} | `{op}` | {rate:.3f} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
