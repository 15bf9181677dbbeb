"""Training problems and the padded batches the zoo models learn from."""

from __future__ import annotations

import random

import torch

from nexus_ray.tasks import arith, mathchat
from nexus_ray.tasks.datasets import heldout_chat_problems, heldout_expressions


class ProblemStream:
    """An endless seeded stream of training problems, one level per batch, held-out sets excluded.

    Arithmetic by default; ``chat=True``: the chat pair's ``mathchat`` problems, keyed by text.
    """

    def __init__(self, seed: int, chat: bool = False) -> None:
        self.rng = random.Random(seed)
        self.chat = chat
        self.heldout = heldout_chat_problems() if chat else heldout_expressions()

    def batch(self, level: int, size: int) -> list:
        out: list = []
        while len(out) < size:
            p = mathchat.generate(level, self.rng) if self.chat else arith.generate(level, self.rng)
            if (p.problem if self.chat else p.expression) not in self.heldout:
                out.append(p)
        return out


def right_padded(rows: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch; padding is masked out and labelled -100 (ignored by the loss)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(label)] = torch.tensor(label)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def policy_batch(problems: list[arith.Problem], tok) -> dict[str, torch.Tensor]:
    """Prompt + solution + EOS, loss on the solution only."""
    rows, labels = [], []
    for p in problems:
        prompt = tok(p.prompt).input_ids
        full = prompt + tok(p.solution, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(full)
        labels.append([-100] * len(prompt) + full[len(prompt) :])
    return right_padded(rows, labels, tok.pad_token_id)
