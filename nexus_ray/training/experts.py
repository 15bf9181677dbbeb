"""The merge experts: arith-policy fine-tuned on one merge sub-task each."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from nexus_ray.tasks import subtasks
from nexus_ray.training.batches import policy_batch
from nexus_ray.training.loop import fit, run_meta, save, set_seed
from nexus_ray.zoo.tokenizer import build_tokenizer


def train_expert(
    base_dir: Path, out: Path, subtask: str, steps: int, batch_size: int, lr: float, seed: int
) -> dict:
    """Fine-tune the base policy on one merge sub-task (``nexus_ray.tasks.subtasks``).

    Same loss and batches as ``train_policy``; a short constant-after-warmup schedule and a
    small learning rate keep the expert close to its base, as task vectors assume.
    """
    set_seed(seed)
    tok = build_tokenizer()
    model = LlamaForCausalLM.from_pretrained(base_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    task = subtasks.SUBTASKS[subtask]
    heldout = {p.expression for name in subtasks.SUBTASKS for p in subtasks.eval_set(name, 500)}
    rng = random.Random(f"{seed}-{subtask}")
    start = time.time()

    def loss_at(step: int) -> torch.Tensor:
        problems = []
        while len(problems) < batch_size:
            p = subtasks.generate(task, rng)
            if p.expression not in heldout:
                problems.append(p)
        return model(**policy_batch(problems, tok)).loss

    log = fit(model, opt, steps, f"expert {subtask}", lambda step: lr * min(1.0, (step + 1) / 50), loss_at)
    meta = run_meta(
        "merge-expert", model, steps, batch_size, lr, seed, start, log, base=base_dir.name, subtask=subtask
    )
    save(model, tok, out, meta)
    return meta
