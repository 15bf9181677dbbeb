"""The real-format zoo pair: ``chat-policy`` (Qwen2ForCausalLM, byte-level BPE, ChatML template).

    python -m nexus_ray.training.chat policy   # tokenizer + chat-policy

The policy learns ``mathchat`` problems rendered through its own chat template, so everything
downstream (the service's chat-math format, vLLM, the PRM's input) sees what a Qwen2.5-Math
model directory would give it. Seeded; the chat sets' problems are never trained on.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from nexus_ray.tasks import mathchat
from nexus_ray.tasks.datasets import heldout_chat_problems
from nexus_ray.training.chat_tokenizer import IM_END, save_chat_tokenizer, train_bpe
from nexus_ray.zoo import registry
from nexus_ray.zoo.train import _fit, _lr, _right_padded, _run_meta, _save, _set_seed

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


class ChatStream:
    """An endless seeded stream of training problems, one level per batch, held-out sets excluded."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.heldout = heldout_chat_problems()

    def batch(self, level: int, size: int) -> list[mathchat.ChatProblem]:
        out: list[mathchat.ChatProblem] = []
        while len(out) < size:
            p = mathchat.generate(level, self.rng)
            if p.problem not in self.heldout:
                out.append(p)
        return out


def messages(problem: str, system: str | None = mathchat.SYSTEM_PROMPT) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": problem}]


def build_tokenizer(out: Path, seed: int):
    """Train the BPE on rendered chats and load it back the way transformers will (Qwen2Tokenizer)."""
    from nexus_ray.training.chat_tokenizer import CHAT_TEMPLATE
    from jinja2 import Template

    template = Template(CHAT_TEMPLATE)
    rng = random.Random(seed + 1)
    texts = []
    for i in range(20000):
        p = mathchat.generate(1 + i % 5, rng)
        texts.append(template.render(messages=messages(p.problem), add_generation_prompt=True) + p.solution + IM_END)
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
        prompt = tok.apply_chat_template(messages(p.problem, system), add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        full = prompt_ids + tok(p.solution + IM_END, add_special_tokens=False).input_ids
        rows.append(full)
        labels.append([-100] * len(prompt_ids) + full[len(prompt_ids) :])
    return _right_padded(rows, labels, tok.pad_token_id)


def new_qwen2(tok, arch: dict) -> Qwen2ForCausalLM:
    im_end = tok.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tok), bos_token_id=tok.pad_token_id, eos_token_id=im_end, pad_token_id=tok.pad_token_id, **arch
    )
    return Qwen2ForCausalLM(config)


def train_chat_policy(out: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    _set_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp), seed)
    model = new_qwen2(tok, CHAT_POLICY_ARCH)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(IM_END), tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    stream, rng = ChatStream(seed), random.Random(seed + 2)
    levels = list(mathchat.WORD_LEVELS)
    start = time.time()
    log = _fit(
        model, opt, steps, "chat-policy", lambda step: _lr(step, steps, lr),
        lambda step: model(**_batch(stream.batch(levels[step % len(levels)], batch_size), tok, rng)).loss,
    )
    meta = _run_meta("chat-policy", model, steps, batch_size, lr, seed, start, log, vocab_size=len(tok))
    _save(model, tok, out, meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nexus_ray.training.chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["policy"], help="which model to (re)build")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the zoo's)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out or registry.ZOO_DIR / "chat-policy"
    meta = train_chat_policy(out, args.steps, args.batch_size, args.lr, args.seed)
    print(f"chat-policy: {meta['parameters']} parameters, {meta['train_seconds']} s -> {out}")


if __name__ == "__main__":
    main()
