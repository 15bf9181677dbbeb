"""Seeded simulated engines over the arithmetic task, with known error rates.

``SimPolicy`` writes the canonical next step, except that with probability ``step_error`` it
writes a wrong one (the right value plus a small offset); ``SimPRM`` returns 1.0 for a step
that keeps the solution correct and 0.0 otherwise (``noise`` flips it). Both count every token
they handle, so tests can check that a strategy's ledger adds up exactly. One token per
character plus one BOS token per prompt, like the zoo's tokenizer.
"""

from __future__ import annotations

import random

from nexus_ray.engines.base import Completion, GenerationParams, GenerationResult, ScoreResult, prompt_seed
from nexus_ray.tasks import arith


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

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        self.calls += 1
        results = []
        for i, prompt in enumerate(prompts):
            base = prompt_seed(params.seed, i)
            comps = []
            for j in range(params.n):
                rng = random.Random(f"{base}-{j}-{prompt}")
                c = self._sample(prompt, params, rng)
                if c.num_tokens > params.max_tokens:  # like a real engine: cut at max_tokens
                    t = c.text[: params.max_tokens]
                    c = Completion(
                        t, tuple(range(len(t))), "length", c.logprobs and c.logprobs[: len(t)], None
                    )
                if c.logprobs is None and params.logprobs:
                    c = Completion(
                        c.text, c.token_ids, c.finish_reason, tuple([-0.5] * len(c.token_ids)), c.stop_reason
                    )
                comps.append(c)
            r = GenerationResult(prompt, self.count_tokens(prompt), tuple(comps))
            self.prefilled += r.prompt_tokens
            self.generated += r.completion_tokens
            results.append(r)
        return results


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
