"""Model directories nexus_ray has never seen, built on the spot: a Qwen2 or Llama policy with
its own BPE tokenizer and chat template, and a PRM in Qwen2.5-Math-PRM's format.

Their weights are random (sharpened so greedy decoding has no near-ties between engines): these
directories prove formats and plumbing, not accuracy. The tokenizer is trained on other text
than the zoo's and its template differs from the zoo's (no default system prompt; the Llama
variant keeps it in tokenizer_config.json, as older model directories do).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import AddedToken, processors
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from nexus_ray.engines.qwen2_prm import Qwen2ForProcessRewardModel
from nexus_ray.training.chat_tokenizer import save_chat_tokenizer, train_bpe

TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BOS = "<|begin_of_text|>"
ARCH = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
)


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [
        "solve",
        "the",
        "sum",
        "of",
        "these",
        "numbers",
        "find",
        "value",
        "answer",
        "total",
        "each",
        "half",
        "twice",
        "more",
        "less",
    ]
    return [
        " ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)} / {rng.randint(1, 99)} = x"
        for _ in range(3000)
    ]


def _sharpen(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.25)


def _tokenizer_adding_bos(seed: int):
    """Llama 3's arrangement: the tokenizer prepends BOS to every encoding *and* the chat
    template writes it, so an engine that adds special tokens to a templated prompt doubles it."""
    tok = train_bpe(_corpus(seed), 300)
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def build_policy(
    out: Path, arch: str = "qwen2", template_in_config: bool = False, seed: int = 0, bos: bool = False
) -> Path:
    """A policy directory: ``arch`` qwen2 or llama; the chat template in ``chat_template.jinja``
    (current transformers) or in ``tokenizer_config.json`` (older directories); with ``bos``,
    a tokenizer that adds BOS and a template that writes it too (Llama 3's)."""
    out.mkdir(parents=True, exist_ok=True)
    if bos:
        save_chat_tokenizer(_tokenizer_adding_bos(seed), out, "{{- bos_token }}" + TEMPLATE, bos_token=BOS)
    else:
        save_chat_tokenizer(train_bpe(_corpus(seed), 300), out, TEMPLATE)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    ids = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    common = dict(
        vocab_size=vocab,
        bos_token_id=ids[BOS if bos else "<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **ARCH,
    )
    model = (
        LlamaForCausalLM(LlamaConfig(**common))
        if arch == "llama"
        else Qwen2ForCausalLM(Qwen2Config(**common))
    )
    _sharpen(model, seed)
    model.save_pretrained(out)
    if template_in_config:
        tok_config["chat_template"] = (out / "chat_template.jinja").read_text()
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
        (out / "chat_template.jinja").unlink()
    return out


def build_prm(out: Path, policy_dir: Path, num_labels: int = 2, step_tag: bool = True, seed: int = 1) -> Path:
    """A ``Qwen2ForProcessRewardModel`` directory over the policy's tokenizer (with ``<extra_0>``
    unless ``step_tag`` is False)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (policy_dir / name).exists():
            (out / name).write_text((policy_dir / name).read_text())
    if not step_tag:  # the tokenizer forgets the tag: format qwen-prm cannot read this PRM
        tok = json.loads((out / "tokenizer.json").read_text())
        tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<extra_0>"]
        (out / "tokenizer.json").write_text(json.dumps(tok))
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.pop("added_tokens_decoder", None)
        config["extra_special_tokens"] = [
            t for t in config.get("extra_special_tokens", []) if t != "<extra_0>"
        ]
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = AutoConfig.from_pretrained(policy_dir).vocab_size
    config = Qwen2Config(vocab_size=vocab, num_labels=num_labels, max_position_embeddings=512, **ARCH)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    model = Qwen2ForProcessRewardModel(config)
    _sharpen(model, seed)
    model.save_pretrained(out)
    return out
