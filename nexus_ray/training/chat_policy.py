"""``chat-policy``: the real-format zoo policy (Qwen2ForCausalLM, byte-level BPE, ChatML template).

The policy learns ``mathchat`` problems rendered through its own chat template, so everything
downstream (the service's chat-math format, vLLM, the PRM's input) sees what a Qwen2.5-Math
model directory would give it. Seeded; the chat sets' problems are never trained on.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from nexus_ray.tasks import mathchat
from nexus_ray.training.batches import ProblemStream, right_padded
from nexus_ray.training.chat_tokenizer import CHAT_TEMPLATE, IM_END, save_chat_tokenizer, train_bpe
from nexus_ray.training.loop import fit, run_meta, save, set_seed, warmup_cosine

CHAT_POLICY_ARCH = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,  # head_dim 32: vLLM's CPU attention refuses 16
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)
VOCAB_SIZE = 512
# A tenth of the training chats carry another system prompt, so a user's own does not derail it.
OTHER_SYSTEM_PROMPT = "You are a helpful assistant."


def messages(problem: str, system: str | None = mathchat.SYSTEM_PROMPT) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": problem}]


def build_tokenizer(out: Path, seed: int):
    """Train the BPE on rendered chats and load it back the way transformers will (Qwen2Tokenizer)."""
    from jinja2 import Template

    template = Template(CHAT_TEMPLATE)
    rng = random.Random(seed + 1)
    texts = []
    for i in range(20000):
        p = mathchat.generate(1 + i % 5, rng)
        prompt = template.render(messages=messages(p.problem), add_generation_prompt=True)
        texts.append(prompt + p.solution + IM_END)
    texts.append(OTHER_SYSTEM_PROMPT)
    save_chat_tokenizer(train_bpe(texts, VOCAB_SIZE), out)
    Qwen2Config(vocab_size=VOCAB_SIZE).save_pretrained(out)  # so AutoTokenizer builds Qwen2Tokenizer
    tok = AutoTokenizer.from_pretrained(out)
    (out / "config.json").unlink()
    return tok


def _batch(problems: list[mathchat.ChatProblem], tok, rng: random.Random) -> dict[str, torch.Tensor]:
    """Chat prompt + solution + ``<|im_end|>``; loss on the assistant's part only."""
    rows, labels = [], []
    for p in problems:
        system = OTHER_SYSTEM_PROMPT if rng.random() < 0.1 else mathchat.SYSTEM_PROMPT
        chat = messages(p.problem, system)
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        full = prompt_ids + tok(p.solution + IM_END, add_special_tokens=False).input_ids
        rows.append(full)
        labels.append([-100] * len(prompt_ids) + full[len(prompt_ids) :])
    return right_padded(rows, labels, tok.pad_token_id)


def new_qwen2(tok, arch: dict) -> Qwen2ForCausalLM:
    im_end = tok.convert_tokens_to_ids(IM_END)
    pad = tok.pad_token_id
    config = Qwen2Config(vocab_size=len(tok), bos_token_id=pad, eos_token_id=im_end, pad_token_id=pad, **arch)
    return Qwen2ForCausalLM(config)


def train_chat_policy(out: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    set_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp), seed)
    model = new_qwen2(tok, CHAT_POLICY_ARCH)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(IM_END), tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    stream, rng = ProblemStream(seed, chat=True), random.Random(seed + 2)
    levels = list(mathchat.WORD_LEVELS)
    start = time.time()
    log = fit(
        model,
        opt,
        steps,
        "chat-policy",
        lambda step: warmup_cosine(step, steps, lr),
        lambda step: model(**_batch(stream.batch(levels[step % len(levels)], batch_size), tok, rng)).loss,
    )
    meta = run_meta("chat-policy", model, steps, batch_size, lr, seed, start, log, vocab_size=len(tok))
    save(model, tok, out, meta)
    return meta
