"""The training loop every zoo model shares, its schedule, and the checkpoint it writes."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))


def warmup_cosine(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up to ``peak``, then a cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    desc: str,
    lr_at: Callable[[int], float],
    loss_at: Callable[[int], torch.Tensor],
    after_step: Callable[[int], dict | None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
) -> list[dict]:
    """Schedule, step, clip, log the loss every 50 steps; returns the log.

    ``loss_at(step)`` draws the step's batch and returns its loss (each model's batches differ,
    the loop does not); ``after_step(step)`` may return a record (an evaluation) for the log.
    ``checkpoint``: every ``checkpoint_every`` steps the model, optimizer, step and log go
    there, and a run that finds one resumes from it (its later batches are drawn afresh, so a
    resumed run is not bit-identical to an uninterrupted one); ``save`` removes it.
    """
    log: list[dict] = []
    first = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        first, log = state["step"], state["log"]
        random.seed(first)
        torch.manual_seed(first)
        tqdm.write(f"resuming {desc} at step {first} from {checkpoint}")
    bar = tqdm(range(first, steps), desc=desc, unit="step", initial=first, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_at(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.append({"step": step, "loss": round(loss.item(), 5)})
        record = after_step(step) if after_step is not None else None
        if record is not None:
            log.append(record)
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1, "log": log}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)  # a kill mid-write keeps the last one
    return log


def run_meta(
    kind: str,
    model: torch.nn.Module,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    start: float,
    log: list[dict],
    **extra,
) -> dict:
    """The ``training.json`` record of a causal-LM run."""
    return {
        "kind": kind,
        **extra,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - start, 1),
        "loss_log": log,
    }


def checkpoint_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps its resumable state."""
    return out.with_name(out.name + ".resume.pt")


def resumable(out: Path, resume: bool) -> Path:
    """The checkpoint a run writing ``out`` keeps; without ``resume`` an old one is dropped."""
    path = checkpoint_path(out)
    if not resume:
        path.unlink(missing_ok=True)
    return path


def save(model, tok, out: Path, meta: dict) -> None:
    """Write the model into a temp dir and rename, so a killed run leaves no half model; the
    run's resumable state goes."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    tmp.rename(out)
    checkpoint_path(out).unlink(missing_ok=True)
