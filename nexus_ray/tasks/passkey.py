"""Long-range tasks for RoPE context extension: passkey retrieval and packed task documents.

A passkey example hides a five-digit key somewhere in filler text and asks for it at the end::

    the sky is blue. key=48213. the sun is warm. ... key? 48213

The model can only answer by attending back to the key, however far it is, so retrieval
accuracy by length says how far the model's attention really reaches. Documents are task
examples (arithmetic solutions and passkey examples) packed to an exact token count; the
zoo tokenizer is one token per character, so characters are tokens here (plus ``<s>``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nexus_ray.tasks import arith

FILLER = (
    "the sky is blue. ",
    "the grass is green. ",
    "the sun is warm. ",
    "here we go. ",
    "there and back again. ",
    "a cat sat down. ",
    "rain fell all day. ",
    "we walk on. ",
)
KEY_DIGITS = 5
QUESTION = "key? "
MIN_PASSKEY_CHARS = 2 * KEY_DIGITS + len("key=. ") + len(QUESTION) + 1


def key_statement(key: str) -> str:
    return f"key={key}. "


@dataclass(frozen=True)
class PasskeyExample:
    """``prompt + answer + "\\n"`` is the full text; ``key_offset`` is where the key line starts."""

    prompt: str
    answer: str
    key_offset: int

    @property
    def text(self) -> str:
        return f"{self.prompt}{self.answer}\n"


def _filler(n_chars: int, rng: random.Random) -> tuple[str, list[int]]:
    """Exactly ``n_chars`` of filler sentences (the last one cut), and where sentences start."""
    out, starts = "", [0]
    while len(out) < n_chars:
        out += rng.choice(FILLER)
        starts.append(len(out))
    return out[:n_chars], starts


def passkey(n_chars: int, depth: float, rng: random.Random) -> PasskeyExample:
    """An example of exactly ``n_chars`` characters with the key at ``depth`` (0 = first, 1 = last)
    of the filler."""
    if n_chars < MIN_PASSKEY_CHARS:
        raise ValueError(f"a passkey example needs at least {MIN_PASSKEY_CHARS} characters, got {n_chars}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = str(rng.randint(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS - 1))
    statement = key_statement(key)
    filler, starts = _filler(n_chars - len(statement) - len(QUESTION) - KEY_DIGITS - 1, rng)
    cut = min(starts, key=lambda s: abs(s - depth * len(filler)))  # a sentence boundary
    prompt = filler[:cut] + statement + filler[cut:] + QUESTION
    return PasskeyExample(prompt=prompt, answer=key, key_offset=cut)


def _arith_text(rng: random.Random) -> str:
    problem = arith.generate(rng.randint(1, 3), rng)
    return problem.prompt + problem.solution


def document(n_chars: int, rng: random.Random, max_passkey_chars: int) -> str:
    """Task examples packed to exactly ``n_chars``: arithmetic solutions and passkey examples of
    up to ``max_passkey_chars`` (the last example is cut)."""
    out = ""
    while len(out) < n_chars:
        if rng.random() < 0.5:
            out += _arith_text(rng)
        else:
            size = rng.randint(MIN_PASSKEY_CHARS, max(MIN_PASSKEY_CHARS, max_passkey_chars))
            out += passkey(size, rng.random(), rng).text
    return out[:n_chars]
