"""The request bodies of the HTTP API: strict, so a wrong type or an unknown field is a 422."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SolveRequest(_Body):
    problem: str = Field(min_length=1, description="e.g. '12+7*3-5' or 'Q: 12+7*3-5'")
    budget: int | None = Field(None, ge=1, description="generations; none: the planner decides")
    strategy: str | None = Field(None, description="a strategy name; none: the planner decides")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    return_candidates: bool = False


class NexusOptions(_Body):
    budget: int | None = Field(None, ge=1)
    strategy: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    return_candidates: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    """The OpenAI chat schema; sampling fields clients always send are accepted and ignored
    (the plan decides how to sample), ``stream: true`` is refused."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    nexus: NexusOptions | None = None
