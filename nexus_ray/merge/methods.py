"""Merge methods over tensors: model soups, task arithmetic, TIES, DARE, DELLA, Breadcrumbs, SLERP.

Each method is registered with its parameters and their defaults, which are mergekit's (0.1.5),
so a mergekit YAML merges to the same numbers. The math is re-derived from a description of
mergekit's behaviour (mergekit is LGPL; none of its code is copied) and tested against
mergekit itself.

As in mergekit, task arithmetic, TIES, DARE, DELLA and Breadcrumbs are one generalized
task-arithmetic merge (``generalized_task_arithmetic``) configured per method in one table
(``FAMILY``): which sparsifier (``nexus_ray.merge.sparsify``), whether signs are elected, and
the defaults of ``normalize`` and ``rescale``. Model soups (``linear``) and ``slerp`` average
weights directly.

Arithmetic runs in float32 (float64 inputs stay float64) and the result is cast back to the
base's dtype; slerp, the TIES sign election and the DARE/DELLA L1 norms accumulate in float64.
So bf16 inputs are merged in float32 and rounded once at the end, where mergekit does the
task-arithmetic family in bf16: 14-25 % of bf16 outputs differ from mergekit's, mostly by one
ulp, and nexus_ray's are the closer to a float64 reference (``benchmarks/merge_numerics.py``).
Differences from mergekit that change no result:

- the TIES / Breadcrumbs trim finds its cut with a selection (O(n)) instead of a full argsort;
- deltas are weighted and reduced one model at a time, never stacked into one [n, ...] tensor;
- random masks (DARE, DELLA) come from a generator seeded per (seed, tensor, model), so a merge
  is reproducible and independent of the order in which workers process tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nexus_ray.merge import fused
from nexus_ray.merge.sparsify import SPARSIFIERS, stream_key

EPS_WEIGHT_SUM = 1e-8  # |sum of weights| below this divides by 1
SLERP_DOT_THRESHOLD = 0.9995  # nearly colinear tensors are interpolated linearly
SLERP_BLOCK = 1 << 20  # elements per float64 block of slerp


@dataclass(frozen=True)
class Method:
    """A registered merge method: its function and the parameters a config may set."""

    name: str
    fn: Callable[..., Tensor]
    needs_base: bool
    model_params: dict[str, float | None]  # per model; None = required
    global_params: dict[str, Any] = field(default_factory=dict)  # None = required
    random: bool = False


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --- the generalized task-arithmetic family --------------------------------------------------


def generalized_task_arithmetic(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    params: dict[str, Sequence[float]],
    *,
    sparsification: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    lambda_: float,
    seed: int,
    tensor_name: str,
) -> Tensor:
    """base + lambda * (sum of weighted, sparsified task vectors) [/ their weight].

    ``params`` holds the sparsifier's per-model parameters (density, gamma, epsilon). With
    ``consensus`` (TIES sign election), each element keeps only the weighted deltas whose
    sign agrees with the sign of their sum (zero sum -> +); the divisor is then the sum of the
    agreeing weights (0 -> 1), a weighted disjoint mean. The election sums w_i * delta_i in
    float64, as the float64 reference does: bf16 deltas often cancel exactly, and a float32 sum
    of rounded products would give such elements a sign of its own.
    """
    if fused.takes([base, *models], sparsification):
        out = fused.family(
            fused.as_array(base),
            [fused.as_array(m) for m in models],
            base.dtype == torch.bfloat16,
            list(weight),
            {key: list(values) for key, values in params.items()},
            sparsification=sparsification,
            consensus=consensus,
            normalize=normalize,
            rescale=rescale,
            lambda_=lambda_,
            keys=[stream_key(seed, tensor_name, i) for i in range(len(models))],
            rows=base.shape[0] if base.dim() >= 2 else 1,
        )
        return fused.as_tensor(out, base.dtype, base.shape)
    sparsifier = SPARSIFIERS[sparsification] if sparsification is not None else None
    dtype = _work_dtype(base)
    b = base.to(dtype)
    deltas = []
    total = torch.zeros(b.shape, dtype=torch.float64) if consensus else None  # the election's sum
    for i, m in enumerate(models):
        d = m.to(dtype) - b
        if sparsifier is not None:
            kwargs: dict[str, Any] = {key: params[key][i] for key in sparsifier.params}
            if sparsifier.random:
                kwargs["key"] = stream_key(seed, tensor_name, i)
            d = sparsifier.fn(d, rescale=rescale, **kwargs)
        if consensus:
            total.add_(d, alpha=weight[i])
        deltas.append(d.mul_(weight[i]))
    if consensus:
        positive = total >= 0
        mixed, divisor = torch.zeros_like(b), torch.zeros_like(b)
        for d, w in zip(deltas, weight):
            agree = torch.where(positive, d > 0, d < 0)
            mixed += d.mul_(agree)
            divisor += agree * w
        divisor[divisor == 0] = 1
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed += d
        divisor = float(sum(weight))
        if abs(divisor) < EPS_WEIGHT_SUM:
            divisor = 1.0
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (b + mixed).to(base.dtype)


@dataclass(frozen=True)
class TaskArithmetic:
    """One method of the family: ``generalized_task_arithmetic`` with its configuration.

    Called as ``ties(base, models, weight, density, normalize=False)``: the per-model
    parameters follow ``weight`` in the order of the sparsifier's table (density, then gamma
    or epsilon), positionally or by name; a missing one takes its default for every model.
    """

    sparsification: str | None  # a key of ``sparsify.SPARSIFIERS``; None keeps every delta
    consensus: bool  # TIES sign election
    normalize: bool  # default: divide by the (agreeing) weights' sum
    rescale: bool  # default: L1-rescale what the sparsifier keeps

    @property
    def model_params(self) -> dict[str, float]:
        return SPARSIFIERS[self.sparsification].params if self.sparsification is not None else {}

    @property
    def random(self) -> bool:
        return self.sparsification is not None and SPARSIFIERS[self.sparsification].random

    def __call__(
        self,
        base: Tensor,
        models: Sequence[Tensor],
        weight: Sequence[float],
        *per_model: Sequence[float] | None,
        normalize: bool | None = None,
        rescale: bool | None = None,
        lambda_: float = 1.0,
        seed: int = 0,
        tensor_name: str = "",
        **named: Sequence[float] | None,
    ) -> Tensor:
        defaults = self.model_params
        unknown = sorted(set(named) - set(defaults))
        if len(per_model) > len(defaults) or unknown:
            raise TypeError(f"per-model parameters are {list(defaults)}, got {len(per_model)} and {unknown}")
        given = dict(zip(defaults, per_model)) | named
        params = {
            key: given[key] if given.get(key) is not None else [default] * len(models)
            for key, default in defaults.items()
        }
        return generalized_task_arithmetic(
            base,
            models,
            weight,
            params,
            sparsification=self.sparsification,
            consensus=self.consensus,
            normalize=self.normalize if normalize is None else normalize,
            rescale=self.rescale if rescale is None else rescale,
            lambda_=lambda_,
            seed=seed,
            tensor_name=tensor_name,
        )


# Each method's defaults, stated once. ``rescale`` changes nothing without a sparsifier
# (task_arithmetic accepts it for mergekit configs).
FAMILY: dict[str, TaskArithmetic] = {
    #                                 sparsification        consensus  normalize  rescale
    "task_arithmetic": TaskArithmetic(None, False, False, False),
    "ties": TaskArithmetic("magnitude", True, True, False),
    "dare_linear": TaskArithmetic("random", False, False, True),
    "dare_ties": TaskArithmetic("random", True, False, True),
    "della": TaskArithmetic("della_magprune", True, True, True),
    "della_linear": TaskArithmetic("della_magprune", False, False, True),
    "breadcrumbs": TaskArithmetic("magnitude_outliers", False, False, False),
    "breadcrumbs_ties": TaskArithmetic("magnitude_outliers", True, False, False),
}

# The family's members by name, as callers use them: methods.ties(base, models, weight, density).
task_arithmetic = FAMILY["task_arithmetic"]
ties = FAMILY["ties"]
dare_linear = FAMILY["dare_linear"]
dare_ties = FAMILY["dare_ties"]
della = FAMILY["della"]
della_linear = FAMILY["della_linear"]
breadcrumbs = FAMILY["breadcrumbs"]
breadcrumbs_ties = FAMILY["breadcrumbs_ties"]


# --- methods that average weights directly ---------------------------------------------------


def linear(
    base: Tensor | None, models: Sequence[Tensor], weight: Sequence[float], *, normalize: bool = True
) -> Tensor:
    """Model soup: sum_i w_i theta_i, divided by sum_i w_i when ``normalize``."""
    if fused.takes(list(models)):
        bf16 = models[0].dtype == torch.bfloat16
        out = fused.soup([fused.as_array(m) for m in models], bf16, list(weight), normalize)
        return fused.as_tensor(out, models[0].dtype, models[0].shape)
    dtype = _work_dtype(models[0])
    out = torch.zeros(models[0].shape, dtype=dtype)
    for m, w in zip(models, weight):
        out.add_(m.to(dtype), alpha=w)
    if normalize:
        out.div_(float(sum(weight)))
    return out.to(models[0].dtype)


def slerp(base: Tensor, models: Sequence[Tensor], *, t: float) -> Tensor:
    """Spherical interpolation from ``base`` (t = 0) to the one other model (t = 1), over the
    whole flattened tensor; nearly colinear pairs fall back to linear interpolation.

    Computed in float64 blocks of ``SLERP_BLOCK`` elements and rounded once to the base's dtype:
    a float32 dot over a multi-million-element tensor loses the digits that set the angle (its
    error was 23x mergekit's on an 8M-element embedding); the blocks bound the float64 copies."""
    if len(models) != 1:
        raise ValueError(f"slerp merges the base with exactly one other model, got {len(models)}")
    a, b = base.reshape(-1), models[0].reshape(-1)
    blocks = [slice(start, start + SLERP_BLOCK) for start in range(0, a.numel(), SLERP_BLOCK)]
    aa = bb = ab = 0.0
    for s in blocks:
        x, y = a[s].double(), b[s].double()
        aa, bb, ab = aa + float(x @ x), bb + float(y @ y), ab + float(x @ y)
    dot = max(-1.0, min(1.0, ab / math.sqrt(aa * bb))) if aa > 0 and bb > 0 else 1.0
    if abs(dot) > SLERP_DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    out = torch.empty_like(a)
    for s in blocks:
        out[s] = a[s].double() * ca + b[s].double() * cb
    return out.reshape(base.shape)


def _family_method(name: str, member: TaskArithmetic) -> Method:
    return Method(
        name,
        member,
        needs_base=True,
        model_params={"weight": None, **member.model_params},
        global_params={
            "normalize": member.normalize,
            "rescale": member.rescale,
            "lambda": 1.0,
            "int8_mask": False,
        },
        random=member.random,
    )


METHODS: dict[str, Method] = {
    **{name: _family_method(name, member) for name, member in FAMILY.items()},
    "linear": Method("linear", linear, False, {"weight": None}, {"normalize": True}),
    "slerp": Method("slerp", slerp, True, {}, {"t": None}),
}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def call(
    method: Method,
    base: Tensor | None,
    models: Sequence[Tensor],
    model_params: dict[str, list[float]],
    global_params: dict[str, Any],
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """Run ``method`` with parameters as the plan resolved them (config key names)."""
    kwargs: dict[str, Any] = {k: v for k, v in model_params.items() if k in method.model_params}
    for key, value in global_params.items():
        if key == "int8_mask":  # memory layout of mergekit's mask only; results are identical
            continue
        kwargs["lambda_" if key == "lambda" else key] = value
    if method.random:
        kwargs.update(seed=seed, tensor_name=tensor_name)
    return method.fn(base, models, **kwargs)
