"""Greedy decoding: one temperature-0 sample, the cheapest answer there is."""

from __future__ import annotations

from nexus_ray.engines.base import GenerationParams, PolicyEngine
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.result import Candidate, SearchResult
from nexus_ray.tasks.format import TaskFormat


async def greedy(
    policy: PolicyEngine, prompt: str, fmt: TaskFormat, max_tokens: int = 256
) -> SearchResult:
    ledger = ComputeLedger(policy.num_parameters)
    [result] = await policy.generate([prompt], GenerationParams(temperature=0.0, max_tokens=max_tokens))
    ledger.charge_generation([result])
    ledger.generations += 1
    text = result.completions[0].text
    answer = fmt.answer(text)
    return SearchResult("greedy", answer, text, ledger, [Candidate(text, answer)])
