"""its_hub's algorithms on nexus_ray's engines through nexus_ray.peers.itshub: they run, their
answers parse, and the ledger charges exactly what the engines computed (the full comparison is
benchmarks/peers.py)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("its_hub", reason="its-hub==1.2.0 is not installed (the Makefile's setup installs it)")

from its_hub import BestOfN, SelfConsistency
from its_hub.api import ChatMessage
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.particle_gibbs import ParticleGibbs
from its_hub.core.lms.step_generation import StepGeneration

from nexus_ray.engines.base import GenerationParams, GenerationResult, ScoreRequest, ScoreResult
from nexus_ray.peers.itshub import ItsHubOutcomeRM, ItsHubPolicy, ItsHubPRM
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.tasks import arith, datasets
from nexus_ray.tasks.format import ARITH

EXAMPLES = [e for e in datasets.load("arith-test") if e.level in (1, 3, 5)][::100][:3]


class Counting:
    """An engine that counts what it computed: prompt, generated and PRM-read tokens."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.num_parameters = engine.num_parameters
        self.prompt_tokens = self.generated_tokens = self.prm_tokens = 0

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        results = await self.engine.generate(prompts, params)
        self.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.generated_tokens += sum(r.completion_tokens for r in results)
        return results

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        results = await self.engine.score(requests)
        self.prm_tokens += sum(r.tokens for r in results)
        return results


def algorithm(name: str, prm: ItsHubPRM):
    sg = StepGeneration(max_steps=12, step_token="\n", stop_token=arith.ANSWER_PREFIX, temperature=0.8)
    return {
        "self_consistency": lambda: SelfConsistency(ARITH.answer),
        "best_of_n": lambda: BestOfN(ItsHubOutcomeRM(prm)),
        "beam_search": lambda: BeamSearch(sg, prm, beam_width=2),
        "particle_filtering": lambda: ParticleGibbs(sg, prm, num_iterations=1),
    }[name]()


@pytest.mark.parametrize("name", ["self_consistency", "best_of_n", "beam_search", "particle_filtering"])
def test_its_hub_algorithms_run_through_the_adapters(name, policy_engine, prm_engine):
    """Answers parse, and the ledgers (no prefix caching here) charged exactly the tokens the
    engines computed."""
    policy, prm = Counting(policy_engine), Counting(prm_engine)
    charged = ComputeLedger(policy.num_parameters, prm.num_parameters)
    for e in EXAMPLES:
        ledger = ComputeLedger(policy.num_parameters, prm.num_parameters)
        lm = ItsHubPolicy(policy, ARITH, ledger, seed=3)
        reply = asyncio.run(algorithm(name, ItsHubPRM(prm, ARITH, ledger)).ainfer(lm, e.problem, 4))
        answer = ARITH.answer(reply["content"])
        assert answer is not None and answer.lstrip("-").isdigit()
        charged.policy_prefill_tokens += ledger.policy_prefill_tokens
        charged.policy_generated_tokens += ledger.policy_generated_tokens
        charged.prm_tokens += ledger.prm_tokens
    assert charged.policy_prefill_tokens == policy.prompt_tokens > 0
    assert charged.policy_generated_tokens == policy.generated_tokens > 0
    assert charged.prm_tokens == prm.prm_tokens
    assert (prm.prm_tokens > 0) == (name != "self_consistency")


def test_self_consistency_draws_what_majority_draws_and_is_charged_alike(policy_engine, prm_engine):
    """Seeded the same, its_hub's N single-sample calls draw nexus_ray's N samples of one call:
    the same texts and generated tokens (the prefill differs: N calls without a prefix cache)."""
    e = EXAMPLES[1]
    ledger = ComputeLedger(policy_engine.num_parameters)
    result = asyncio.run(
        SelfConsistency(ARITH.answer).ainfer(
            ItsHubPolicy(policy_engine, ARITH, ledger, seed=7), e.problem, 4, return_response_only=False
        )
    )
    ctx = SearchContext.for_problem(policy_engine, prm_engine, ARITH, e.problem, None, 7)
    ours = asyncio.run(registry.run("majority", ctx, 4))
    assert [r["content"] for r in result.responses] == [c.text for c in ours.candidates]
    assert ledger.policy_generated_tokens == ours.ledger.policy_generated_tokens
    assert result.usage.completion_tokens == ledger.policy_generated_tokens  # its own count agrees
    assert ledger.policy_prefill_tokens == 4 * ours.ledger.policy_prefill_tokens


def test_stop_strings_are_dropped_unless_asked_for(policy_engine):
    ledger = ComputeLedger(policy_engine.num_parameters)
    lm = ItsHubPolicy(policy_engine, ARITH, ledger, max_tokens=64, temperature=0.0)
    turns = [ChatMessage(role="user", content=EXAMPLES[2].problem)]
    plain = asyncio.run(lm.agenerate(turns, stop="\n"))
    kept = asyncio.run(lm.agenerate_single(turns, stop="\n", include_stop_str_in_output=True))
    assert kept["content"] == plain["content"] + "\n" and "\n" not in plain["content"]
    continued = [*turns, ChatMessage(role="assistant", content=plain["content"] + "\n")]
    assert lm.render(continued) == ARITH.prompt(EXAMPLES[2].problem) + plain["content"] + "\n"


def test_the_prm_adapter_scores_a_response_by_its_last_step(prm_engine):
    e = EXAMPLES[0]
    solution = arith.format_solution(arith.solve(e.problem))
    ledger = ComputeLedger(1, prm_engine.num_parameters)
    [score] = asyncio.run(ItsHubPRM(prm_engine, ARITH, ledger).ascore(e.problem, [solution]))
    [direct] = asyncio.run(prm_engine.score([ScoreRequest(ARITH.prompt(e.problem), ARITH.steps(solution))]))
    assert score == direct.scores[-1] and ledger.prm_tokens == direct.tokens
