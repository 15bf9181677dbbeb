"""T3's test-time merge coefficients, and the merged weights they give.

T3 ("Test-Time Model Merging", Imam et al., 2025) merges a base and a fine-tuned expert per
input without labels: lambda(x) = lambda_min + (lambda_max - lambda_min) * sigmoid(gamma *
JS(x)), JS the Jensen-Shannon divergence between the two models' output distributions on x;
its batch-wise variant computes one coefficient for a whole batch. Here x is a prompt and the
distributions are the next-token distributions at its last position.

Several experts: expert i gets its own coefficient from JS_i, its divergence from the base on
the prompt, i.e. the paper's two-model rule applied to each (base, expert) pair. JS_i says how
far fine-tuning moved expert i on this very input, which is what separates the experts; a
generalized JS across all the models would give one number for the prompt and could not say
which expert to weight.

With a static merge (``scaled_static``), the coefficients modulate a searched merge instead of
replacing it: expert i's weight in that merge's config is multiplied by lambda_i / mean(lambda),
so equal coefficients give exactly the static merge and a prompt the rule routes to one expert
gets that expert's share of the merge raised and the others' lowered, with the static merge's
method (e.g. DARE-TIES), densities and lambda kept. Otherwise the merged weights are task
arithmetic, base + sum_i lambda_i * (expert_i - base); with ``normalize`` the task vectors are
divided by sum_i lambda_i (mergekit's ``normalize``), so the merge is a soup of the experts whose
shares follow the coefficients (all coefficients equal: exactly the uniform soup). JS is in bits
(0 for identical distributions, 1 for disjoint ones), so gamma's scale does not depend on the
vocabulary. The
sign of gamma is a choice the paper leaves implicit: gamma > 0 weights an expert more where it
disagrees with the base, gamma < 0 less (on the zoo experts the one on its own sub-task agrees
with the base at the first answer token and the other drifts; ``benchmarks/t3_merge.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from nexus_ray.merge import methods


def js_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits (float64) between the rows of two logit matrices [B, V] -> [B]."""
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    m = 0.5 * (p + q)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a)).sum(-1)

    return ((0.5 * kl(p, m) + 0.5 * kl(q, m)) / math.log(2)).clamp(0.0, 1.0)


def t3_lambda(js: Tensor, lambda_min: float, lambda_max: float, gamma: float) -> Tensor:
    """The paper's coefficient for divergences ``js`` (any shape)."""
    return lambda_min + (lambda_max - lambda_min) * torch.sigmoid(gamma * js)


def divergences(base_logits: Tensor, expert_logits: Sequence[Tensor]) -> Tensor:
    """JS_i per prompt and expert, [B, K], from next-token logits [B, V] of the base and each expert."""
    return torch.stack([js_divergence(base_logits, e) for e in expert_logits], dim=1)


def coefficients(js: Tensor, lambda_min: float, lambda_max: float, gamma: float, per_batch: bool) -> Tensor:
    """Coefficients [B, K] for divergences [B, K]: per prompt (T3), or with ``per_batch`` one row
    from the batch's mean divergence, repeated (T3's batch variant: one merge per batch)."""
    if per_batch:
        js = js.mean(dim=0, keepdim=True).expand_as(js)
    return t3_lambda(js, lambda_min, lambda_max, gamma)


def scaled_static(config: dict, lambdas: Sequence[float]) -> dict:
    """The static merge ``config`` (a mergekit-style dict, its ``models`` in the experts' order)
    with expert i's weight multiplied by lambdas[i] / mean(lambdas) (by 1 when they sum to 0)."""
    mean = sum(lambdas) / len(lambdas)
    models = []
    for entry, lam in zip(config["models"], lambdas):
        params = dict(entry.get("parameters") or {})
        params["weight"] = float(params.get("weight", 1.0)) * (lam / mean if mean > 0 else 1.0)
        models.append({**entry, "parameters": params})
    return {**config, "models": models}


def merge_weights(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    lambdas: Sequence[float],
    normalize: bool,
) -> dict[str, Tensor]:
    """base + sum_i lambdas[i] * (experts[i] - base) per tensor, through nexus_ray.merge's task
    arithmetic (divided by sum_i lambdas[i] when ``normalize``)."""
    weight = [float(x) for x in lambdas]
    return {
        name: methods.task_arithmetic(b, [e[name] for e in experts], weight, normalize=normalize)
        for name, b in base.items()
    }
