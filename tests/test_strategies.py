"""Every strategy on seeded simulated engines with known error rates (no Ray, no models)."""

import asyncio
from math import comb

import pytest
from sim import SimPolicy, SimPRM

from nexus_ray.search import registry
from nexus_ray.search.adaptive import prob_leader_is_majority
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import Budget
from nexus_ray.search.particles import resampling_weights
from nexus_ray.tasks import arith
from nexus_ray.tasks.format import ARITH

PROBLEMS = [p for p in arith.generate_set(60, seed=4) if p.level >= 3]
ALL = [
    "greedy",
    "best_of_n",
    "majority",
    "weighted",
    "adaptive",
    "deepconf",
    "deepconf_online",
    "beam",
    "dvts",
    "lookahead",
    "mcts",
    "particles",
]


def run(name, problem, policy, prm, generations=16, budget=None, seed=0, overrides=None):
    ctx = SearchContext(policy, prm, ARITH.prompt(problem.expression), ARITH, budget, seed)
    return asyncio.run(registry.run(name, ctx, None if name == "greedy" else generations, overrides))


def test_every_strategy_is_registered_with_typed_params():
    assert set(ALL) <= set(registry.names())
    with pytest.raises(ValueError, match="unknown strategy"):
        registry.get("nope")
    with pytest.raises(ValueError, match="n a multiple of m"):
        registry.build_params("beam", None, {"n": 6, "m": 4})
    with pytest.raises(Exception, match="extra"):
        registry.build_params("beam", None, {"widht": 4})


@pytest.mark.parametrize("name", ALL)
def test_ledger_adds_up_exactly(name):
    policy, prm = SimPolicy(0.3), SimPRM()
    result = run(name, PROBLEMS[0], policy, prm)
    assert result.ledger.policy_generated_tokens == policy.generated > 0
    assert result.ledger.policy_prefill_tokens == policy.prefilled
    assert result.ledger.prm_tokens == prm.scored
    expected = (policy.generated + policy.prefilled) + prm.scored * prm.num_parameters / policy.num_parameters
    assert result.ledger.policy_token_equivalents == pytest.approx(expected)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("cap", [40, 300, 2000])
def test_budget_is_never_exceeded(name, cap):
    for p in PROBLEMS[:4]:
        result = run(name, p, SimPolicy(0.3), SimPRM(), generations=16, budget=Budget(cap))
        assert result.ledger.policy_token_equivalents <= cap
    tiny = run(name, PROBLEMS[0], SimPolicy(0.3), SimPRM(), generations=16, budget=Budget(5))
    assert tiny.truncated and tiny.ledger.policy_token_equivalents <= 5


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_a_seed(name):
    a = run(name, PROBLEMS[1], SimPolicy(0.3), SimPRM(), seed=3)
    b = run(name, PROBLEMS[1], SimPolicy(0.3), SimPRM(), seed=3)
    assert (a.answer, a.solution, a.ledger.to_dict()) == (b.answer, b.solution, b.ledger.to_dict())


class CoinPolicy(SimPolicy):
    """Answers right with probability q, else one fixed wrong answer: a binomial vote."""

    def __init__(self, q):
        super().__init__(0.0)
        self.q = q

    def _sample(self, prompt, params, rng):
        from nexus_ray.engines.base import Completion

        expression = prompt.split("\n")[0][3:]
        gold = arith.evaluate(expression)
        answer = gold if rng.random() < self.q else gold + 1
        text = f"{answer}\nA: {answer}\n"
        return Completion(text, tuple(range(len(text))), "stop")


def test_majority_vote_matches_the_binomial_formula():
    q, n = 0.6, 5
    expected = sum(comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(3, n + 1))
    problems = arith.generate_set(400, seed=9)
    wins = sum(
        run("majority", p, CoinPolicy(q), None, generations=n, seed=i).answer == p.answer
        for i, p in enumerate(problems)
    )
    assert wins / len(problems) == pytest.approx(expected, abs=0.07)


@pytest.mark.parametrize("name", ["beam", "dvts", "lookahead", "particles", "mcts", "weighted"])
def test_a_perfect_prm_fixes_what_the_policy_can_reach(name):
    policy = SimPolicy(0.3)
    single = sum(run("greedy", p, SimPolicy(0.3), None).answer == p.answer for p in PROBLEMS) / len(PROBLEMS)
    solved = sum(run(name, p, policy, SimPRM(), generations=32).answer == p.answer for p in PROBLEMS) / len(
        PROBLEMS
    )
    assert solved >= 0.95 and solved > single
    if name == "beam":
        assert solved == 1.0


def test_tree_search_batches_a_round_into_one_engine_call():
    policy, prm = SimPolicy(0.3), SimPRM()
    result = run("beam", PROBLEMS[2], policy, prm, generations=16)
    rounds = len(arith.solve(PROBLEMS[2].expression)) + 1
    assert policy.calls <= rounds + 1 and prm.calls == policy.calls
    assert result.ledger.policy_generated_tokens > 0  # the search-and-learn bug: zero tokens for beam


def test_adaptive_stops_early_on_easy_prompts_and_spends_less():
    easy = [p for p in arith.generate_set(40, seed=2) if p.level == 1]
    spent_adaptive = spent_fixed = 0.0
    for p in easy:
        a = run("adaptive", p, SimPolicy(0.05), None, generations=32, overrides={"n": 32})
        f = run("majority", p, SimPolicy(0.05), None, generations=32)
        assert a.answer == f.answer
        spent_adaptive += a.ledger.policy_token_equivalents
        spent_fixed += f.ledger.policy_token_equivalents
    assert spent_adaptive < 0.5 * spent_fixed


def test_beta_stopping_rule_is_exact():
    assert prob_leader_is_majority(0, 0) == pytest.approx(0.5)
    assert prob_leader_is_majority(4, 0) == pytest.approx(1 - 0.5**5)
    assert prob_leader_is_majority(3, 3) == pytest.approx(0.5)


def test_particle_weights_are_a_softmax_of_logits():
    w = resampling_weights([0.5, 0.75], 1.0)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert sum(resampling_weights([0.1, 0.2, 0.9], 0.5)) == pytest.approx(1.0)


def test_mcts_surprisal_bonus_changes_the_search():
    a = run("mcts", PROBLEMS[3], SimPolicy(0.3), SimPRM(noise=0.2), overrides={"surprisal_bonus": 0.0})
    b = run("mcts", PROBLEMS[3], SimPolicy(0.3), SimPRM(noise=0.2), overrides={"surprisal_bonus": 5.0})
    assert a.ledger.policy_generated_tokens > 0 and b.ledger.policy_generated_tokens > 0


def test_strategies_needing_a_prm_say_so():
    with pytest.raises(ValueError, match="needs a PRM"):
        run("beam", PROBLEMS[0], SimPolicy(), None)


def test_mcts_with_few_simulations_still_answers():
    policy = SimPolicy(0.0)
    result = run("mcts", PROBLEMS[0], policy, SimPRM(), generations=2)
    assert result.answer == PROBLEMS[0].answer
    assert result.ledger.policy_generated_tokens == policy.generated


def test_prefix_caching_charges_each_prefix_once():
    from nexus_ray.engines.base import GenerationResult
    from nexus_ray.search.ledger import ComputeLedger

    ledger = ComputeLedger(10, prefix_caching=True)
    ledger.charge_generation([GenerationResult("Q: 1+2\n", 8)])
    ledger.charge_generation([GenerationResult("Q: 1+2\n3\n", 10), GenerationResult("Q: 1+2\n", 8)])
    assert ledger.policy_prefill_tokens == 8 + 2 + 0
    uncached, cached = SimPolicy(0.3), SimPolicy(0.3)
    a = run("beam", PROBLEMS[0], uncached, SimPRM())
    ctx = SearchContext(
        cached, SimPRM(), ARITH.prompt(PROBLEMS[0].expression), ARITH, None, 0, prefix_caching=True
    )
    b = asyncio.run(registry.run("beam", ctx, 16))
    assert b.answer == a.answer and b.ledger.policy_generated_tokens == a.ledger.policy_generated_tokens
    assert b.ledger.policy_prefill_tokens < a.ledger.policy_prefill_tokens
