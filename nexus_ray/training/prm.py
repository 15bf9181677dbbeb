"""arith-prm: a step checker that scores each step of a solution against the line before it.

Why local: a step of the arith task is a function of the line before it only, so the checker
reads one step at a time (format ``local`` of ``engines.prm_format``), and the engine
multiplies the step scores into P(still correct after step i). The previous PRM read whole
solutions on top of the frozen policy and learned little more than the policy's own
confidence (within-problem AUROC 0.64): a verifier made of the policy cannot catch the
policy's mistakes. It trains on short step pairs, cheap enough to see hundreds of thousands
of: the policy's own steps (its real mistakes, hard negatives) and fresh gold steps, most made
wrong the ways the policy errs (one digit of the computed number, a copied number, the wrong
operation first), with a next-token loss on right characters (the arithmetic itself) beside
the step labels. Two views of a step, two checkers:

- ``line`` (arith-prm, ``prm``): ``Q: <previous line>`` then the step, read by the policy's
  weights *unfrozen* under two fresh layers.
- ``rewrite`` (arith-prm-rewrite, ``prm-rewrite``): what the step rewrote, the operation beside its result
  with digits least significant first (``12+[7*3=12]-5``, ``engines.rewrite_view``), read by
  a model of the same shape trained from scratch (the view is not text the policy reads).
  Its next-token head learns the arithmetic far better than its classifier learns verdicts,
  so a step is scored by re-deriving it: the checker's probability of writing the
  replacement it reads (``prm_local_score: rederive``; within-problem AUROC ~0.95 against
  ~0.7 for either classifier, see RESULTS).
"""

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
from nexus_ray.engines.hf import rederive_probabilities
from nexus_ray.engines.rewrite_view import reversed_digits, rewrite_parts, rewrite_spans
from nexus_ray.tasks import arith
from nexus_ray.training.batches import ProblemStream, right_padded
from nexus_ray.training.loop import fit, resumable, save, set_seed, warmup_cosine
from nexus_ray.zoo.tokenizer import build_tokenizer

PRM_EXTRA_LAYERS = 2
PRM_BATCH_SIZE = 128
PRM_POLICY_SHARE = 0.5  # of each batch: steps from the policy's own samples, half of them wrong
PRM_PROBE_EVERY = 500  # steps between two held-out probes (and one at the end)
PRM_LM_WEIGHT = 1.0  # next-token loss on right characters, beside the step labels
LOCAL_PROMPT = arith.QUESTION_PREFIX + "{previous}" + arith.STEP_DELIMITER  # how a prompt holds its line
IGNORE = -100
SYNTHETIC_LEVELS = (1, 2, 3, 4, 4, 5, 5, 5)  # fresh steps lean to the levels where the policy errs
# Of the rewrite checker's fresh steps, the share that reduces a product: it re-derives sums
# almost perfectly after 3000 steps and products far less often (see RESULTS).
REWRITE_PRODUCT_SHARE = 0.5

Pair = tuple[str, str, int]  # previous line, step, 1 if the step is the one right line after it


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


def next_line(previous: str) -> str | None:
    """The one right line after ``previous``: its reduction, the answer line after a lone number,
    None after a line that is not an expression (whatever follows it is wrong)."""
    try:
        tokens = arith.tokenize(previous)
    except ValueError:
        return None
    return f"{arith.ANSWER_PREFIX}{previous}" if len(tokens) == 1 else arith.reduce_once(previous)


def step_pair(previous: str, step: str) -> Pair:
    """A step after its previous line, with its verdict."""
    return previous, step, int(step == next_line(previous))


def line_labels(previous: str, step: str) -> tuple[str, list[int], list[bool]]:
    """View ``line``: ``Q: <previous>``, the step and its newline; a label per character of the
    step (1 while it agrees with the one right line, 0 from the first character that departs;
    the newline's is the verdict); a right step's characters are next-token targets."""
    context = LOCAL_PROMPT.format(previous=previous)
    target = next_line(previous)
    target = "" if target is None else target + arith.STEP_DELIMITER
    ok, labels = True, []
    for i, ch in enumerate(step + arith.STEP_DELIMITER):
        ok = ok and i < len(target) and target[i] == ch
        labels.append(int(ok))
    predicted = [False] * len(context) + [labels[-1] == 1] * len(labels)
    return context + step + arith.STEP_DELIMITER, [IGNORE] * len(context) + labels, predicted


def rewrite_labels(previous: str, step: str) -> tuple[str, list[int], list[bool]]:
    """View ``rewrite``: the step's ``rewrite_view`` and its newline. The replacement's
    characters (and the closing bracket) are labelled 1 while they agree with the rewritten
    span's value, 0 from the first that departs, and are next-token targets while they agree;
    the newline carries the step's verdict (a right value at the wrong place is a wrong step)."""
    lead, written, rest = rewrite_parts(previous, step)
    value = next_line(rewrite_spans(previous, step)[1])  # the span's reduction, or the answer line
    target = "" if value is None else reversed_digits(value) + "]"
    labels = [IGNORE] * len(lead)
    ok = True
    for i, ch in enumerate(written):
        ok = ok and i < len(target) and target[i] == ch
        labels.append(int(ok))
    predicted = [label == 1 for label in labels] + [False] * (len(rest) + 1)
    labels += [IGNORE] * len(rest) + [step_pair(previous, step)[2]]
    return lead + written + rest + arith.STEP_DELIMITER, labels, predicted


def view_labels(previous: str, step: str, view: str) -> tuple[str, list[int], list[bool]]:
    """The checker's text for a step in ``view``, a label per character (-100: not judged),
    and which characters the next-token loss predicts. Dense labels teach a tiny model where
    an error is, far faster than one label per step."""
    return line_labels(previous, step) if view == "line" else rewrite_labels(previous, step)


def solution_pairs(expression: str, solution: str) -> list[Pair]:
    """Every step of a solution (the answer line included) after the line before it."""
    lines = [line.strip() for line in solution.split(arith.STEP_DELIMITER) if line.strip()]
    pairs, previous = [], expression
    for line in lines:
        pairs.append(step_pair(previous, line))
        if line.startswith(arith.ANSWER_PREFIX):
            break
        previous = line
    return pairs


def corrupt_line(line: str, previous: str, rng: random.Random) -> str:
    """A wrong line the policy might write after ``previous``: a digit of the new number changed
    (most of its errors), a copied number changed, or the wrong operation done first."""
    tokens = arith.tokenize(line)
    before = arith.tokenize(previous)
    kind = rng.random()
    if kind < 0.15 and len(before) >= 5:  # the leftmost other operation first
        ops = before[1::2]
        j = rng.randrange(len(ops))
        a, op, b = before[2 * j], before[2 * j + 1], before[2 * j + 2]
        value = a * b if op == "*" else a + b if op == "+" else a - b
        wrong = arith.render(before[: 2 * j] + [value] + before[2 * j + 3 :])
        if wrong != line:
            return wrong
    numbers = list(range(0, len(tokens), 2))
    new = [k for k in numbers if k >= len(before) or tokens[k] != before[k]] or numbers
    k = rng.choice(new) if kind < 0.8 else rng.choice(numbers)
    digits = list(str(tokens[k]))
    start = 1 if digits[0] == "-" else 0
    i = rng.randrange(start, len(digits))
    digits[i] = rng.choice([d for d in "0123456789" if d != digits[i] and (i > start or d != "0")] or ["1"])
    if rng.random() < 0.1:  # a digit dropped or doubled instead
        digits[i] = "" if len(digits) - start > 1 else digits[i] * 2
    tokens[k] = int("".join(digits))
    wrong = arith.render(tokens)
    return wrong if wrong != line else arith.render([*tokens[:k], int(tokens[k]) + 1, *tokens[k + 1 :]])


def synthetic_pairs(
    stream: ProblemStream, n: int, rng: random.Random, product_share: float = 0.0
) -> list[Pair]:
    """``n`` steps of fresh gold solutions, two in three made wrong (``corrupt_line``); about
    ``product_share`` of them reduce a product (the rest: any step)."""
    out = []
    for _ in range(n):
        p = stream.batch(rng.choice(SYNTHETIC_LEVELS), 1)[0]
        lines = [p.expression, *p.steps]
        products = [k for k, line in enumerate(lines[:-1]) if "*" in line]  # a product goes first
        lean = product_share > 0 and products and rng.random() < product_share  # no draw without a share
        i = rng.choice(products) if lean else rng.randrange(len(lines))
        previous = lines[i]
        right = next_line(previous)
        assert right is not None
        if rng.random() < 2 / 3:
            right = (
                f"{arith.ANSWER_PREFIX}{int(previous) + rng.choice([-10, -1, 1, 10])}"
                if right.startswith(arith.ANSWER_PREFIX)
                else corrupt_line(right, previous, rng)
            )
        out.append(step_pair(previous, right))
    return out


def pair_batch(pairs: list[Pair], tok, view: str) -> dict[str, torch.Tensor]:
    """``<s>`` then each step in ``view`` (``view_labels``): classification labels, and
    next-token targets (``lm_labels``, at the position before each predicted character)."""
    seqs, labs, lm = [], [], []
    for previous, step, _ in pairs:
        text, labels, predicted = view_labels(previous, step, view)
        ids = list(tok(text).input_ids)
        assert len(ids) == len(labels) + 1, "the zoo tokenizer is <s> then one token per character"
        seqs.append(ids)
        labs.append([IGNORE, *labels])
        lm.append([ids[i + 1] if predicted[i] else IGNORE for i in range(len(predicted))] + [IGNORE])
    batch = right_padded(seqs, labs, tok.pad_token_id)
    batch["lm_labels"] = right_padded(seqs, lm, tok.pad_token_id)["labels"]
    return batch


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


def within_problem_auroc(groups: list[tuple[list[float], list[bool]]]) -> tuple[float, int]:
    """How often a right solution outscores a wrong one of the same problem (ties half)."""
    won, n = 0.0, 0
    for scores, correct in groups:
        for a, ca in zip(scores, correct):
            for b, cb in zip(scores, correct):
                if ca and not cb:
                    n += 1
                    won += 1.0 if a > b else 0.5 if a == b else 0.0
    return won / max(1, n), n


def build_prm(policy_dir: Path, extra_layers: int, seed: int, view: str) -> LlamaForTokenClassification:
    """A token classifier of the policy's shape plus ``extra_layers`` fresh layers: its layers
    the policy's (trainable) for view ``line``, random for ``rewrite`` (not text the policy
    reads). Its config declares the input it reads (format ``local``, the view) and, for
    ``rewrite``, that a step is scored by re-deriving it (``prm_local_score: rederive``)."""
    config = LlamaConfig.from_pretrained(policy_dir)
    config.num_hidden_layers += extra_layers
    config.num_labels = 2
    config.id2label = {0: "wrong", 1: "correct"}
    config.label2id = {"wrong": 0, "correct": 1}
    config.prm_format = "local"
    config.prm_local_prompt = LOCAL_PROMPT
    if view != "line":
        config.prm_local_view = view
        config.prm_local_score = "rederive"
    torch.manual_seed(seed)
    model = LlamaForTokenClassification(config)
    if view == "line":
        policy = LlamaForCausalLM.from_pretrained(policy_dir)
        missing, unexpected = model.model.load_state_dict(policy.model.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("layers.") for k in missing), (missing, unexpected)
    return model


Scorer = Callable[[list[Pair]], list[float]]


def step_scorer(model, tok, view: str) -> Scorer:
    """Each pair's step score as the engines compute it: P(correct) at the newline ending the
    step (``line``), or the checker's probability of writing the replacement it reads
    (``rewrite``, scored ``rederive``)."""

    def score(pairs: list[Pair]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(pairs), 256):
            batch = pair_batch(pairs[start : start + 256], tok, view)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            ends = mask.sum(1) - 1  # the newline ending the step
            with torch.inference_mode():
                if view == "rewrite":
                    written = rederive_probabilities(model, ids, mask)
                    judged = batch["labels"] != IGNORE  # the replacement, "]" and the newline
                    judged[torch.arange(len(ends)), ends] = False
                    out += written.masked_fill(~judged, 1.0).prod(1).tolist()
                    continue
                probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1)[..., 1]
            out += probs[torch.arange(len(ends)), ends].tolist()
        return out

    return score


def corruption_probe(score: Scorer, problems: list[arith.Problem], seed: int) -> dict[str, float]:
    """Gold step vs. the same step corrupted (``arith.corrupt_step``), after the gold line before it."""
    rng = random.Random(seed)
    gold, bad = [], []
    for p in problems:
        i = rng.randrange(len(p.steps))
        previous = p.expression if i == 0 else p.steps[i - 1]
        gold.append(step_pair(previous, p.steps[i]))
        bad.append(step_pair(previous, arith.corrupt_step(p, i, rng)[i]))
    g, b = score(gold), score(bad)
    return {
        "gold_mean": round(sum(g) / len(g), 4),
        "corrupted_mean": round(sum(b) / len(b), 4),
        "gold_above_corrupted": round(sum(x > y for x, y in zip(g, b)) / len(g), 4),
    }


def heldout_probe(score: Scorer, samples: list[tuple[arith.Problem, str]]) -> dict[str, float]:
    """On held-out policy samples: step-level AUROC, and within-problem AUROC of the solution
    score (the product of its step scores), the number selection by a PRM depends on."""
    pairs_of = [solution_pairs(p.expression, text) for p, text in samples]
    flat = [pair for pairs in pairs_of for pair in pairs]
    scores = iter(score(flat))
    step_scores, step_labels, groups = [], [], {}
    for (p, text), pairs in zip(samples, pairs_of):
        product = 1.0
        for pair in pairs:
            s = next(scores)
            product *= s
            step_scores.append(s)
            step_labels.append(pair[2])
        scores_, correct = groups.setdefault(p.expression, ([], []))
        scores_.append(product)
        correct.append(arith.check(p.expression, text).correct)
    within, n = within_problem_auroc(list(groups.values()))
    return {
        "step_auroc": round(auroc(step_scores, step_labels), 4),
        "within_auroc": round(within, 4),
        "pairs": n,
    }


def train_prm(
    policy_dir: Path,
    out: Path,
    problems_per_level: int,
    samples: int,
    steps: int,
    seed: int,
    lr: float = 1e-3,
    resume: bool = False,
    view: str = "line",
) -> dict:
    """Sample the policy, label its steps with the checker, train the step checker (reading
    steps in ``view``) on them and on fresh corrupted gold steps. A tenth of the sampled
    problems is held out (``heldout_probe``), and separate held-out problems give the
    gold-vs-corrupted probe. ``resume``: continue from the run's last checkpoint (the
    sampling, seeded, is redone)."""
    set_seed(seed)
    probe_problems = [p for level in (2, 3, 4, 5) for p in ProblemStream(seed + 2).batch(level, 50)]
    stream = ProblemStream(seed + 1)
    stream.heldout |= {p.expression for p in probe_problems}
    problems = [p for level in arith.LEVELS for p in stream.batch(level, problems_per_level)]
    random.Random(seed).shuffle(problems)
    n_eval = len(problems) // 10
    heldout = {p.expression for p in problems[:n_eval]}
    stream.heldout |= heldout  # fresh steps never come from them
    sampled = policy_samples(policy_dir, problems, samples, seed, "sampling policy")
    eval_samples = [(p, t) for p, t in sampled if p.expression in heldout and p.level >= 3]
    train = [
        pair for p, t in sampled if p.expression not in heldout for pair in solution_pairs(p.expression, t)
    ]
    right = [pair for pair in train if pair[2] == 1]
    wrong = [pair for pair in train if pair[2] == 0]

    tok = build_tokenizer()
    model = build_prm(policy_dir, PRM_EXTRA_LAYERS, seed, view)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    n_policy = int(PRM_BATCH_SIZE * PRM_POLICY_SHARE)
    product_share = REWRITE_PRODUCT_SHARE if view == "rewrite" else 0.0

    def loss_at(step: int) -> torch.Tensor:
        """Classification of the labelled characters, plus next-token prediction of the right
        ones: the arithmetic a checker needs is learned far faster from the tokens than from bits."""
        rows = rng.sample(wrong, n_policy // 2) + rng.sample(right, n_policy - n_policy // 2)
        rows += synthetic_pairs(stream, PRM_BATCH_SIZE - n_policy, rng, product_share)
        batch = pair_batch(rows, tok, view)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden.last_hidden_state
        cls = torch.nn.functional.cross_entropy(model.score(hidden).flatten(0, 1), batch["labels"].flatten())
        lm_logits = hidden @ model.model.embed_tokens.weight.T
        return cls + PRM_LM_WEIGHT * torch.nn.functional.cross_entropy(
            lm_logits.flatten(0, 1), batch["lm_labels"].flatten()
        )

    def probe() -> dict:
        model.eval()
        score = step_scorer(model, tok, view)
        record = heldout_probe(score, eval_samples) | corruption_probe(score, probe_problems, seed)
        model.train()
        return record

    def probe_at(step: int) -> dict | None:
        if (step + 1) % PRM_PROBE_EVERY and step + 1 != steps:
            return None
        record = {"step": step + 1, **probe()}
        tqdm.write(str(record))
        return record

    log = fit(
        model,
        opt,
        steps,
        "arith-prm",
        lambda step: warmup_cosine(step, steps, lr, warmup=200),
        loss_at,
        probe_at,
        checkpoint=resumable(out, resume),
    )
    meta = {
        "kind": "prm",
        "format": "local",
        "view": view,
        "policy": policy_dir.name,
        "extra_layers": PRM_EXTRA_LAYERS,
        "problems_per_level": problems_per_level,
        "samples_per_problem": samples,
        "train_steps_right": len(right),
        "train_steps_wrong": len(wrong),
        "batch_size": PRM_BATCH_SIZE,
        "policy_share": PRM_POLICY_SHARE,
        "product_share": product_share,
        "lm_weight": PRM_LM_WEIGHT,
        "heldout_solutions": len(eval_samples),
        "heldout": probe(),
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_log": log,
    }
    save(model, tok, out, meta)
    return meta
