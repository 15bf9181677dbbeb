"""DeepConf's confidence measures (Fu et al. 2025, "Deep Think with Confidence"), shared by
its offline and online strategies.

A token's confidence is minus the mean of the k largest logprobs at its position
(``engines.base.token_confidence``): high where the model is sure. A group confidence is the
mean over a sliding window of tokens; a trace's confidence is its lowest group (``lowest``: one
confused stretch condemns it), the mean of its last ``tail`` tokens (``tail``: how sure it was
of its conclusion) or the mean over the whole trace (``mean``). Votes are weighted by it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np

from nexus_ray.engines.base import Completion, token_confidence, window_mean

TraceConfidence = Literal["lowest", "tail", "mean"]


def token_confidences(completion: Completion, top_k: int) -> list[float]:
    """Each token's confidence over its ``top_k`` largest logprobs (the engine returned them)."""
    if completion.top_logprobs is None:
        raise ValueError("DeepConf needs the k largest logprobs per token (GenerationParams.top_logprobs)")
    return [token_confidence(top[:top_k]) for top in completion.top_logprobs]


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """The mean of every ``window`` consecutive tokens, in order (a trace shorter than the window
    is one group of all its tokens; an empty one has none)."""
    values = list(confidences)
    if len(values) <= window:
        return [window_mean(values, 0, len(values))] if values else []
    return [window_mean(values, i, window) for i in range(len(values) - window + 1)]


def trace_confidence(confidences: Sequence[float], mode: TraceConfidence, window: int, tail: int) -> float:
    """One number per trace (0 for an empty trace, which then weighs nothing in a vote)."""
    if not confidences:
        return 0.0
    if mode == "lowest":
        return min(group_confidences(confidences, window))
    if mode == "tail":
        last = list(confidences[-tail:])
        return window_mean(last, 0, len(last))
    if mode == "mean":
        return window_mean(list(confidences), 0, len(confidences))
    raise ValueError(f"unknown trace confidence {mode!r}: use lowest, tail or mean")


def most_confident(confidences: Sequence[float], keep: float) -> list[int]:
    """Indices of the ``keep`` fraction (at least one) of traces with the highest confidence,
    in their original order; ties go to the earlier trace."""
    count = max(1, math.ceil(keep * len(confidences) - 1e-9))
    best = sorted(range(len(confidences)), key=lambda i: (-confidences[i], i))[:count]
    return sorted(best)


def stop_threshold(lowest_groups: Sequence[float], keep: float) -> float:
    """The online stop's threshold: the (100 - 100 keep)th percentile of the warm-up traces'
    lowest group confidences, so about a ``keep`` fraction of such traces would survive it."""
    return float(np.percentile(np.asarray(lowest_groups, dtype=float), 100 * (1 - keep)))


def leader_share(answers: Sequence[str | None], weights: Sequence[float]) -> float:
    """The confidence-weighted vote's leader: its share of all the weight that voted (traces
    without an answer do not vote; 0 when nothing voted)."""
    votes: dict[str, float] = defaultdict(float)
    for answer, weight in zip(answers, weights):
        if answer is not None:
            votes[answer] += weight
    total = sum(votes.values())
    return max(votes.values()) / total if total > 0 else 0.0
