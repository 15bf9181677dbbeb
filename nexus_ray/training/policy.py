"""arith-policy: a tiny Llama that solves arithmetic step by step, trained from scratch."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nexus_ray.tasks import arith
from nexus_ray.training.batches import ProblemStream, policy_batch
from nexus_ray.training.loop import fit, resumable, run_meta, save, set_seed, warmup_cosine
from nexus_ray.zoo.tokenizer import build_tokenizer

POLICY_ARCH = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
# arith-policy-small: a quarter of arith-policy's parameters (half the width), the same recipe,
# for "small policy + test-time compute vs. large policy" (benchmarks/small_vs_large.py)
SMALL_POLICY_ARCH = {
    **POLICY_ARCH,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def new_llama(tok, arch: dict) -> LlamaForCausalLM:
    """A freshly initialised Llama over the zoo tokenizer's vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **arch,
    )
    return LlamaForCausalLM(config)


def train_policy(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    arch: dict = POLICY_ARCH,
    resume: bool = False,
) -> dict:
    """Every batch is one difficulty level, the levels in turn; loss on the solution only.
    ``resume``: continue from the run's last checkpoint (``loop.fit``), if there is one."""
    set_seed(seed)
    tok = build_tokenizer()
    model = new_llama(tok, arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    stream = ProblemStream(seed)
    levels = list(arith.LEVELS)
    start = time.time()
    log = fit(
        model,
        opt,
        steps,
        out.name,
        lambda step: warmup_cosine(step, steps, lr),
        lambda step: model(**policy_batch(stream.batch(levels[step % len(levels)], batch_size), tok)).loss,
        checkpoint=resumable(out, resume),
    )
    meta = run_meta("policy", model, steps, batch_size, lr, seed, start, log)
    save(model, tok, out, meta)
    return meta
