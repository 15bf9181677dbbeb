"""its_hub 1.2.0 (Red Hat's inference-time scaling library) on nexus_ray's engines.

its_hub's algorithms talk to a chat model and a reward model through its abstract classes;
these adapters answer them with a nexus_ray ``PolicyEngine`` and ``RewardEngine`` and charge
every call to a ``ComputeLedger`` by the rules nexus_ray's own strategies are charged by
(``search/full_samples.py``, ``search/paths.py``), so both libraries are priced identically.
One set of adapters per problem: the ledger is that problem's.

How its_hub's calls map onto the engines:

- a conversation ``[user: problem]``, optionally followed by ``[assistant: text so far]``
  (StepGeneration's partial solution), is the task format's prompt for the problem with the
  assistant's text continued, as an OpenAI-style server continuing the final message does;
- a stop string ends a sample and is dropped from the text unless
  ``include_stop_str_in_output`` (OpenAI's convention; nexus_ray's engines keep it);
- its process reward interface scores whole (partial) responses, one number each, the way
  BeamSearch and ParticleGibbs call it: the PRM scores every step of a response and the
  scores aggregate into one (the last step's by default, nexus_ray's default too); BestOfN
  wants an outcome reward model, which is the same PRM read the same way.
"""

from __future__ import annotations

import asyncio
import itertools

from its_hub.api import (
    AbstractLanguageModel,
    AbstractOutcomeRewardModel,
    AbstractProcessRewardModel,
    ChatMessage,
    ChatMessages,
    GenerationUsage,
)

from nexus_ray.engines.base import Completion, GenerationParams, PolicyEngine, RewardEngine, ScoreRequest
from nexus_ray.search.aggregate import StepAggregation, aggregate_steps
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.tasks.format import TaskFormat

Problem = str | tuple[tuple[str, str], ...]


def problem_of(fmt: TaskFormat, turns: list[ChatMessage]) -> Problem:
    """The problem a conversation without its assistant turn stands for: the user's text, or
    under a chat format the (role, content) turns for its template."""
    if fmt.chat is not None:
        return tuple((t.role, t.extract_text_content()) for t in turns)
    if len(turns) != 1 or turns[0].role != "user":
        raise ValueError(f"the {fmt.name} format takes one user turn, got {[t.role for t in turns]}")
    return turns[0].extract_text_content()


def split_reply(turns: list[ChatMessage]) -> tuple[list[ChatMessage], str]:
    """The question's turns and the assistant's text so far (empty if the last turn is not one)."""
    if turns and turns[-1].role == "assistant":
        return turns[:-1], turns[-1].extract_text_content()
    return turns, ""


def reply_text(c: Completion, keep_stop: bool) -> str:
    """A sample's text as an OpenAI-style server returns it: without the stop string that ended it."""
    if keep_stop or c.stop_reason is None or not c.text.endswith(c.stop_reason):
        return c.text
    return c.text[: -len(c.stop_reason)]


class ItsHubPolicy(AbstractLanguageModel):
    """A nexus_ray policy engine as its_hub's language model; every call charged to ``ledger``.

    ``max_tokens`` caps a sample when its_hub names no cap (its StepGeneration with a step
    token and SelfConsistency never do); ``temperature`` is used when it names none. Each call
    samples with a fresh seed from ``seed`` on, so repeated calls for one prompt differ and a
    run is reproducible."""

    def __init__(
        self,
        engine: PolicyEngine,
        fmt: TaskFormat,
        ledger: ComputeLedger,
        max_tokens: int = 256,
        temperature: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        self.engine = engine
        self.fmt = fmt
        self.ledger = ledger
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._seeds = None if seed is None else itertools.count(seed)

    def render(self, turns: list[ChatMessage]) -> str:
        """The engine's prompt for a conversation: the format's prompt, then the reply so far."""
        question, reply = split_reply(turns)
        return self.fmt.prompt(problem_of(self.fmt, question)) + reply

    async def agenerate(
        self,
        messages: list[ChatMessage] | list[list[ChatMessage]],
        stop: str | list[str] | None = None,
        **kwargs,
    ) -> dict | list[dict]:
        """One reply per conversation of a batch in one engine call (per temperature, when
        StepGeneration's temperature switch gives each its own), or the reply to one."""
        if messages and isinstance(messages[0], ChatMessage):
            [reply] = await self._generate([messages], stop, **kwargs)
            return reply
        temperature = kwargs.pop("temperature", None)
        if not isinstance(temperature, list):
            return await self._generate(messages, stop, temperature=temperature, **kwargs)
        calls = [self._generate([m], stop, temperature=t, **kwargs) for m, t in zip(messages, temperature)]
        return [reply for [reply] in await asyncio.gather(*calls)]

    async def agenerate_single(
        self, messages: list[ChatMessage], stop: str | list[str] | None = None, **kwargs
    ) -> dict:
        [reply] = await self._generate([messages], stop, **kwargs)
        return reply

    async def _generate(
        self,
        conversations: list[list[ChatMessage]],
        stop: str | list[str] | None,
        max_completion_tokens: int | None = None,
        temperature: float | None = None,
        include_stop_str_in_output: bool | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        response_format: dict | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        usage_accumulator: GenerationUsage | None = None,
    ) -> list[dict]:
        """The keywords are those its orchestrator and StepGeneration pass; tools and response
        formats have no meaning for a nexus_ray engine and are refused."""
        if tools or response_format is not None:
            raise ValueError("nexus_ray's engines take no tools or response formats")
        params = GenerationParams(
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=max_completion_tokens or self.max_tokens,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=None if self._seeds is None else next(self._seeds),
        )
        results = await self.engine.generate([self.render(c) for c in conversations], params)
        self.ledger.charge_generation(results)
        replies = []
        for r in results:
            if usage_accumulator is not None:
                usage_accumulator.add(r.prompt_tokens, r.completion_tokens)
            replies.append(
                {
                    "role": "assistant",
                    "content": reply_text(r.completions[0], bool(include_stop_str_in_output)),
                }
            )
        return replies


class ItsHubPRM(AbstractProcessRewardModel):
    """A nexus_ray PRM as its_hub's process reward model: each (partial) response's steps are
    scored and ``aggregation`` makes them one number; every call charged to ``ledger``."""

    def __init__(
        self,
        engine: RewardEngine,
        fmt: TaskFormat,
        ledger: ComputeLedger,
        aggregation: StepAggregation = "last",
    ) -> None:
        self.engine = engine
        self.fmt = fmt
        self.ledger = ledger
        self.aggregation = aggregation

    async def ascore(
        self, prompt_or_messages: str | list[ChatMessage] | ChatMessages, steps: list[str]
    ) -> list[float]:
        """``steps``: its_hub's name; BeamSearch and ParticleGibbs pass one whole (partial)
        response per element, steps joined by the step token, and want one score for each."""
        question = ChatMessages.from_prompt_or_messages(prompt_or_messages).to_chat_messages()
        return await self.score_replies([(question, response) for response in steps])

    def score(
        self, prompt_or_messages: str | list[ChatMessage] | ChatMessages, steps: list[str]
    ) -> list[float]:
        return asyncio.run(self.ascore(prompt_or_messages, steps))

    async def score_replies(self, replies: list[tuple[list[ChatMessage], str]]) -> list[float]:
        """One aggregated score per (question turns, response), all in one PRM call."""
        requests = []
        for question, response in replies:
            problem = problem_of(self.fmt, question)
            messages = self.fmt.messages(problem) if self.fmt.chat is not None else ()
            requests.append(ScoreRequest(self.fmt.prompt(problem), self.fmt.steps(response), messages))
        results = await self.engine.score(requests)
        self.ledger.charge_scoring(results, requests)
        return [aggregate_steps(r.scores, self.aggregation) for r in results]


class ItsHubOutcomeRM(AbstractOutcomeRewardModel):
    """The same PRM as its_hub's outcome reward model (BestOfN takes one): a conversation's
    last turn is the response, read step by step like ``ItsHubPRM`` reads it."""

    def __init__(self, prm: ItsHubPRM) -> None:
        self.prm = prm

    async def ascore(
        self, messages: list[ChatMessage] | list[list[ChatMessage]], orchestrator=None, **kwargs
    ) -> list[float] | float:
        single = bool(messages) and isinstance(messages[0], ChatMessage)
        conversations = [messages] if single else messages
        scores = await self.prm.score_replies([split_reply(c) for c in conversations])
        return scores[0] if single else scores

    def score(self, messages: list[ChatMessage] | list[list[ChatMessage]], **kwargs) -> list[float] | float:
        return asyncio.run(self.ascore(messages))
