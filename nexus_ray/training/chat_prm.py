"""``chat-prm``: a Qwen2.5-Math-PRM-format reward model for chat-policy's own samples.

The arith PRM's recipe in Qwen2.5-Math-PRM's format: the policy's trunk, frozen, under fresh
Qwen2 layers and the two-layer ``score`` head (``Qwen2ForProcessRewardModel``); the input is the
PRM's own chat template (system prompt, question, steps each ended by ``<extra_0>``), exactly as
``engines.prm_format.StepEncoder`` builds it at serving time. Labels are exact: a token is
right while the solution still agrees with the gold one (``mathchat.step_labels``), and the
score a server reads is the one at each ``<extra_0>``. Every batch mixes the policy's own
samples with fresh gold solutions, most with one digit of one step changed.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from nexus_ray.config import EngineConfig, RewardConfig, TaskConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.engines.prm_format import StepEncoder
from nexus_ray.engines.qwen2_prm import Qwen2ForProcessRewardModel
from nexus_ray.tasks import mathchat
from nexus_ray.tasks.format import task_format
from nexus_ray.training.batches import ProblemStream, right_padded
from nexus_ray.training.loop import fit, save, set_seed, warmup_cosine
from nexus_ray.training.prm import auroc

EXTRA_LAYERS = 2
BATCH_SIZE = 48
FRESH_PER_BATCH = 16  # of each batch: fresh gold solutions, most with one corrupted step

Example = tuple[mathchat.ChatProblem, tuple[str, ...]]  # a problem and the steps of one solution


def policy_samples(
    policy_dir: Path, problems: list[mathchat.ChatProblem], n: int, seed: int
) -> list[Example]:
    """``n`` temperature-1 samples per problem, prompted exactly as the service prompts."""
    engine = build_policy_engine(EngineConfig(model=str(policy_dir)))
    fmt = task_format(TaskConfig(format="chat-math"), policy_dir)
    params = GenerationParams(n=n, temperature=1.0, max_tokens=256, seed=seed)
    out: list[Example] = []
    chunk = max(1, 256 // n)
    for start in tqdm(range(0, len(problems), chunk), desc="sampling chat-policy", unit="batch"):
        batch = problems[start : start + chunk]
        results = engine.generate_sync([fmt.prompt(p.problem) for p in batch], params)
        out += [
            (p, tuple(mathchat.split_steps(c.text))) for p, r in zip(batch, results) for c in r.completions
        ]
    return [e for e in out if e[1]]


def corrupt(problem: mathchat.ChatProblem, rng: random.Random) -> tuple[str, ...]:
    """The gold steps with one digit of one step changed (a wrong value, in the policy's format)."""
    steps = list(problem.steps)
    i = rng.randrange(len(steps))
    digits = [k for k, ch in enumerate(steps[i]) if ch.isdigit()]
    k = rng.choice(digits)
    steps[i] = steps[i][:k] + str((int(steps[i][k]) + rng.randint(1, 9)) % 10) + steps[i][k + 1 :]
    return tuple(steps)


def encode(
    encoder: StepEncoder, problem: mathchat.ChatProblem, steps: tuple[str, ...]
) -> tuple[list[int], list[int]]:
    """Token ids in the serving format and a label per token: 1 while the text agrees with the
    gold solution, 0 from the first character that departs; each step tag carries its step's
    verdict (the score a server reads); -100 outside the assistant's steps."""
    tok, tag = encoder.tokenizer, encoder.step_tag
    messages = [
        {"role": "system", "content": encoder.system_prompt},
        {"role": "user", "content": problem.problem},
        {"role": "assistant", "content": "".join(s + tag for s in steps)},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    char_labels: list[int] = []
    ok = True
    for k, step in enumerate(steps):
        target = problem.steps[k] if k < len(problem.steps) else ""
        for i, ch in enumerate(step):
            ok = ok and i < len(target) and target[i] == ch
            char_labels.append(int(ok))
        ok = ok and step == target
        char_labels += [int(ok)] * len(tag)
    begin = text.rfind(messages[-1]["content"])
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = range(begin, begin + len(char_labels))  # a token's label is its last character's
    labels = [
        char_labels[e - 1 - begin] if b in inside and e - 1 in inside else -100 for b, e in enc.offset_mapping
    ]
    return list(enc.input_ids), labels


def prm_from_policy(policy_dir: Path, extra_layers: int, seed: int) -> Qwen2ForProcessRewardModel:
    """The policy's trunk, frozen, under ``extra_layers`` fresh layers and the score head."""
    policy = Qwen2ForCausalLM.from_pretrained(policy_dir)
    config = Qwen2Config.from_pretrained(policy_dir)
    frozen = config.num_hidden_layers
    config.num_hidden_layers = frozen + extra_layers
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    config.num_labels = 2
    config.tie_word_embeddings = False
    config.architectures = ["Qwen2ForProcessRewardModel"]
    torch.manual_seed(seed)
    model = Qwen2ForProcessRewardModel(config)
    missing, unexpected = model.model.load_state_dict(policy.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("layers.") for k in missing), (missing, unexpected)
    model.model.embed_tokens.requires_grad_(False)
    for layer in model.model.layers[:frozen]:
        layer.requires_grad_(False)
    return model


def step_scores(model, encoder: StepEncoder, rows: list[Example]) -> tuple[list[float], list[int]]:
    """Every step's score at its tag and its exact label, over ``rows``."""
    model.eval()
    scores, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            encoded = [encode(encoder, p, s) for p, s in rows[start : start + 64]]
            batch = right_padded(
                [e[0] for e in encoded], [e[1] for e in encoded], encoder.tokenizer.pad_token_id
            )
            probs = torch.softmax(
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1
            )
            tag = batch["input_ids"] == encoder.step_tag_id
            scores += probs[..., 1][tag].tolist()
            labels += batch["labels"][tag].tolist()
    model.train()
    return scores, labels


def within_problem_auroc(rows: list[Example], scores: list[float]) -> float:
    """How often a right solution's last-step score beats a wrong one's for the same problem
    (``scores``: every step's score over ``rows``, as ``step_scores`` returns them)."""
    last, k = [], 0
    for _, steps in rows:
        k += len(steps)
        last.append(scores[k - 1])
    by_problem: dict[str, list[tuple[float, bool]]] = {}
    for (p, steps), s in zip(rows, last):
        by_problem.setdefault(p.problem, []).append((s, all(mathchat.step_labels(p, "\n\n".join(steps)))))
    wins = total = 0.0
    for items in by_problem.values():
        right = [s for s, ok in items if ok]
        wrong = [s for s, ok in items if not ok]
        for r in right:
            for w in wrong:
                wins += 1.0 if r > w else 0.5 if r == w else 0.0
                total += 1
    return wins / total if total else float("nan")


def train_chat_prm(
    policy_dir: Path,
    out: Path,
    problems_per_level: int,
    samples: int,
    steps: int,
    seed: int,
    lr: float = 1e-3,
) -> dict:
    set_seed(seed)
    stream = ProblemStream(seed + 1, chat=True)
    problems = [p for level in mathchat.WORD_LEVELS for p in stream.batch(level, problems_per_level)]
    random.Random(seed).shuffle(problems)
    n_eval = len(problems) // 10
    stream.heldout |= {p.problem for p in problems[:n_eval]}  # fresh gold never repeats them
    data = policy_samples(policy_dir, problems, samples, seed)
    eval_problems = {p.problem for p in problems[:n_eval]}
    train_rows = [e for e in data if e[0].problem not in eval_problems]
    eval_rows = [e for e in data if e[0].problem in eval_problems]

    tok = AutoTokenizer.from_pretrained(policy_dir)
    encoder = StepEncoder(tok, "qwen-prm", step_tag=RewardConfig(model="x").step_tag)
    model = prm_from_policy(policy_dir, EXTRA_LAYERS, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    levels = list(mathchat.WORD_LEVELS)

    def loss_at(step: int) -> torch.Tensor:
        rows = rng.sample(train_rows, BATCH_SIZE - FRESH_PER_BATCH)
        for _ in range(FRESH_PER_BATCH):
            p = stream.batch(rng.choice(levels), 1)[0]
            rows.append((p, corrupt(p, rng) if rng.random() < 0.8 else p.steps))
        encoded = [encode(encoder, p, s) for p, s in rows]
        return model(**right_padded([e[0] for e in encoded], [e[1] for e in encoded], tok.pad_token_id)).loss

    log = fit(model, opt, steps, "chat-prm", lambda step: warmup_cosine(step, steps, lr, warmup=100), loss_at)
    scores, labels = step_scores(model, encoder, eval_rows)
    meta = {
        "kind": "chat-prm",
        "format": "qwen-prm",
        "policy": policy_dir.name,
        "frozen_policy_layers": model.config.num_hidden_layers - EXTRA_LAYERS,
        "extra_layers": EXTRA_LAYERS,
        "problems_per_level": problems_per_level,
        "samples_per_problem": samples,
        "train_solutions": len(train_rows),
        "fresh_gold_per_batch": FRESH_PER_BATCH,
        "heldout_solutions": len(eval_rows),
        "heldout_step_auroc": round(auroc(scores, labels), 4),
        "heldout_within_problem_auroc": round(within_problem_auroc(eval_rows, scores), 4),
        "heldout_positive_rate": round(sum(labels) / max(1, len(labels)), 4),
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "lr": lr,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "loss_log": log,
    }
    save(model, tok, out, meta)
    return meta
