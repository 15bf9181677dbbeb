"""Where the planner's samples come from: the engines (online) or a recorded pool (replay).

The planner is written once against ``Sampler``. Online, ``EngineSampler`` draws from the
policy and PRM engines. Calibration and the benchmark record a pool per problem (the greedy
decode plus M temperature-1 samples, all PRM-scored, with their token counts; optionally M
more at each other temperature, and the outcome of each tree-search plan run for real) and
replay it through ``ReplaySampler``, which hands out the recorded samples in order and
charges the ledger for exactly the calls an online run would make (each ``sample`` call one
prefill plus its tokens, each scored sample its PRM tokens, or with a step-caching PRM only the
steps the request had not scored yet, a recorded run what it spent). So
every plan the table compares is costed as it would be online, and one pool prices every
sampling plan (Snell et al. subsample their 2048 samples per question the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from nexus_ray.engines.base import Completion, GenerationParams
from nexus_ray.planner.options import PlanOption
from nexus_ray.search import registry
from nexus_ray.search.aggregate import aggregate_steps
from nexus_ray.search.base import SearchContext
from nexus_ray.search.full_samples import draw, score, score_requests
from nexus_ray.search.ledger import Budget, ComputeLedger, StepKeys, step_keys
from nexus_ray.search.result import SearchResult


@dataclass(frozen=True)
class Sample:
    """One complete solution: its answer, what it cost, and the signals the planner reads."""

    answer: str | None
    tokens: int  # completion tokens
    surprisal: float  # mean -log p per generated token (nats)
    text: str = ""
    prm: float | None = None  # last-step PRM score, once scored
    prm_tokens: int = 0
    prm_steps: StepKeys = ()  # its scored steps (``step_keys``), so replay dedups them as the ledger does
    ref: int = -1  # replay only: 0 the pool's greedy decode, i its i-th sample


@dataclass(frozen=True)
class Run:
    """A strategy run for real on a problem (a tree-search plan): its answer and its spend."""

    answer: str | None
    policy_generated_tokens: int
    policy_prefill_tokens: int
    prm_tokens: int
    generations: int
    truncated: bool = False
    text: str = ""
    merge_probe_tokens: int = 0  # a test-time merging policy's reads of the prompts

    @classmethod
    def of(cls, result: SearchResult) -> Run:
        ledger = result.ledger
        return cls(
            result.answer,
            ledger.policy_generated_tokens,
            ledger.policy_prefill_tokens,
            ledger.prm_tokens,
            ledger.generations,
            result.truncated,
            result.solution,
            ledger.merge_probe_tokens,
        )

    def charge(self, ledger: ComputeLedger) -> None:
        ledger.policy_generated_tokens += self.policy_generated_tokens
        ledger.policy_prefill_tokens += self.policy_prefill_tokens
        ledger.prm_tokens += self.prm_tokens
        ledger.merge_probe_tokens += self.merge_probe_tokens
        ledger.generations += self.generations


class Sampler(Protocol):
    prompt: str
    prompt_tokens: int
    max_tokens: int

    async def greedy(self, ledger: ComputeLedger) -> Sample:
        """The temperature-0 decode (one generate call)."""
        ...

    async def sample(self, n: int, ledger: ComputeLedger, temperature: float = 1.0) -> list[Sample]:
        """``n`` samples at ``temperature`` in one generate call."""
        ...

    async def run(self, option: PlanOption, ledger: ComputeLedger, budget: Budget | None) -> Run:
        """The option's strategy at ``option.n`` generations, charged to ``ledger``."""
        ...

    async def score(self, samples: list[Sample], ledger: ComputeLedger) -> list[Sample]:
        """The samples with PRM scores (already scored ones are not charged again)."""
        ...


MAX_TOKENS = 256  # a planner sample's length limit, online and in replay


def _surprisal(c: Completion) -> float:
    if not c.logprobs:
        return 0.0
    return -sum(c.logprobs) / len(c.logprobs)


class EngineSampler:
    """Draws from the engines of a ``SearchContext`` (the online path)."""

    def __init__(self, ctx: SearchContext, max_tokens: int = MAX_TOKENS) -> None:
        self.ctx = ctx
        self.prompt = ctx.prompt
        self.prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
        self.max_tokens = max_tokens
        self._calls = 0

    async def _generate(self, n: int, temperature: float, ledger: ComputeLedger) -> list[Sample]:
        # Each call gets its own seed, so a later call does not redraw the probe's samples.
        seed = None if self.ctx.seed is None else self.ctx.seed + 7919 * self._calls
        self._calls += 1
        params = GenerationParams(
            n=n, temperature=temperature, max_tokens=self.max_tokens, seed=seed, logprobs=True
        )
        completions = await draw(self.ctx, ledger, params)
        return [Sample(self.ctx.fmt.answer(c.text), c.num_tokens, _surprisal(c), c.text) for c in completions]

    async def greedy(self, ledger: ComputeLedger) -> Sample:
        [s] = await self._generate(1, 0.0, ledger)
        return s

    async def sample(self, n: int, ledger: ComputeLedger, temperature: float = 1.0) -> list[Sample]:
        return await self._generate(n, temperature, ledger) if n > 0 else []

    async def run(self, option: PlanOption, ledger: ComputeLedger, budget: Budget | None) -> Run:
        """Run the strategy under what is left of ``budget`` and charge what it spent."""
        ctx = self.ctx if budget is None else replace(self.ctx, budget=Budget(budget.remaining(ledger)))
        params = {"temperature": option.temperature} if option.temperature else None
        run = Run.of(await registry.run(option.strategy, ctx, option.n, params))
        run.charge(ledger)
        return run

    async def score(self, samples: list[Sample], ledger: ComputeLedger) -> list[Sample]:
        todo = [i for i, s in enumerate(samples) if s.prm is None]
        if not todo:
            return samples
        requests = score_requests(self.ctx, [samples[i].text for i in todo])
        results = await score(self.ctx, ledger, requests, "the planner's PRM-scored plans")
        out = list(samples)
        for i, request, r in zip(todo, requests, results):
            keys = step_keys(request, r)
            out[i] = replace(
                samples[i], prm=aggregate_steps(r.scores, "last"), prm_tokens=r.tokens, prm_steps=keys
            )
        return out


@dataclass(frozen=True)
class Pool:
    """A problem's recorded samples: the greedy decode and M temperature-1 samples, all scored;
    ``tempered``: M samples at each other temperature; ``runs``: tree-search plans by label."""

    problem: str
    prompt: str
    prompt_tokens: int
    greedy: Sample
    samples: tuple[Sample, ...]
    tempered: dict[float, tuple[Sample, ...]] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)

    def to_dict(self) -> dict:
        strip = lambda s: {k: v for k, v in asdict(s).items() if k not in ("text", "ref")}
        return {
            "problem": self.problem,
            "prompt": self.prompt,
            "prompt_tokens": self.prompt_tokens,
            "greedy": strip(self.greedy),
            "samples": [strip(s) for s in self.samples],
            "tempered": {str(t): [strip(s) for s in ss] for t, ss in self.tempered.items()},
            "runs": {label: strip(r) for label, r in self.runs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Pool:
        def sample(s: dict) -> Sample:
            return Sample(**s | {"prm_steps": tuple((k, t) for k, t in s.get("prm_steps", ()))})

        return cls(
            d["problem"],
            d["prompt"],
            d["prompt_tokens"],
            sample(d["greedy"]),
            tuple(sample(s) for s in d["samples"]),
            {float(t): tuple(sample(s) for s in ss) for t, ss in d.get("tempered", {}).items()},
            {label: Run(**r) for label, r in d.get("runs", {}).items()},
        )

    def pass_at_1(self, correct: Callable[[str | None], bool]) -> float:
        """Fraction of the temperature-1 samples that are right: the oracle's difficulty signal."""
        return sum(correct(s.answer) for s in self.samples) / max(1, len(self.samples))


async def record_pool(
    ctx: SearchContext,
    problem: str,
    m: int,
    max_tokens: int = MAX_TOKENS,
    temperatures: tuple[float, ...] = (),
    runs: tuple[PlanOption, ...] = (),
) -> Pool:
    """Draw and score what replay needs: the greedy decode and ``m`` samples, ``m`` more at
    each other temperature, and each of ``runs`` run for real (no ceiling)."""
    sampler = EngineSampler(ctx, max_tokens)
    ledger = ctx.new_ledger()
    greedy = await sampler.greedy(ledger)
    samples = await sampler.sample(m, ledger)
    scored = await sampler.score([greedy, *samples], ledger)
    pool = Pool(problem, ctx.prompt, sampler.prompt_tokens, scored[0], tuple(scored[1:]))
    return await extend_pool(sampler, pool, m, temperatures, runs)


async def extend_pool(
    sampler: EngineSampler,
    pool: Pool,
    m: int,
    temperatures: tuple[float, ...] = (),
    runs: tuple[PlanOption, ...] = (),
) -> Pool:
    """The pool with what it lacks: ``m`` scored samples at each other temperature, and each
    of ``runs`` run for real (no ceiling)."""
    tempered = dict(pool.tempered)
    for t in temperatures:
        if t != 1.0 and t not in tempered:
            ledger = sampler.ctx.new_ledger()
            tempered[t] = tuple(await sampler.score(await sampler.sample(m, ledger, t), ledger))
    recorded = dict(pool.runs)
    for option in runs:
        if option.label not in recorded:
            recorded[option.label] = await sampler.run(option, sampler.ctx.new_ledger(), None)
    return replace(pool, tempered=tempered, runs=recorded)


class ReplaySampler:
    """Hands out a pool's samples in order, charging the ledger as the online calls would.

    Samples go out unscored (``prm`` None) whatever the pool recorded, so a plan pays for the
    PRM exactly when it asks ``score`` for it."""

    def __init__(self, pool: Pool, max_tokens: int = MAX_TOKENS) -> None:
        self.pool = pool
        self.prompt = pool.prompt
        self.prompt_tokens = pool.prompt_tokens
        self.max_tokens = max_tokens
        self._next: dict[float, int] = {}  # per temperature: samples handed out
        self._handed: list[Sample] = []  # what each ref stands for

    def _hand(self, s: Sample) -> Sample:
        self._handed.append(s)
        return replace(s, prm=None, prm_tokens=0, prm_steps=(), ref=len(self._handed) - 1)

    def _recorded(self, s: Sample) -> Sample:
        return self._handed[s.ref]

    async def greedy(self, ledger: ComputeLedger) -> Sample:
        ledger.charge_call(self.prompt, self.prompt_tokens, self.pool.greedy.tokens)
        ledger.generations += 1
        return self._hand(self.pool.greedy)

    async def sample(self, n: int, ledger: ComputeLedger, temperature: float = 1.0) -> list[Sample]:
        if n <= 0:
            return []
        recorded = self.pool.samples if temperature == 1.0 else self.pool.tempered.get(temperature, ())
        start = self._next.get(temperature, 0)
        if start + n > len(recorded):
            raise ValueError(
                f"the recorded pool holds {len(recorded)} samples at temperature {temperature:g}; "
                f"a plan asked for {start + n}"
            )
        self._next[temperature] = start + n
        drawn = recorded[start : start + n]
        ledger.charge_call(self.prompt, self.prompt_tokens, sum(s.tokens for s in drawn))
        ledger.generations += n
        return [self._hand(s) for s in drawn]

    async def run(self, option: PlanOption, ledger: ComputeLedger, budget: Budget | None) -> Run:
        """The recorded run of the option (calibration records them without a ceiling)."""
        if option.label not in self.pool.runs:
            raise ValueError(f"the recorded pool has no run of {option.label}; record it with calibrate")
        run = self.pool.runs[option.label]
        run.charge(ledger)
        return run

    async def score(self, samples: list[Sample], ledger: ComputeLedger) -> list[Sample]:
        out = []
        for s in samples:
            if s.prm is None:
                rec = self._recorded(s)
                ledger.charge_recorded_scoring(rec.prm_tokens, rec.prm_steps)
                s = replace(s, prm=rec.prm, prm_tokens=rec.prm_tokens, prm_steps=rec.prm_steps)
            out.append(s)
        return out
