"""The request bodies of the HTTP API: strict, so a wrong type or an unknown field is a 422.

``ChatRequest`` is OpenAI's chat-completions schema as far as nexus_ray implements it. A field
of OpenAI's that nexus_ray does not implement (``tools``, ``logprobs``, ``response_format``, ...)
is a 422 that names it, unless it is null or off; it is never silently ignored.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**31 - 1
MAX_CHOICES = 16

# OpenAI chat-completions fields nexus_ray does not implement: a 422 naming them when set.
UNSUPPORTED = (
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "modalities",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "response_format",
    "stop",
    "tool_choice",
    "tools",
    "top_logprobs",
    "web_search_options",
)
Effort = Literal["none", "minimal", "low", "medium", "high"]


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
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    return_candidates: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class ChatRequest(_Body):
    """OpenAI's chat completions. The plan decides how to sample: ``temperature`` and ``top_p``
    are accepted, checked and reported back as not applied (``nexus.not_applied``)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="the n best distinct answers, best first")
    max_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="hard cap on any one solution")
    reasoning_effort: Effort | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    nexus: NexusOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        named = [k for k in UNSUPPORTED if k in data and data[k] not in (None, False)]
        if named:
            raise ValueError(f"{', '.join(named)}: not supported by nexus_ray (send null or leave out)")
        return {k: v for k, v in data.items() if k not in UNSUPPORTED}

    @property
    def token_cap(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return min(self.max_tokens, self.max_completion_tokens)
        return self.max_completion_tokens or self.max_tokens
