"""What every strategy returns: the chosen answer, its candidates, and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus_ray.search.ledger import ComputeLedger


@dataclass(frozen=True)
class Candidate:
    text: str
    answer: str | None
    score: float | None = None  # aggregated PRM score, when a PRM scored it; DeepConf: confidence
    step_scores: tuple[float, ...] = ()


@dataclass
class SearchResult:
    strategy: str
    answer: str | None
    solution: str
    ledger: ComputeLedger
    candidates: list[Candidate] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self, with_candidates: bool = False) -> dict:
        out = {
            "strategy": self.strategy,
            "answer": self.answer,
            "solution": self.solution,
            "truncated": self.truncated,
            "ledger": self.ledger.to_dict(),
        }
        if with_candidates:
            out["candidates"] = [c.__dict__ for c in self.candidates]
        return out
