"""What the transformers engine keeps to compute nothing twice: the KV of prompts it has
prefilled (``PrefixCache``) and a step checker's scores (``PieceCache``), bounded, LRU.

Tree search (beam, DVTS, lookahead, MCTS) asks for the next step of a path whose prompt is
the previous round's prompt plus one step; without a cache every round prefills every path
from its first token. With it, a prompt is prefilled only past the longest prompt cached
before it (by token ids, so it is exact for any tokenizer), and a prompt cached whole costs
nothing: its last position's logits are kept too. This is what vLLM's automatic prefix
caching does, and what the ledger's ``prefix_caching`` mode charges. The ledger charges per
request as if nothing were evicted: size the cache (``prefix_cache_tokens``) for the paths of
the requests in flight, or the engine recomputes what it evicted without charging it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedPrompt:
    """One prompt's keys and values per layer (``[heads, tokens, head_dim]``) and the logits
    its last token predicts."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    logits: torch.Tensor

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


class PrefixCache:
    """Prompts' KV by token ids, least recently used evicted past ``max_tokens`` tokens."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()
        self._lengths: dict[int, int] = {}  # prompt length -> entries of that length

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: list[int]) -> tuple[int, CachedPrompt | None]:
        """The longest cached prompt that ``ids`` starts with (itself included), and its length."""
        for length in sorted(self._lengths, reverse=True):
            if length > len(ids):
                continue
            entry = self._entries.get(tuple(ids[:length]))
            if entry is not None:
                self._entries.move_to_end(tuple(ids[:length]))
                return length, entry
        return 0, None

    def put(self, ids: list[int], entry: CachedPrompt) -> None:
        key = tuple(ids)
        if key in self._entries or len(key) > self.max_tokens:
            return
        self._entries[key] = entry
        self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self.tokens -= len(old)
            self._lengths[len(old)] -= 1
            if not self._lengths[len(old)]:
                del self._lengths[len(old)]


class PieceCache:
    """A step checker's scores by input sequence (PRM format ``local``), LRU past ``max_tokens``.

    A ``local`` PRM reads each step after the line before it, so when tree search re-scores a
    path each round, every step but the new one is a sequence read before: its scores are
    exact to reuse, and only new steps are computed (``ComputeLedger`` charges them so).
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple[int, ...], list[float]] = OrderedDict()

    def get(self, ids: list[int]) -> list[float] | None:
        key = tuple(ids)
        scores = self._entries.get(key)
        if scores is not None:
            self._entries.move_to_end(key)
        return scores

    def put(self, ids: list[int], scores: list[float]) -> None:
        key = tuple(ids)
        if key in self._entries or len(key) > self.max_tokens:
            return
        self._entries[key] = scores
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self.tokens -= len(old)
