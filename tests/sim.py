"""Seeded simulated engines over the arithmetic task, with known error rates.

``SimPolicy`` writes the canonical next step, except that with probability ``step_error`` it
writes a wrong one (the right value plus a small offset); ``SimPRM`` returns 1.0 for a step
that keeps the solution correct and 0.0 otherwise (``noise`` flips it). Both count every token
they handle, so tests can check that a strategy's ledger adds up exactly. One token per
character plus one BOS token per prompt, like the zoo's tokenizer.

Asked for ``top_logprobs``, ``SimPolicy`` gives every token of a line that reduces the line
before it the confidence ``SURE`` and every token of a wrong line ``UNSURE`` (k logprobs all
equal to minus it), and it honours a ``ConfidenceStop`` as the transformers engine does: the
sample ends at the first token whose window falls below the threshold (the token that ended a
sample, its EOS or stop string, is not checked).
"""

from __future__ import annotations

import random
from dataclasses import replace

from nexus_ray.engines.base import (
    Completion,
    GenerationParams,
    GenerationResult,
    ScoreResult,
    prompt_seed,
    token_confidence,
)
from nexus_ray.tasks import arith

SURE, UNSURE = 3.0, 1.0  # token confidences of a right and of a wrong line


class SimPolicy:
    model_name = "sim-policy"
    num_parameters = 1000

    def __init__(self, step_error: float = 0.2) -> None:
        self.step_error = step_error
        self.generated = 0
        self.prefilled = 0
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text) + 1

    def shutdown(self) -> None:
        pass

    def _next_line(self, lines: list[str], rng: random.Random) -> str:
        last = lines[-1]
        try:
            nxt = arith.reduce_once(last)
        except ValueError:  # a single number (or garbage): state the answer
            return f"{arith.ANSWER_PREFIX}{last}"
        if rng.random() < self.step_error:
            tokens = arith.tokenize(nxt)
            tokens[0] = int(tokens[0]) + rng.choice([-3, -2, -1, 1, 2, 3])
            nxt = arith.render(tokens)
        return nxt

    def _sample(self, prompt: str, params: GenerationParams, rng: random.Random) -> Completion:
        lines = [prompt.split("\n")[0][len(arith.QUESTION_PREFIX) :]] + [
            l for l in prompt.split("\n")[1:] if l
        ]
        out = ""
        while True:
            if lines[-1].startswith(arith.ANSWER_PREFIX):
                return Completion(out, tuple(range(len(out))), "stop", None, None)
            line = self._next_line(lines, rng) + "\n"
            out += line
            lines.append(line.strip())
            if params.stop:
                lp = tuple([-0.5] * len(line)) if params.logprobs else None
                return Completion(out, tuple(range(len(out))), "stop", lp, "\n")

    def token_confidences(self, prompt: str, text: str) -> list[float]:
        """One confidence per token of ``text``: ``SURE`` on a line that reduces the line before
        it (or states an answer), ``UNSURE`` on a wrong one."""
        previous = [l for l in prompt.split("\n") if l][-1].removeprefix(arith.QUESTION_PREFIX)
        out: list[float] = []
        for line in text.splitlines(keepends=True):
            try:
                right = arith.reduce_once(previous) == line.strip()
            except ValueError:  # a number before it: this line states the answer
                right = True
            out += [SURE if right else UNSURE] * len(line)
            previous = line.strip()
        return out

    def _with_confidence(self, prompt: str, c: Completion, params: GenerationParams) -> Completion:
        """``c`` with its top logprobs, cut where ``params.confidence_stop`` ends it."""
        k = max(params.top_logprobs, params.confidence_stop.top_k if params.confidence_stop else 0)
        tops = tuple((-conf,) * k for conf in self.token_confidences(prompt, c.text))
        stop = params.confidence_stop
        if stop is not None:
            checked = len(tops) - 1 if c.finish_reason == "stop" else len(tops)
            confidences = [token_confidence(top[: stop.top_k]) for top in tops]
            cut = next((i + 1 for i in range(checked) if stop.stops(confidences[: i + 1])), None)
            if cut is not None:
                c = _cut(c, cut, "confidence")
                tops = tops[:cut]
        kept = tuple(t[: params.top_logprobs] for t in tops) if params.top_logprobs else None
        return Completion(c.text, c.token_ids, c.finish_reason, c.logprobs, c.stop_reason, kept)

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        self.calls += 1
        results = []
        for i, prompt in enumerate(prompts):
            base = prompt_seed(params.seed, i)
            comps = []
            for j in range(params.n):
                rng = random.Random(f"{base}-{j}-{prompt}")
                c = self._sample(prompt, params, rng)
                if params.top_logprobs or params.confidence_stop:
                    c = self._with_confidence(prompt, c, params)
                if c.num_tokens > params.max_tokens:  # like a real engine: cut at max_tokens
                    c = _cut(c, params.max_tokens, "length")
                if c.logprobs is None and params.logprobs:
                    c = replace(c, logprobs=tuple([-0.5] * len(c.token_ids)))
                comps.append(c)
            r = GenerationResult(prompt, self.count_tokens(prompt), tuple(comps))
            self.prefilled += r.prompt_tokens
            self.generated += r.completion_tokens
            results.append(r)
        return results


def _cut(c: Completion, tokens: int, reason: str) -> Completion:
    """The first ``tokens`` tokens of ``c`` (one per character), ended for ``reason``."""
    return Completion(
        c.text[:tokens],
        c.token_ids[:tokens],
        reason,  # type: ignore[arg-type]
        c.logprobs and c.logprobs[:tokens],
        None,
        c.top_logprobs and c.top_logprobs[:tokens],
    )


class SimPRM:
    model_name = "sim-prm"
    num_parameters = 500

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.rng = random.Random(seed)
        self.scored = 0
        self.calls = 0

    def shutdown(self) -> None:
        pass

    async def score(self, requests):
        self.calls += 1
        out = []
        for req in requests:
            expression = req.prompt.split("\n")[0][len(arith.QUESTION_PREFIX) :]
            text = "".join(s + "\n" for s in req.steps)
            verdict = arith.check(expression, text)
            labels = list(verdict.step_correct)
            if verdict.answer is not None:
                labels.append(verdict.correct)
            scores = tuple(
                float(l) if self.rng.random() >= self.noise else 1.0 - float(l)
                for l in labels[: len(req.steps)]
            )
            tokens = len(req.prompt) + 1 + len(text)
            self.scored += tokens
            out.append(ScoreResult(scores, tokens))
        return out
