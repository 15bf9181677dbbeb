"""Admission control: one actor per cluster plans each request and admits it or not.

The plan itself is ``nexus_ray.planner``'s decision (``Planner``); this actor holds the one
cluster-wide copy of it, so every ingress replica plans from the same table and allocation.
Admission is a token bucket in policy-token equivalents per second, per API key when keys
are configured: a request reserves its estimated cost, waits up to ``max_queue_seconds`` for
the bucket, or is refused with a retry-after; when it finishes it is settled with what it
really spent. Because it sees every request admitted and settled, it also keeps the planner's
spend controller (``planner.spend.SpendController``): table plans are allocated at a mean
budget corrected by what earlier ones really spent, so the service's mean spend holds to the
configured ``mean_budget``. The bucket levels, the counters and the controller's balance are
written to Ray's GCS key-value store on every change, so a restarted actor
(``max_restarts=-1``) comes back with them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

import ray
from ray.experimental import internal_kv

from nexus_ray.config import PlannerConfig
from nexus_ray.planner.request import Plan, PlanError, Planner
from nexus_ray.planner.spend import SpendController
from nexus_ray.planner.table import PlanTable

NAMESPACE = "nexus_ray"
_KV_NAMESPACE = "nexus_ray.planner"


class AdmissionDenied(Exception):
    """The compute budget is spent; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)  # the only arg, so the error pickles across Ray
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"compute budget exhausted; retry after {self.retry_after:.1f} s"


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


class Admission:
    """Plain class so tests can use it without Ray; ``get_admission`` runs it as the named actor."""

    def __init__(self, config: dict, table: PlanTable | None = None, state_key: str | None = None) -> None:
        """``table``: the service's plan table, loaded once by ``build_app``; ``state_key``: where
        in Ray's GCS key-value store the state lives (None: not kept)."""
        self.config = PlannerConfig.model_validate(config)
        self.planner = Planner(self.config, table)
        self.state_key = state_key
        self.buckets: dict[str, TokenBucket] = {}
        self.counters: Counter[str] = Counter()
        self.restarts = 0
        if state_key is not None:
            self._load()

    def configure(self, config: dict, table: PlanTable | None) -> None:
        """New limits, defaults and table; buckets keep their levels, counters their counts, the
        spend controller its balance (unless its target or horizon changed)."""
        self.config = PlannerConfig.model_validate(config)
        self.planner = Planner(self.config, table, self._same_pacer(self.planner.pacer))
        for bucket in self.buckets.values():
            bucket.rate = self.config.tokens_per_second or bucket.rate
            bucket.capacity = self._capacity()
        self._save()

    def plan(
        self,
        problem: str,
        budget: int | None,
        strategy: str | None,
        api_key: str | None = None,
        effort: str | None = None,
    ) -> Plan:
        """A plan for one problem, admitted against the compute budget (raises ``PlanError`` or
        ``AdmissionDenied``); ``effort``: the request's reasoning effort, if it gave one."""
        self.counters["requests"] += 1
        try:
            plan = self.planner.plan(budget, strategy, self.tokens_per_generation(), effort)
        except PlanError:
            self.counters["rejected_invalid"] += 1
            raise
        return self._admit(plan, api_key)

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
        self.planner.admitted(plan)
        self._save()
        return replace(plan, wait_s=wait)

    def tokens_per_generation(self) -> float | None:
        """The configured estimate, else the mean spent per generation by settled named-strategy
        requests; None before any has settled (the planner then assumes the worst case)."""
        if self.config.tokens_per_generation is not None:
            return self.config.tokens_per_generation
        generations = self.counters["settled_generations"]
        if generations == 0:
            return None
        return max(1.0, self.counters["settled_generation_tokens"] / generations)

    def settle(self, api_key: str | None, plan: Plan, spent: float, generations: int = 0) -> None:
        """Give back what a request's ``plan`` (as admitted, or as run) reserved and did not spend
        (or take what it overspent), and tell the spend controller what a table plan spent;
        ``generations``: what a named-strategy request asked for, which the estimate learns from."""
        reserved = plan.reserved
        self.planner.settled(plan, spent)
        self.counters["settled"] += 1
        self.counters["spent_policy_tokens"] += round(spent)
        if generations > 0:
            self.counters["settled_generations"] += generations
            self.counters["settled_generation_tokens"] += round(spent)
        if self.config.tokens_per_second is not None:
            bucket = self._bucket(api_key)
            bucket.refill(time.time())
            bucket.level = min(bucket.capacity, bucket.level + reserved - spent)
        self._save()

    def stats(self) -> dict:
        pacer = self.planner.pacer
        spend = None
        if pacer is not None:
            spend = pacer.to_dict() | {"mean_budget": pacer.mean_budget(), "mean_spent": pacer.mean_spent}
        return {
            "counters": dict(self.counters),
            "buckets": {k: round(b.level, 1) for k, b in self.buckets.items()},
            "spend": spend,  # table plans: the spend controller's state, the mean budget it allocates now
            "restarts": self.restarts,
            "config": self.config.model_dump(),
        }

    def _same_pacer(self, pacer: SpendController | None) -> SpendController | None:
        """``pacer`` if it paces to the configured target and horizon, else None (start afresh)."""
        cfg = self.config
        if pacer is not None and (pacer.target, pacer.horizon) == (cfg.mean_budget, cfg.spend_horizon):
            return pacer
        return None

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
        pacer = self.planner.pacer
        state = {
            "buckets": {k: asdict(b) for k, b in self.buckets.items()},
            "counters": dict(self.counters),
            "restarts": self.restarts,
            "pacer": pacer.to_dict() if pacer is not None else None,
        }
        internal_kv._internal_kv_put(
            self.state_key, json.dumps(state), overwrite=True, namespace=_KV_NAMESPACE
        )

    def _load(self) -> None:
        raw = internal_kv._internal_kv_get(self.state_key, namespace=_KV_NAMESPACE)
        if raw is None:
            return
        state = json.loads(raw)
        self.buckets = {k: TokenBucket(**b) for k, b in state["buckets"].items()}
        self.counters = Counter(state["counters"])
        if state.get("pacer") and self.planner.pacer is not None:
            kept = self._same_pacer(SpendController.from_dict(state["pacer"]))
            self.planner.pacer = kept or self.planner.pacer
        self.restarts = state.get("restarts", 0) + 1
        self._save()


def get_admission(config: PlannerConfig, name: str, table: PlanTable | None):
    """The cluster's admission actor, created on first use (and configured with ``config`` and
    ``table`` either way); restarted by Ray if it dies."""
    actor = (
        ray.remote(Admission)
        .options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=0,
        )
        .remote(config.model_dump(), table, name)
    )
    ray.get(actor.configure.remote(config.model_dump(), table))
    return actor


def clear_state(name: str) -> None:
    """Forget the persisted counters and buckets of the admission actor called ``name``."""
    internal_kv._internal_kv_del(name, namespace=_KV_NAMESPACE)
