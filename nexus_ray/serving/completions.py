"""OpenAI's chat-completion shapes from a solve: the whole response, or server-sent events.

A solve returns one answer and the candidates the search weighed; ``n`` > 1 returns the n best
*distinct* answers, ranked by the search's own measure (summed PRM scores when the candidates
were scored, votes otherwise), the solve's answer first. When the search found fewer distinct
answers than ``n``, fewer choices come back (never padding). ``usage`` counts what the search
really spent: ``completion_tokens`` are all the policy tokens it generated, of which
``reasoning_tokens`` are those beyond the returned choices (and their end-of-turn tokens);
PRM tokens and the full ledger are in ``nexus``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from nexus_ray.planner.request import Plan
from nexus_ray.search.aggregate import ranked
from nexus_ray.search.result import SearchResult
from nexus_ray.serving.http import Failure
from nexus_ray.serving.schemas import ChatRequest
from nexus_ray.tasks.chat import Message

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Admitted:
    """A request parsed, planned and admitted, not yet run."""

    expression: str  # the problem as parsed
    asked: str | tuple[Message, ...]  # what the prompt is built from: the problem, or the turns
    plan: Plan
    key: str | None  # the caller's API key, which admission settles against


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop", or "length" when the solution hit the token cap or the budget
    tokens: int  # the text's tokens, counted once for the cap and for usage


def _error_event(kind: str, message: str) -> str:
    return f"data: {json.dumps({'error': {'type': kind, 'message': message}})}\n\n"


class ChatCompletion:
    """Formats one chat request's solve (``count_tokens``: a returned text's tokens)."""

    def __init__(self, body: ChatRequest, model_id: str, count_tokens: Callable[[str], int]) -> None:
        self.body, self.model_id, self.count_tokens = body, model_id, count_tokens
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.not_applied = [k for k in ("temperature", "top_p") if getattr(body, k) is not None]

    def choices(self, result: SearchResult) -> list[Choice]:
        """The solve's answer, then the runners-up with other answers, ``n`` at most."""
        texts = [result.solution]
        cands = result.candidates
        if self.body.n > 1 and cands:
            scored = all(c.score is not None for c in cands)
            scores = [c.score or 0.0 for c in cands] if scored else None
            order = ranked([c.answer for c in cands], scores, "weighted" if scored else "majority")
            texts += [cands[i].text for i in order if cands[i].answer not in (None, result.answer)]
        cap = self.body.token_cap
        out = []
        for i, text in enumerate(texts[: self.body.n]):
            tokens = self.count_tokens(text)
            hit_cap = cap is not None and tokens >= cap
            out.append(Choice(text, "length" if hit_cap or (i == 0 and result.truncated) else "stop", tokens))
        return out

    def usage(self, ledger: dict, choices: list[Choice]) -> dict:
        generated = ledger["policy_generated_tokens"]
        # a choice that ended by itself also generated its end-of-turn token
        returned = sum(c.tokens + (c.finish_reason == "stop") for c in choices)
        return {
            "prompt_tokens": ledger["policy_prefill_tokens"],
            "completion_tokens": generated,
            "total_tokens": ledger["policy_prefill_tokens"] + generated,
            "completion_tokens_details": {"reasoning_tokens": max(0, generated - returned)},
        }

    def nexus(self, solved: dict) -> dict:
        out = {k: v for k, v in solved.items() if k != "solution"}
        if self.not_applied:
            out["not_applied"] = self.not_applied  # the plan decides how to sample
        return out

    def response(self, solved: dict, result: SearchResult) -> dict:
        choices = self.choices(result)
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": self.usage(solved["ledger"], choices),
            "nexus": self.nexus(solved),
        }

    async def events(
        self, plan: Plan, solve: Awaitable[tuple[dict, SearchResult]], delimiter: str = "\n\n"
    ) -> AsyncIterator[str]:
        """Server-sent events: a first chunk with the plan at once, each choice's text step by step
        once the search is done, a last chunk per choice with its finish_reason, the usage chunk
        (``stream_options.include_usage``), ``[DONE]``. A failure after the first chunk is an
        ``error`` event, which the OpenAI client raises."""
        yield self._event([self._delta(0, {"role": "assistant", "content": ""})], {"plan": plan.to_dict()})
        try:
            solved, result = await solve
        except Failure as failure:
            yield _error_event(failure.kind, failure.message)
            return
        except Exception as err:
            log.exception("unexpected error in a streamed solve")
            yield _error_event("internal_error", f"internal error ({type(err).__name__})")
            return
        choices = self.choices(result)
        for i, c in enumerate(choices):
            if i > 0:
                yield self._event([self._delta(i, {"role": "assistant", "content": ""})])
            pieces = c.text.split(delimiter)
            for k, piece in enumerate(pieces):
                text = piece + (delimiter if k < len(pieces) - 1 else "")
                if text:
                    yield self._event([self._delta(i, {"content": text})])
        finals = [self._delta(i, {}, c.finish_reason) for i, c in enumerate(choices)]
        yield self._event(finals, self.nexus(solved))
        options = self.body.stream_options
        if options is not None and options.include_usage:
            yield self._event([], usage=self.usage(solved["ledger"], choices))
        yield "data: [DONE]\n\n"

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id}

    @staticmethod
    def _delta(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "finish_reason": finish_reason}

    def _event(self, choices: list[dict], nexus: dict | None = None, usage: dict | None = None) -> str:
        chunk = {**self._head("chat.completion.chunk"), "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        if nexus is not None:
            chunk["nexus"] = nexus
        return f"data: {json.dumps(chunk)}\n\n"
