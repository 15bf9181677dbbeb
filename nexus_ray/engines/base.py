"""The two engine protocols every backend implements, and the data they exchange.

Search strategies are written against these protocols only, so the same code runs on the
transformers engine, the vLLM engine, or a remote Ray worker that proxies either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "confidence"]  # confidence: cut by a ``ConfidenceStop``


def token_confidence(top_logprobs: tuple[float, ...] | list[float]) -> float:
    """DeepConf's token confidence: minus the mean of the k largest logprobs at a position;
    high where the model's distribution is sharp."""
    return -sum(top_logprobs) / len(top_logprobs)


def window_mean(values: list[float], start: int, window: int) -> float:
    """Mean of ``values[start:start + window]``, summed in one fixed order so that the engines
    and the strategies get bit-identical group confidences."""
    return sum(values[start : start + window]) / window


@dataclass(frozen=True)
class ConfidenceStop:
    """DeepConf's online early stop: a sample ends the moment the mean confidence of its last
    ``window`` tokens (each over its ``top_k`` largest logprobs) falls below ``threshold``.
    The engine checks it token by token, so the cut is exact and nothing past it is generated."""

    threshold: float
    window: int = 16
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.window < 1 or self.top_k < 1:
            raise ValueError(f"window and top_k must be >= 1, got {self.window} and {self.top_k}")

    def stops(self, confidences: list[float]) -> bool:
        """Whether a sample whose token confidences so far are ``confidences`` ends here (only
        once a whole window exists)."""
        if len(confidences) < self.window:
            return False
        return window_mean(confidences, len(confidences) - self.window, self.window) < self.threshold


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. ``stop`` ends a sample after the stop string (which is kept in the text).

    ``seed`` makes sampling reproducible: prompt i of a call samples with ``prompt_seed(seed,
    i)`` and its sample j with that plus j (vLLM's convention for n > 1), so identical prompts
    in one call (duplicated beams, resampled particles) still draw different samples, and a
    result does not depend on what else the engine batches with it.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # k > 0: each completion carries its k largest logprobs per token
    confidence_stop: ConfidenceStop | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")


SEED_STRIDE = 100_003


def prompt_seed(seed: int | None, prompt_index: int) -> int | None:
    return None if seed is None else seed + SEED_STRIDE * prompt_index


@dataclass(frozen=True)
class Completion:
    """One sample: its text, token ids, per-token logprobs (if asked) and why it ended;
    ``top_logprobs``: per token, the k largest logprobs at its position (raw model, largest
    first), when ``GenerationParams.top_logprobs`` asked for them."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    logprobs: tuple[float, ...] | None = None
    stop_reason: str | None = None  # the stop string that ended it; None for EOS or length
    top_logprobs: tuple[tuple[float, ...], ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class GenerationResult:
    """All samples for one prompt, with the exact number of prompt tokens the engine saw;
    ``merge_probe_tokens``: policy tokens a test-time merge read before generating (T3's
    coefficients: the base and each expert over the prompt; ``engines/t3.py``)."""

    prompt: str
    prompt_tokens: int
    completions: tuple[Completion, ...] = field(default=())
    merge_probe_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.completions)


@dataclass(frozen=True)
class ScoreRequest:
    """A (partial) solution to score: the prompt and its steps, without delimiters.

    ``messages`` are the conversation's (role, content) turns before the answer, for PRMs
    that read the question through their own chat template (format ``qwen-prm``).
    """

    prompt: str
    steps: tuple[str, ...]
    messages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ScoreResult:
    """Per-step scores in [0, 1] (P(still correct after the step)) and tokens the PRM read;
    ``step_tokens``: how many of them each step added (the prompt's go to the first step, a
    template's tail to the last), so a ledger can charge a step once per request."""

    scores: tuple[float, ...]
    tokens: int
    step_tokens: tuple[int, ...] = ()


@runtime_checkable
class PolicyEngine(Protocol):
    """A causal LM that samples completions or single steps for a batch of prompts."""

    model_name: str
    num_parameters: int

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        """One result per prompt, each with ``params.n`` completions."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the engine charges for ``text`` as a prompt (special tokens included)."""
        ...

    def shutdown(self) -> None:
        """Release the model (vLLM: stop its engine process); the engine is unusable after."""
        ...


@runtime_checkable
class RewardEngine(Protocol):
    """A process reward model that scores every step of a batch of partial solutions."""

    model_name: str
    num_parameters: int

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]: ...

    def shutdown(self) -> None: ...
