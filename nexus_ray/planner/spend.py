"""What a request may spend: its hard ceiling, and the pacing that holds the planner's mean.

**The ceiling.** A request's budget in policy-token equivalents (the ledger's unit) is what
its plan may spend at most: its generations, each at the worst case of one generation of its
prompt as the plan produces it. A generation is one solution of up to ``max_tokens``:

- drawn in one call (best-of-N, majority, weighted, adaptive, greedy, the table's plans):
  prefill the prompt, sample ``max_tokens``, and, when the plan reads the PRM, have it read
  the prompt and the whole sample (``search.ledger.worst_case_round`` with one sample);
- built step by step (the tree searches: beam, DVTS, lookahead, MCTS, particles, registered
  ``stepwise``): ``max_tokens / max_step_tokens`` rounds, each prefilling the path so far,
  sampling a step of ``max_step_tokens`` and having the PRM read the path (each round priced
  by ``worst_case_round`` too). Re-reading the path makes this about 2.5x a one-call
  generation on the zoo; priced as one-call generations, beam@4 could not finish and MCTS
  and lookahead at 4 could not afford their first round.

A named strategy at ``budget: N`` may spend ``N`` of its generations (a strategy that takes no
budget, greedy, one). A table plan may spend what its dearest reachable plan may: the largest
``n`` its allocation can pick (the probe's samples at least) in one-call generations, PRM-read
when the probe or any reachable plan is weighted. ``run_plan`` puts the ceiling in the
``SearchContext`` as a ``Budget``, so every strategy checks each round against it, and no
request spends more; the response reports it (``plan.ceiling``).

Why the worst case and not admission's learned per-generation estimate: strategies ask
``ctx.fits(ledger, worst_case)`` with worst cases at ``max_tokens``, so a ceiling of ``N x``
the *typical* spend could not afford even one worst-case sample (weighted@4 would answer
nothing). With this ceiling best-of-N always affords all ``N`` samples, whatever the prompt.
Admission still *reserves* its estimate (``Plan.reserved``) in the token bucket and settles
with what was spent; the ceiling bounds how far a request can overrun that estimate.

**Pacing.** A table plan allocates a *mean* budget over difficulty bins with the calibration
set's curves; on another problem set the bins fill differently and the plans cost otherwise,
so the realized mean drifts from the configured one (on arith-test the uncorrected
``arith-zoo`` table spends 54 at a mean budget of 60 and 472 at 500; on its harder levels
3-5, 241 at 150 and 766 at 500). ``SpendController`` closes the loop with two corrections:

- the *balance* of the table plans settled so far (``target`` minus what each spent) is paid
  back over about ``horizon`` requests: the next request is allocated at ``target +
  balance / horizon``, so the running mean converges to ``target``;
- the *price ratio*, what recent plans really spent over what their allocations expected
  (the calibration set's prices), converts that amount into the table's prices, and prices
  the plans still in flight (admitted, not settled: concurrent requests), which count
  against the balance at their expected spend times the ratio.

The corrected mean budget is clamped to ``[0, 2 x target]`` (in realized prices) and the
balance to ``+-BANK x horizon x target``, so a target out of the table's reach (below the
probe's own cost, or above the dearest plans) does not wind the controller up. What it
cannot do: bring a set whose cheapest plan (the probe, then stop) already costs more than
the target down to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nexus_ray.planner.allocate import Allocation
from nexus_ray.planner.table import PlanTable
from nexus_ray.search import registry
from nexus_ray.search.base import ScoredSearchParams, SearchContext
from nexus_ray.search.ledger import worst_case_round


def generation_worst_case(
    ctx: SearchContext, max_tokens: int, scored: bool, step_tokens: int | None = None
) -> float:
    """Policy-token equivalents one generation of the context's prompt can cost at most: drawn
    in one call, or (``step_tokens``) built a step at a time, each step re-prefilling the path
    so far and, when ``scored``, PRM-read with it."""
    ledger = ctx.new_ledger()
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    scored = scored and ctx.prm is not None
    if step_tokens is None:
        return worst_case_round(ledger, [prompt_tokens], 1, max_tokens, scored)
    rounds = math.ceil(max_tokens / step_tokens)
    return sum(
        worst_case_round(ledger, [prompt_tokens + r * step_tokens], 1, step_tokens, scored)
        for r in range(rounds)
    )


def strategy_ceiling(
    ctx: SearchContext, strategy: str, generations: int, overrides: dict | None = None
) -> float:
    """A named strategy's ceiling: ``generations`` of its worst-case generations (one for a
    strategy that takes no budget), step by step for a stepwise strategy, PRM-read when the
    strategy reads the PRM."""
    spec, params = registry.build_params(strategy, generations, overrides)
    scored = spec.needs_prm or (isinstance(params, ScoredSearchParams) and params.selection != "majority")
    count = generations if spec.takes_budget else 1
    step_tokens = params.max_step_tokens if spec.stepwise else None
    return max(1, count) * generation_worst_case(ctx, params.max_tokens, scored, step_tokens)


def table_ceiling(ctx: SearchContext, table: PlanTable, allocation: Allocation, max_tokens: int) -> float:
    """A table plan's ceiling: its most expensive reachable plan in worst-case generations; a
    plan that runs a strategy after the probe: the probe's worst case plus the strategy's."""
    probe = table.estimator.probe
    n, scored = probe.samples, probe.prm
    runs = 0.0
    for b, mix in enumerate(allocation.mixes):
        for choice in (mix.low, mix.high) if mix.p_high > 0 else (mix.low,):
            option = table.option(b, choice)
            if option.strategy == "stop":
                continue
            if option.sampled:
                n = max(n, option.n)
                scored = scored or option.strategy == "weighted"
            else:
                probe_cost = probe.samples * generation_worst_case(ctx, max_tokens, probe.prm)
                runs = max(runs, probe_cost + strategy_ceiling(ctx, option.strategy, option.n))
    return max(runs, n * generation_worst_case(ctx, max_tokens, scored))


# The controller's fixed proportions, in horizons (chosen by replaying arith-test in 16 random
# orders, 1 and 16 requests in flight; benchmarks/RESULTS.md, "Budgets that hold").
BANK = 4.0  # the balance stays within +-BANK x horizon x target: no wind-up
MEMORY = 4.0  # the realized/expected ratio forgets with a time constant of MEMORY x horizon plans
PRIOR = 0.25  # ... and starts at 1 with the weight of PRIOR x horizon plans at the target


@dataclass
class SpendController:
    """Paces table plans so their running mean spend converges to ``target`` (see the module
    docstring). Plain state, so the admission actor can persist it and tests can replay it."""

    target: float
    horizon: float = 30.0
    balance: float = 0.0  # sum over settled plans of (target - spent), clamped (BANK)
    in_flight: int = 0  # admitted plans not settled yet
    in_flight_expected: float = 0.0  # what their allocations expect to spend
    settled: int = 0
    spent: float = 0.0  # what the settled plans spent
    recent_spent: float = 0.0  # the same, exponentially weighted (MEMORY)
    recent_expected: float = 0.0  # what their allocations expected, weighted alike

    @property
    def ratio(self) -> float:
        """Recent plans' realized spend over what their allocations expected (the calibration
        set's prices), shrunk towards 1, within [1/4, 4]."""
        prior = PRIOR * self.horizon * self.target
        return min(4.0, max(0.25, (self.recent_spent + prior) / (self.recent_expected + prior)))

    def mean_budget(self) -> float:
        """The mean budget to allocate the next request at: the target plus the balance (less what
        the plans in flight will likely overspend) over the horizon, in the table's prices."""
        r = self.ratio
        owed = self.balance - (r * self.in_flight_expected - self.in_flight * self.target)
        corrected = (self.target + owed / self.horizon) / r
        return min(2.0 * self.target / r, max(0.0, corrected))

    def admitted(self, expected: float) -> None:
        """A table plan whose allocation expects to spend ``expected`` is on its way."""
        self.in_flight += 1
        self.in_flight_expected += expected

    def release(self, expected: float) -> None:
        """A plan in flight will not be settled (it failed before it ran): forget it."""
        if self.in_flight > 0:
            self.in_flight -= 1
            self.in_flight_expected -= expected
        if self.in_flight == 0:
            self.in_flight_expected = 0.0  # no rounding drift once nothing is in flight

    def settle(self, expected: float, spent: float) -> None:
        """A plan whose allocation expected ``expected`` spent ``spent``."""
        self.release(expected)
        limit = BANK * self.horizon * self.target
        self.balance = min(limit, max(-limit, self.balance + self.target - spent))
        self.settled += 1
        self.spent += spent
        keep = 1.0 - 1.0 / (MEMORY * self.horizon)
        self.recent_spent = keep * self.recent_spent + spent
        self.recent_expected = keep * self.recent_expected + expected

    @property
    def mean_spent(self) -> float | None:
        return self.spent / self.settled if self.settled else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpendController:
        return cls(**d)
