"""rope-base: a tiny Llama trained only at a 128-token context, for RoPE scaling to extend."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from nexus_ray.tasks import passkey
from nexus_ray.training.loop import fit, run_meta, save, set_seed, warmup_cosine
from nexus_ray.training.policy import POLICY_ARCH, new_llama
from nexus_ray.zoo.tokenizer import build_tokenizer

ROPE_BASE_CONTEXT = 128  # tokens, <s> included: everything beyond is for RoPE scaling to reach
# Smaller than the policy (3 layers of 96, head_dim 32 as the policy's) so that it trains in
# about 15 minutes on 2 shared cores; retrieval needs at least two layers (an induction head).
ROPE_BASE_ARCH = {
    **POLICY_ARCH,
    "hidden_size": 96,
    "intermediate_size": 288,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "max_position_embeddings": ROPE_BASE_CONTEXT,
}


def rope_base_row(rng: random.Random, tok) -> list[int]:
    """One training row of exactly ``ROPE_BASE_CONTEXT`` tokens.

    Half the rows are one passkey example spanning the whole row (the key anywhere in it, so
    retrieval is learnt at every distance up to the context), half are packed documents of
    arithmetic solutions and shorter passkey examples.
    """
    n_chars = ROPE_BASE_CONTEXT - 1
    if rng.random() < 0.5:
        text = passkey.passkey(n_chars, rng.random(), rng).text[:n_chars]
    else:
        text = passkey.document(n_chars, rng, max_passkey_chars=n_chars)
    ids = tok(text).input_ids
    assert len(ids) == ROPE_BASE_CONTEXT, "the zoo tokenizer is one token per character"
    return ids


def train_rope_base(out: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """A tiny Llama trained only at a 128-token context, on arithmetic and passkey retrieval.

    Every position is trained on (packed rows, loss on all tokens), so the model knows
    positions 0-127 and nothing beyond: what a RoPE scaling must extend.
    """
    set_seed(seed)
    torch.set_num_threads(1)  # on a small shared CPU one thread is 2-3x faster than two
    rng = random.Random(seed)
    tok = build_tokenizer()
    model = new_llama(tok, ROPE_BASE_ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = time.time()

    def loss_at(step: int) -> torch.Tensor:
        ids = torch.tensor([rope_base_row(rng, tok) for _ in range(batch_size)])
        return model(input_ids=ids, labels=ids).loss

    log = fit(model, opt, steps, "rope-base", lambda step: warmup_cosine(step, steps, lr), loss_at)
    meta = run_meta("rope-base", model, steps, batch_size, lr, seed, start, log, context=ROPE_BASE_CONTEXT)
    save(model, tok, out, meta)
    return meta
