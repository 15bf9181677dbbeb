"""Prompt text to token ids, the same in every engine.

A chat template already writes the model's BOS token into the text (Llama 3's does); adding
special tokens on top would give the model two. So a prompt that begins with the tokenizer's
BOS text is tokenized as it stands, any other with the tokenizer's special tokens (the zoo's
``<s>``), as transformers' and vLLM's own chat paths do.
"""

from __future__ import annotations


def prompt_ids(tokenizer, text: str) -> list[int]:
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special).input_ids)
