"""The service's Prometheus metrics, through Ray's metrics API (scraped from each node's
metrics port)."""

from __future__ import annotations

from ray.util import metrics


class Metrics:
    def __init__(self) -> None:
        self.requests = metrics.Counter("nexus_requests", "HTTP requests", tag_keys=("route", "status"))
        self.tokens = metrics.Counter("nexus_tokens", "tokens spent by solves", tag_keys=("kind",))
        self.budget = metrics.Counter("nexus_budget_spent", "policy-token equivalents spent by solves")
        self.strategy = metrics.Counter("nexus_strategy", "solves per strategy", tag_keys=("strategy",))
        self.difficulty = metrics.Counter("nexus_difficulty", "solves per difficulty bin", tag_keys=("bin",))
        self.latency = metrics.Histogram(
            "nexus_latency_seconds",
            "request latency",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            tag_keys=("route",),
        )

    def solved(self, strategy: str, difficulty: int | None, ledger: dict) -> None:
        for kind in ("policy_generated", "policy_prefill", "prm"):
            if ledger[f"{kind}_tokens"] > 0:  # Ray counters refuse increments of 0
                self.tokens.inc(ledger[f"{kind}_tokens"], {"kind": kind})
        if ledger["policy_token_equivalents"] > 0:
            self.budget.inc(ledger["policy_token_equivalents"])
        self.strategy.inc(1, {"strategy": strategy})
        self.difficulty.inc(1, {"bin": "unknown" if difficulty is None else str(difficulty)})
