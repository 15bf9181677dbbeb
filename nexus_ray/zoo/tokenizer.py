"""The zoo's character-level tokenizer: one token per printable ASCII character.

Arithmetic is easiest for a tiny model when every digit is its own token, and a fixed
character vocabulary keeps the tokenizer identical across every zoo model (policy, PRM,
merge experts), which the PRM and merging rely on.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer that splits text into characters and prepends ``<s>``."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def save_tokenizer(directory: Path) -> None:
    build_tokenizer().save_pretrained(directory)
