"""The Planner actor: one per cluster, it turns a request into a plan and admits it or not.

A plan is (strategy, parameters, budget in generations). A request that names a strategy or
a budget gets that (defaults from ``PlannerConfig`` fill the other). A request that names
neither is planned from the calibrated table when one is configured: the actor holds the
table's allocation for ``mean_budget`` (which plan each difficulty bin runs) and hands it out
as a ``planner`` plan; the ingress then probes the prompt, bins it and runs the bin's plan
(``nexus_ray.planner.execute.solve``), and reports the bin in the response.

Admission control is a token bucket in policy-token equivalents per second, per API key
when keys are configured: a request reserves its estimated cost, waits up to
``max_queue_seconds`` for the bucket, or is refused with a retry-after; when it finishes it
is settled with what it really spent. The bucket levels and the counters are written to
Ray's GCS key-value store on every change, so a restarted Planner (``max_restarts=-1``)
comes back with them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import ray
from ray.experimental import internal_kv

from nexus_ray.config import PlannerConfig
from nexus_ray.planner.allocate import Allocation
from nexus_ray.planner.table import PlanTable, load_table
from nexus_ray.search import registry

NAMESPACE = "nexus_ray"
_KV_NAMESPACE = "nexus_ray.planner"


class PlanError(ValueError):
    """The request asks for something the planner cannot give (unknown strategy, budget too high)."""


class AdmissionDenied(Exception):
    """The compute budget is spent; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)  # the only arg, so the error pickles across Ray
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"compute budget exhausted; retry after {self.retry_after:.1f} s"


@dataclass(frozen=True)
class Plan:
    strategy: str
    budget: int  # generations (Snell et al.'s unit)
    params: dict = field(default_factory=dict)  # overrides of the strategy's parameter model
    source: str = "defaults"  # "request": the caller chose; "defaults": the config's; "table": the calibrated table
    difficulty: int | None = None  # the estimated difficulty bin, once an estimator is configured
    ticket: str = ""
    reserved: float = 0.0  # policy-token equivalents held until ``settle``
    wait_s: float = 0.0  # how long the caller must queue before running it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenBucket:
    """``level`` tokens now, refilled at ``rate`` per second up to ``capacity``; may go negative."""

    rate: float
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now)."""
        return max(0.0, (amount - self.level) / self.rate)


class Planner:
    """Plain class so tests can use it without Ray; ``get_planner`` runs it as the named actor."""

    def __init__(self, config: dict, state_key: str | None = None) -> None:
        """``state_key``: where in Ray's GCS key-value store the state lives (None: not kept)."""
        self.config = PlannerConfig.model_validate(config)
        self._load_table()
        self.state_key = state_key
        self.buckets: dict[str, TokenBucket] = {}
        self.counters: Counter[str] = Counter()
        self.restarts = 0
        if state_key is not None:
            self._load()

    def configure(self, config: dict) -> None:
        """New limits and defaults; buckets keep their levels, counters their counts."""
        self.config = PlannerConfig.model_validate(config)
        self._load_table()
        for bucket in self.buckets.values():
            bucket.rate = self.config.tokens_per_second or bucket.rate
            bucket.capacity = self._capacity()
        self._save()

    def _load_table(self) -> None:
        self.table: PlanTable | None = None
        self.allocation: Allocation | None = None
        if self.config.table is not None:
            self.table = load_table(self.config.table)
            self.allocation = self.table.allocate(self.config.mean_budget)

    def plan(self, problem: str, budget: int | None, strategy: str | None, api_key: str | None = None) -> Plan:
        """A plan for one problem, admitted against the compute budget (raises ``AdmissionDenied``)."""
        cfg = self.config
        self.counters["requests"] += 1
        if strategy is None and budget is None and self.table is not None:
            return self._admit(self._table_plan(), api_key)
        name = strategy or cfg.default_strategy
        try:
            registry.get(name)
        except ValueError as err:
            self.counters["rejected_invalid"] += 1
            raise PlanError(str(err)) from None
        generations = budget or cfg.default_budget
        if generations > cfg.max_budget:
            self.counters["rejected_invalid"] += 1
            raise PlanError(f"budget {generations} exceeds this service's ceiling of {cfg.max_budget} generations")
        if name == "greedy":
            generations = 1
        source = "request" if strategy or budget else "defaults"
        plan = Plan(name, generations, {}, source, None, uuid.uuid4().hex, generations * cfg.tokens_per_generation)
        return self._admit(plan, api_key)

    def _table_plan(self) -> Plan:
        """The allocation as a plan: per bin (low, high, p_high) indices into the table's choices.
        It reserves what the most expensive bin's plan costs on the calibration set."""
        assert self.table is not None and self.allocation is not None
        mixes = [[m.low, m.high, m.p_high] for m in self.allocation.mixes]
        chosen = [self.table.bins[b].choices[i] for b, m in enumerate(self.allocation.mixes) for i in (m.low, m.high)]
        return Plan("planner", max(c.option.n for c in chosen), {"mixes": mixes}, "table", None, uuid.uuid4().hex,
                    max(c.compute for c in chosen))

    def _admit(self, plan: Plan, api_key: str | None) -> Plan:
        cfg = self.config
        estimate = plan.reserved
        wait = 0.0
        if cfg.tokens_per_second is not None:
            bucket = self._bucket(api_key)
            bucket.refill(time.time())
            # A request bigger than the whole bucket waits for a full bucket, then runs in debt.
            wait = bucket.wait_for(min(estimate, bucket.capacity))
            if wait > cfg.max_queue_seconds:
                self.counters["rejected_rate"] += 1
                self._save()
                raise AdmissionDenied(wait)
            bucket.level -= estimate
        self.counters["admitted"] += 1
        self.counters[f"strategy:{plan.strategy}"] += 1
        self.counters["queued"] += wait > 0
        self._save()
        return replace(plan, wait_s=wait)

    def settle(self, api_key: str | None, reserved: float, spent: float) -> None:
        """Give back what a request reserved and did not spend (or take what it overspent)."""
        self.counters["settled"] += 1
        self.counters["spent_policy_tokens"] += round(spent)
        if self.config.tokens_per_second is not None:
            bucket = self._bucket(api_key)
            bucket.refill(time.time())
            bucket.level = min(bucket.capacity, bucket.level + reserved - spent)
        self._save()

    def stats(self) -> dict:
        return {
            "counters": dict(self.counters),
            "buckets": {k: round(b.level, 1) for k, b in self.buckets.items()},
            "restarts": self.restarts,
            "config": self.config.model_dump(),
        }

    def ping(self) -> bool:
        return True

    def _capacity(self) -> float:
        return (self.config.tokens_per_second or 0.0) * self.config.burst_seconds

    def _bucket(self, api_key: str | None) -> TokenBucket:
        """One bucket per API key (stored by hash, never in clear), or one for everyone."""
        key = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "*"
        if key not in self.buckets:
            rate = self.config.tokens_per_second or 1.0
            self.buckets[key] = TokenBucket(rate, self._capacity(), self._capacity(), time.time())
        return self.buckets[key]

    def _save(self) -> None:
        if self.state_key is None:
            return
        state = {
            "buckets": {k: asdict(b) for k, b in self.buckets.items()},
            "counters": dict(self.counters),
            "restarts": self.restarts,
        }
        internal_kv._internal_kv_put(self.state_key, json.dumps(state), overwrite=True, namespace=_KV_NAMESPACE)

    def _load(self) -> None:
        raw = internal_kv._internal_kv_get(self.state_key, namespace=_KV_NAMESPACE)
        if raw is None:
            return
        state = json.loads(raw)
        self.buckets = {k: TokenBucket(**b) for k, b in state["buckets"].items()}
        self.counters = Counter(state["counters"])
        self.restarts = state.get("restarts", 0) + 1
        self._save()


def get_planner(config: PlannerConfig, name: str):
    """The cluster's Planner actor, created on first use; restarted by Ray if it dies."""
    actor = (
        ray.remote(Planner)
        .options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=0,
        )
        .remote(config.model_dump(), name)
    )
    ray.get(actor.configure.remote(config.model_dump()))
    return actor


def clear_state(name: str) -> None:
    """Forget the persisted counters and buckets of the Planner called ``name``."""
    internal_kv._internal_kv_del(name, namespace=_KV_NAMESPACE)
