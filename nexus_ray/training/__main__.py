"""Reproducible training of the zoo models from the synthetic arithmetic task.

    python -m nexus_ray.training policy     # arith-policy: a tiny Llama that solves step by step
    python -m nexus_ray.training policy-small  # arith-policy-small: the same at a quarter of the size
    python -m nexus_ray.training prm        # arith-prm: checks each step against the line before it
    python -m nexus_ray.training prm-rewrite  # arith-prm-rewrite: re-derives what each step rewrote
    python -m nexus_ray.training rope-base  # rope-base: trained at a 128-token context only
    python -m nexus_ray.training experts    # merge experts: arith-policy fine-tuned per sub-task
    python -m nexus_ray.training chat-policy  # Qwen2 policy with BPE + chat template (free-form math)
    python -m nexus_ray.training chat-prm     # Qwen2.5-Math-PRM-format PRM for chat-policy's samples
    python -m nexus_ray.training all

Everything is seeded and runs on CPU with transformers' own model classes, so the outputs are
ordinary HF checkpoints. Problems of the built-in evaluation sets are never trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nexus_ray.training.chat_policy import train_chat_policy
from nexus_ray.training.chat_prm import train_chat_prm
from nexus_ray.training.experts import train_expert
from nexus_ray.training.policy import SMALL_POLICY_ARCH, train_policy
from nexus_ray.training.prm import train_prm
from nexus_ray.training.rope_base import train_rope_base
from nexus_ray.zoo import registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nexus_ray.training",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument(
        "which",
        choices=[
            "policy",
            "policy-small",
            "prm",
            "prm-rewrite",
            "rope-base",
            "experts",
            "chat-policy",
            "chat-prm",
            "all",
        ],
    )
    parser.add_argument("--out-dir", type=Path, default=registry.ZOO_DIR, help="where models are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="policy, policy-small, prm, prm-rewrite: continue from the last checkpoint (every 500 steps)",
    )
    parser.add_argument("--policy-steps", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prm-problems-per-level", type=int, default=600)
    parser.add_argument("--prm-samples", type=int, default=8, help="policy samples per problem")
    parser.add_argument("--prm-steps", type=int, default=4000)
    parser.add_argument("--prm-rewrite-steps", type=int, default=5000)
    parser.add_argument("--rope-base-steps", type=int, default=2000)
    parser.add_argument("--expert-steps", type=int, default=200)
    parser.add_argument("--expert-batch-size", type=int, default=32)
    parser.add_argument("--expert-lr", type=float, default=1e-3)
    parser.add_argument("--expert-subtasks", default="addsub,mul", help="which merge experts to train")
    parser.add_argument("--chat-policy-steps", type=int, default=5000)
    parser.add_argument("--chat-batch-size", type=int, default=32)
    parser.add_argument("--chat-lr", type=float, default=2e-3)
    parser.add_argument("--chat-prm-problems-per-level", type=int, default=300)
    parser.add_argument("--chat-prm-samples", type=int, default=8, help="chat-policy samples per problem")
    parser.add_argument("--chat-prm-steps", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.which in ("policy", "all"):
        out = args.out_dir / "arith-policy"
        train_policy(out, args.policy_steps, args.batch_size, 1.5e-3, args.seed, resume=args.resume)
    if args.which in ("policy-small", "all"):
        out = args.out_dir / "arith-policy-small"
        meta = train_policy(
            out, args.policy_steps, args.batch_size, 1.5e-3, args.seed, SMALL_POLICY_ARCH, args.resume
        )
        print(f"arith-policy-small: {meta['parameters']} parameters, {meta['train_seconds']} s -> {out}")
    for which, view, steps in (
        ("prm", "line", args.prm_steps),
        ("prm-rewrite", "rewrite", args.prm_rewrite_steps),
    ):
        if args.which not in (which, "all"):
            continue
        meta = train_prm(
            args.out_dir / "arith-policy",
            args.out_dir / ("arith-prm" if view == "line" else "arith-prm-rewrite"),
            args.prm_problems_per_level,
            args.prm_samples,
            steps,
            args.seed,
            resume=args.resume,
            view=view,
        )
        print(f"{which} on held-out policy samples: {meta['heldout']}")
    if args.which in ("rope-base", "all"):
        train_rope_base(args.out_dir / "rope-base", args.rope_base_steps, 32, 1.5e-3, args.seed)
    if args.which in ("experts", "all"):
        for subtask in args.expert_subtasks.split(","):
            train_expert(
                args.out_dir / "arith-policy",
                args.out_dir / f"arith-expert-{subtask}",
                subtask,
                args.expert_steps,
                args.expert_batch_size,
                args.expert_lr,
                args.seed,
            )
    if args.which in ("chat-policy", "all"):
        out = args.out_dir / "chat-policy"
        meta = train_chat_policy(out, args.chat_policy_steps, args.chat_batch_size, args.chat_lr, args.seed)
        print(f"chat-policy: {meta['parameters']} parameters, {meta['train_seconds']} s -> {out}")
    if args.which in ("chat-prm", "all"):
        meta = train_chat_prm(
            args.out_dir / "chat-policy",
            args.out_dir / "chat-prm",
            args.chat_prm_problems_per_level,
            args.chat_prm_samples,
            args.chat_prm_steps,
            args.seed,
        )
        step, within = meta["heldout_step_auroc"], meta["heldout_within_problem_auroc"]
        print(f"chat-prm held-out step AUROC {step}, within-problem AUROC {within}")


if __name__ == "__main__":
    main()
