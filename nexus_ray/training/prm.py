"""arith-prm: a process reward model that scores each step of arith-policy's own samples."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

from nexus_ray.config import EngineConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.tasks import arith
from nexus_ray.training.batches import ProblemStream, right_padded
from nexus_ray.training.loop import fit, save, set_seed, warmup_cosine
from nexus_ray.zoo.tokenizer import build_tokenizer

PRM_EXTRA_LAYERS = 2
PRM_CURRICULUM_STEPS = 600  # levels 1-2 only at first: the new layers learn to compare digits there
PRM_FRESH_PER_BATCH = 24  # of each batch: fresh gold solutions, most with one corrupted step
PRM_BATCH_SIZE = 64
PRM_PROBE_EVERY = 500  # steps between two corruption probes (and one at the end)

Row = tuple[int, str, tuple[str, ...], tuple[tuple[int, ...], ...]]  # level, prompt, steps, labels


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


def prm_batch(
    rows: list[tuple[str, tuple[str, ...], tuple[tuple[int, ...], ...]]], tok, dense: bool
) -> dict[str, torch.Tensor]:
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
    return right_padded(seqs, labs, tok.pad_token_id)


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


def fresh_gold_rows(stream: ProblemStream, levels: list[int], n: int, rng: random.Random) -> list[Row]:
    """``n`` new problems' gold solutions, four in five with one step made wrong."""
    rows = []
    for _ in range(n):
        p = stream.batch(rng.choice(levels), 1)[0]
        steps = list(p.steps)
        if rng.random() < 0.8:
            steps = arith.corrupt_step(p, rng.randrange(len(p.steps)), rng)
        rows.append((p.level, p.prompt, *prm_example(p, arith.format_solution(steps))))
    return rows


Scorer = Callable[[list[tuple[str, tuple[str, ...]]]], list[float]]


def corruption_probe(score: Scorer, problems: list[arith.Problem], seed: int) -> dict[str, float]:
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


def last_step_scorer(model, tok) -> Scorer:
    def score(items: list[tuple[str, tuple[str, ...]]]) -> list[float]:
        rows = [(prompt, steps, tuple((1,) * (len(s) + 1) for s in steps)) for prompt, steps in items]
        batch = prm_batch(rows, tok, dense=False)
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs = torch.softmax(logits, -1)[..., 1]
        ends = (batch["labels"] != -100).long().cumsum(1).argmax(1)  # last labelled position
        return probs[torch.arange(len(rows)), ends].tolist()

    return score


def heldout_auroc(model, tok, eval_rows: list) -> tuple[float, float]:
    """Step-level AUROC at step ends on held-out samples, and their rate of correct steps."""
    model.eval()
    scores, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(eval_rows), 128):
            batch = prm_batch(eval_rows[start : start + 128], tok, dense=False)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            probs = torch.softmax(logits, -1)[..., 1]
            keep = batch["labels"] != -100
            scores += probs[keep].tolist()
            labels += batch["labels"][keep].tolist()
    return auroc(scores, labels), sum(labels) / max(1, len(labels))


def train_prm(
    policy_dir: Path,
    out: Path,
    problems_per_level: int,
    samples: int,
    steps: int,
    seed: int,
    lr: float = 1e-3,
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
    set_seed(seed)
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

    def loss_at(step: int) -> torch.Tensor:
        """The policy's own samples, then fresh (mostly corrupted) gold solutions."""
        curriculum = step < PRM_CURRICULUM_STEPS
        rows = rng.sample(early if curriculum else train_rows, PRM_BATCH_SIZE - PRM_FRESH_PER_BATCH)
        levels = [1, 2] if curriculum else list(arith.LEVELS)
        rows += fresh_gold_rows(stream, levels, PRM_FRESH_PER_BATCH, rng)
        return model(**prm_batch([r[1:] for r in rows], tok, dense=True)).loss

    def probe_at(step: int) -> dict | None:
        if (step + 1) % PRM_PROBE_EVERY and step + 1 != steps:
            return None
        model.eval()
        probe = corruption_probe(last_step_scorer(model, tok), probe_problems, seed)
        model.train()
        tqdm.write(f"step {step + 1}: {probe}")
        return {"step": step + 1, **probe}

    log = fit(
        model,
        opt,
        steps,
        "arith-prm",
        lambda step: warmup_cosine(step, steps, lr, warmup=100),
        loss_at,
        probe_at,
    )
    step_auroc, positive_rate = heldout_auroc(model, tok, eval_rows)
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
        "heldout_step_auroc": round(step_auroc, 4),
        "heldout_positive_rate": round(positive_rate, 4),
        "corruption_probe": corruption_probe(last_step_scorer(model, tok), probe_problems, seed),
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "loss_log": log,
    }
    save(model, tok, out, meta)
    return meta
