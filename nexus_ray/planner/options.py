"""The plans a table can choose: answer from the probe, extend it and vote, or run a strategy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nexus_ray.search import registry

SAMPLED = ("stop", "majority", "weighted")  # plans that extend the probe with one-call samples


class PlanOption(BaseModel):
    """``stop``: answer from the probe. ``majority`` / ``weighted``: extend the probe's samples
    to ``n`` in all, drawn at ``temperature`` (default 1), and vote (weighted: by last-step PRM
    score). Any other registered strategy (beam, dvts, lookahead, mcts, particles, ...): run it
    at ``n`` generations (and ``temperature``, default its own) after the probe, which then only
    decides the bin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, gt=0, le=2)

    @field_validator("strategy")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SAMPLED:
            registry.get(name)  # a clear error naming the strategies there are
        return name

    @model_validator(mode="after")
    def _one_label_per_plan(self) -> PlanOption:
        if self.strategy in SAMPLED and self.temperature == 1.0:  # a sampled plan's default
            object.__setattr__(self, "temperature", None)
        return self

    @property
    def sampled(self) -> bool:
        """Replayable from a recorded pool (otherwise calibration runs it for real)."""
        return self.strategy in SAMPLED

    @property
    def label(self) -> str:
        if self.strategy == "stop":
            return "stop"
        return f"{self.strategy}@{self.n}" + (f"/t{self.temperature:g}" if self.temperature else "")

    @property
    def sampling_temperature(self) -> float:
        return self.temperature or 1.0
