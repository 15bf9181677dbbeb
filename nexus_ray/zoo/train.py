"""Reproducible training of the zoo models from the synthetic arithmetic task.

    python -m nexus_ray.zoo.train policy     # arith-policy: a tiny Llama that solves step by step
    python -m nexus_ray.zoo.train prm        # arith-prm: scores each step of the policy's own samples
    python -m nexus_ray.zoo.train rope-base  # rope-base: trained at a 128-token context only
    python -m nexus_ray.zoo.train experts    # merge experts: arith-policy fine-tuned per sub-task
    python -m nexus_ray.zoo.train all

Everything is seeded and runs on CPU with transformers' own model classes, so the outputs are
ordinary HF checkpoints. Problems of the built-in evaluation sets are never trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

from nexus_ray.engines.base import GenerationParams
from nexus_ray.config import EngineConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.tasks import arith, passkey
from nexus_ray.tasks.datasets import heldout_expressions
from nexus_ray.zoo import registry
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


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))


class ProblemStream:
    """An endless seeded stream of training problems, one level per batch, held-out sets excluded."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.heldout = heldout_expressions()

    def batch(self, level: int, size: int) -> list[arith.Problem]:
        out: list[arith.Problem] = []
        while len(out) < size:
            p = arith.generate(level, self.rng)
            if p.expression not in self.heldout:
                out.append(p)
        return out


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _right_padded(rows: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch; padding is masked out and labelled -100 (ignored by the loss)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def _policy_batch(problems: list[arith.Problem], tok) -> dict[str, torch.Tensor]:
    """Prompt + solution + EOS, loss on the solution only."""
    rows, labels = [], []
    for p in problems:
        prompt = tok(p.prompt).input_ids
        full = prompt + tok(p.solution, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(full)
        labels.append([-100] * len(prompt) + full[len(prompt) :])
    return _right_padded(rows, labels, tok.pad_token_id)


def _new_llama(tok, arch: dict) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **arch,
    )
    return LlamaForCausalLM(config)


def _fit(model, opt, steps: int, desc: str, lr_at: Callable[[int], float], loss_at: Callable[[int], torch.Tensor]) -> list[dict]:
    """The loop every causal-LM zoo model shares: schedule, step, clip, log every 50 steps."""
    log = []
    bar = tqdm(range(steps), desc=desc, unit="step")
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
    return log


def _run_meta(kind: str, model, steps: int, batch_size: int, lr: float, seed: int, start: float, log: list, **extra) -> dict:
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


def train_policy(out: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    _set_seed(seed)
    tok = build_tokenizer()
    model = _new_llama(tok, POLICY_ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    stream = ProblemStream(seed)
    levels = list(arith.LEVELS)
    start = time.time()
    log = _fit(
        model, opt, steps, "arith-policy", lambda step: _lr(step, steps, lr),
        lambda step: model(**_policy_batch(stream.batch(levels[step % len(levels)], batch_size), tok)).loss,
    )
    meta = _run_meta("policy", model, steps, batch_size, lr, seed, start, log)
    _save(model, tok, out, meta)
    return meta


def _save(model, tok, out: Path, meta: dict) -> None:
    """Write the checkpoint into a temp dir and rename, so a killed run leaves no half model."""
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


def policy_samples(
    policy_dir: Path, problems: list[arith.Problem], n: int, seed: int, desc: str
) -> list[tuple[arith.Problem, str]]:
    """``n`` temperature-1 samples per problem from the policy, with a progress bar."""
    engine = build_policy_engine(EngineConfig(model=str(policy_dir)))
    params = GenerationParams(n=n, temperature=1.0, max_tokens=200, seed=seed)
    out: list[tuple[arith.Problem, str]] = []
    chunk = max(1, 256 // n)
    for start in tqdm(range(0, len(problems), chunk), desc=desc, unit="batch"):
        batch = problems[start : start + chunk]
        results = engine.generate_sync([p.prompt for p in batch], params)
        out += [(p, c.text) for p, r in zip(batch, results) for c in r.completions]
    return out


def prm_example(problem: arith.Problem, solution: str) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """The PRM's view of a solution: its lines as steps, and a label per character.

    A character (and the newline ending its line) is labelled 1 while the text still agrees
    with the one correct solution, 0 from the first character that departs from it. The label
    of a step is the label at its newline: 1 iff the solution is still correct after it, which
    is what ``arith.check`` says. Dense labels teach the PRM where an error happens, which a
    tiny model learns far faster than one verdict per line.
    """
    lines = tuple(line for line in solution.split(arith.STEP_DELIMITER) if line.strip())
    gold = [*problem.steps, f"{arith.ANSWER_PREFIX}{problem.answer}"]
    ok = True
    labels = []
    for k, line in enumerate(lines):
        target = gold[k] + arith.STEP_DELIMITER if k < len(gold) else ""
        row = []
        for i, ch in enumerate(line + arith.STEP_DELIMITER):
            ok = ok and i < len(target) and target[i] == ch
            row.append(int(ok))
        labels.append(tuple(row))
    return lines, tuple(labels)


def _prm_batch(rows: list[tuple[str, tuple[str, ...], tuple[tuple[int, ...], ...]]], tok, dense: bool) -> dict[str, torch.Tensor]:
    """Token ids with labels on every step character (``dense``) or only at step ends."""
    seqs, labs = [], []
    for prompt, steps, labels in rows:
        ids = list(tok(prompt).input_ids)
        lab = [-100] * len(ids)
        for step, y in zip(steps, labels):
            piece = tok(step + arith.STEP_DELIMITER, add_special_tokens=False).input_ids
            assert len(piece) == len(y), "the zoo tokenizer is one token per character"
            ids += piece
            lab += list(y) if dense else [-100] * (len(y) - 1) + [y[-1]]
        seqs.append(ids)
        labs.append(lab)
    return _right_padded(seqs, labs, tok.pad_token_id)


def auroc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (probability a positive outranks a negative; ties count half)."""
    pairs = sorted(zip(scores, labels))
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += avg_rank * sum(y for _, y in pairs[i:j])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


PRM_EXTRA_LAYERS = 2
PRM_CURRICULUM_STEPS = 600  # levels 1-2 only at first: the new layers learn to compare digits there
PRM_FRESH_PER_BATCH = 24  # of each batch: fresh gold solutions, most with one corrupted step


def prm_from_policy(policy_dir: Path, extra_layers: int, seed: int) -> LlamaForTokenClassification:
    """A token classifier made of the policy, frozen, under ``extra_layers`` fresh layers.

    Checking the digit at position t needs what the policy predicted at t-1; a classifier of
    the policy's own depth at position t cannot reach that, layers on top of it can (they
    attend to t-1's final hidden state). Freezing the policy keeps its arithmetic intact.
    """
    policy = LlamaForCausalLM.from_pretrained(policy_dir)
    config = LlamaConfig.from_pretrained(policy_dir)
    frozen = config.num_hidden_layers
    config.num_hidden_layers = frozen + extra_layers
    config.num_labels = 2
    config.id2label = {0: "wrong", 1: "correct"}
    config.label2id = {"wrong": 0, "correct": 1}
    torch.manual_seed(seed)
    model = LlamaForTokenClassification(config)
    missing, unexpected = model.model.load_state_dict(policy.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("layers.") for k in missing), (missing, unexpected)
    model.model.embed_tokens.requires_grad_(False)
    for layer in model.model.layers[:frozen]:
        layer.requires_grad_(False)
    return model


def _fresh_gold_rows(stream: ProblemStream, levels: list[int], n: int, rng: random.Random) -> list[tuple]:
    """``n`` new problems' gold solutions, four in five with one step made wrong."""
    rows = []
    for _ in range(n):
        p = stream.batch(rng.choice(levels), 1)[0]
        steps = list(p.steps)
        if rng.random() < 0.8:
            steps = arith.corrupt_step(p, rng.randrange(len(p.steps)), rng)
        rows.append((p.level, p.prompt, *prm_example(p, arith.format_solution(steps))))
    return rows


def corruption_probe(score, problems: list[arith.Problem], seed: int) -> dict[str, float]:
    """Gold step vs. the same step corrupted, per problem: the PRM must tell them apart.

    ``score`` maps (prompts, step lists) to each list's last-step score.
    """
    rng = random.Random(seed)
    gold, bad = [], []
    for p in problems:
        i = rng.randrange(len(p.steps))
        gold.append((p.prompt, tuple(p.steps[: i + 1])))
        bad.append((p.prompt, tuple(arith.corrupt_step(p, i, rng)[: i + 1])))
    g, b = score(gold), score(bad)
    return {
        "gold_mean": round(sum(g) / len(g), 4),
        "corrupted_mean": round(sum(b) / len(b), 4),
        "gold_above_corrupted": round(sum(x > y for x, y in zip(g, b)) / len(g), 4),
    }


def _last_step_scorer(model, tok):
    def score(items: list[tuple[str, tuple[str, ...]]]) -> list[float]:
        rows = [(prompt, steps, tuple((1,) * (len(s) + 1) for s in steps)) for prompt, steps in items]
        batch = _prm_batch(rows, tok, dense=False)
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs = torch.softmax(logits, -1)[..., 1]
        ends = (batch["labels"] != -100).long().cumsum(1).argmax(1)  # last labelled position
        return probs[torch.arange(len(rows)), ends].tolist()

    return score


def train_prm(
    policy_dir: Path, out: Path, problems_per_level: int, samples: int, steps: int, seed: int, lr: float = 1e-3
) -> dict:
    """Sample the policy, label every step with the checker, train a token classifier on it.

    The PRM is the policy, frozen, with two fresh layers and a 2-way head on top
    (``prm_from_policy``); the loss is cross-entropy on every step character
    (``prm_example``). Each batch mixes the policy's own samples with fresh gold solutions,
    most with one corrupted step, so the PRM sees both the policy's errors and clean
    single-step errors; the first ``PRM_CURRICULUM_STEPS`` use levels 1-2 only. A tenth of
    the problems is held out to measure step-level AUROC (at step ends), and a separate
    held-out set measures gold vs. corrupted steps (``corruption_probe``).
    """
    _set_seed(seed)
    probe_problems = [p for level in (2, 3, 4, 5) for p in ProblemStream(seed + 2).batch(level, 50)]
    stream = ProblemStream(seed + 1)
    stream.heldout |= {p.expression for p in probe_problems}
    problems = [p for level in arith.LEVELS for p in stream.batch(level, problems_per_level)]
    random.Random(seed).shuffle(problems)
    n_eval = len(problems) // 10
    stream.heldout |= {p.expression for p in problems[:n_eval]}  # fresh rows never repeat them
    data = [
        (p.level, p.prompt, *prm_example(p, text))
        for p, text in policy_samples(policy_dir, problems, samples, seed, "sampling policy")
    ]
    data = [row for row in data if row[2]]
    eval_prompts = {p.prompt for p in problems[:n_eval]}
    train_rows = [r for r in data if r[1] not in eval_prompts]
    eval_rows = [r[1:] for r in data if r[1] in eval_prompts]
    early = [r for r in train_rows if r[0] <= 2]

    tok = build_tokenizer()
    model = prm_from_policy(policy_dir, PRM_EXTRA_LAYERS, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    batch_size = 64
    bar = tqdm(range(steps), desc="arith-prm", unit="step")
    log = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=100)
        levels = [1, 2] if step < PRM_CURRICULUM_STEPS else list(arith.LEVELS)
        pool = early if step < PRM_CURRICULUM_STEPS else train_rows
        rows = rng.sample(pool, batch_size - PRM_FRESH_PER_BATCH)
        rows += _fresh_gold_rows(stream, levels, PRM_FRESH_PER_BATCH, rng)
        batch = _prm_batch([r[1:] for r in rows], tok, dense=True)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.append({"step": step, "loss": round(loss.item(), 5)})
        if (step + 1) % 500 == 0 or step + 1 == steps:
            model.eval()
            probe = corruption_probe(_last_step_scorer(model, tok), probe_problems, seed)
            model.train()
            log.append({"step": step + 1, **probe})
            tqdm.write(f"step {step + 1}: {probe}")

    model.eval()
    scores, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(eval_rows), 128):
            batch = _prm_batch(eval_rows[start : start + 128], tok, dense=False)
            probs = torch.softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)[..., 1]
            keep = batch["labels"] != -100
            scores += probs[keep].tolist()
            labels += batch["labels"][keep].tolist()
    meta = {
        "kind": "prm",
        "policy": policy_dir.name,
        "frozen_policy_layers": model.config.num_hidden_layers - PRM_EXTRA_LAYERS,
        "extra_layers": PRM_EXTRA_LAYERS,
        "curriculum_steps": PRM_CURRICULUM_STEPS,
        "problems_per_level": problems_per_level,
        "samples_per_problem": samples,
        "train_solutions": len(train_rows),
        "fresh_gold_per_batch": PRM_FRESH_PER_BATCH,
        "heldout_solutions": len(eval_rows),
        "heldout_step_auroc": round(auroc(scores, labels), 4),
        "heldout_positive_rate": round(sum(labels) / max(1, len(labels)), 4),
        "corruption_probe": corruption_probe(_last_step_scorer(model, tok), probe_problems, seed),
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "loss_log": log,
    }
    _save(model, tok, out, meta)
    return meta


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


def _rope_base_row(rng: random.Random, tok) -> list[int]:
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
    _set_seed(seed)
    torch.set_num_threads(1)  # on a small shared CPU one thread is 2-3x faster than two
    rng = random.Random(seed)
    tok = build_tokenizer()
    model = _new_llama(tok, ROPE_BASE_ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = time.time()

    def loss_at(step: int) -> torch.Tensor:
        ids = torch.tensor([_rope_base_row(rng, tok) for _ in range(batch_size)])
        return model(input_ids=ids, labels=ids).loss

    log = _fit(model, opt, steps, "rope-base", lambda step: _lr(step, steps, lr), loss_at)
    meta = _run_meta("rope-base", model, steps, batch_size, lr, seed, start, log, context=ROPE_BASE_CONTEXT)
    _save(model, tok, out, meta)
    return meta


def train_expert(base_dir: Path, out: Path, subtask: str, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Fine-tune the base policy on one merge sub-task (``nexus_ray.merge.subtasks``).

    Same loss and batches as ``train_policy``; a short constant-after-warmup schedule and a
    small learning rate keep the expert close to its base, as task vectors assume.
    """
    from nexus_ray.merge import subtasks

    _set_seed(seed)
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
        return model(**_policy_batch(problems, tok)).loss

    log = _fit(model, opt, steps, f"expert {subtask}", lambda step: lr * min(1.0, (step + 1) / 50), loss_at)
    meta = _run_meta("merge-expert", model, steps, batch_size, lr, seed, start, log, base=base_dir.name, subtask=subtask)
    _save(model, tok, out, meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("which", choices=["policy", "prm", "rope-base", "experts", "all"])
    parser.add_argument("--out-dir", type=Path, default=registry.ZOO_DIR, help="where models are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy-steps", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prm-problems-per-level", type=int, default=600)
    parser.add_argument("--prm-samples", type=int, default=8, help="policy samples per problem")
    parser.add_argument("--prm-steps", type=int, default=5000)
    parser.add_argument("--rope-base-steps", type=int, default=2000)
    parser.add_argument("--expert-steps", type=int, default=200)
    parser.add_argument("--expert-batch-size", type=int, default=32)
    parser.add_argument("--expert-lr", type=float, default=1e-3)
    parser.add_argument("--expert-subtasks", default="addsub,mul", help="which merge experts to train")
    args = parser.parse_args(argv)
    if args.which in ("policy", "all"):
        train_policy(args.out_dir / "arith-policy", args.policy_steps, args.batch_size, 1.5e-3, args.seed)
    if args.which in ("prm", "all"):
        meta = train_prm(
            args.out_dir / "arith-policy",
            args.out_dir / "arith-prm",
            args.prm_problems_per_level,
            args.prm_samples,
            args.prm_steps,
            args.seed,
        )
        print(f"arith-prm held-out step AUROC: {meta['heldout_step_auroc']}")
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


if __name__ == "__main__":
    main()
