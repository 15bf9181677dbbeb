"""Difficulty estimators: how hard a prompt is, from what a cheap probe of it costs and shows.

Every estimator runs a probe first and the ledger pays for it; the probe's samples then serve
as the first candidates of whatever plan follows, so they are not wasted.

- ``probe``: the greedy decode and k-1 samples, PRM-scored; hard when their mean final score
  is low and their answers disagree.
- ``surprisal``: the greedy decode alone, no PRM; hard when the policy was unsure of its own
  tokens (mean token surprisal), the seed's signal.
- ``learned``: a logistic regression on prompt-side features and the greedy probe's statistics
  (surprisal, length), fit on calibration problems to predict pass@1. It uses the surprisal
  estimator's probe: on the zoo a PRM-scored probe costs ~9x the greedy decode, more than the
  ranking it adds is worth (benchmarks/RESULTS.md).
- ``oracle``: 1 - pass@1 measured on a recorded pool; an upper bound for benchmarks, never
  available online.

Difficulty is a number where higher means harder; the table bins it by calibration quantiles.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nexus_ray.planner.sampling import Sample, Sampler
from nexus_ray.search.ledger import ComputeLedger

EstimatorName = Literal["probe", "surprisal", "learned", "oracle"]


class ProbeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(1, ge=1, le=16, description="the greedy decode plus samples-1 temperature-1 samples")
    prm: bool = Field(False, description="score the probe with the PRM")


PROBE_SPECS: dict[EstimatorName, ProbeSpec] = {
    "probe": ProbeSpec(samples=4, prm=True),
    "surprisal": ProbeSpec(samples=1, prm=False),
    "learned": ProbeSpec(samples=1, prm=False),
    "oracle": ProbeSpec(samples=1, prm=False),
}


@dataclass(frozen=True)
class Probe:
    samples: list[Sample]  # the greedy decode first
    scored: bool

    @property
    def agreement(self) -> float:
        """Share of the probe's answers that equal the most common one."""
        counts = Counter(s.answer for s in self.samples)
        return counts.most_common(1)[0][1] / len(self.samples)

    @property
    def unanimous(self) -> bool:
        return len(self.samples) >= 2 and self.samples[0].answer is not None and self.agreement == 1.0

    @property
    def mean_prm(self) -> float:
        return float(np.mean([s.prm or 0.0 for s in self.samples])) if self.scored else 0.0


async def run_probe(sampler: Sampler, spec: ProbeSpec, ledger: ComputeLedger) -> Probe:
    samples = [await sampler.greedy(ledger)]
    samples += await sampler.sample(spec.samples - 1, ledger)
    if spec.prm:
        samples = await sampler.score(samples, ledger)
    return Probe(samples, spec.prm)


def prompt_features(problem: str) -> list[float]:
    """What the prompt alone says: operators, digits, parentheses, length."""
    return [
        float(len(re.findall(r"[+\-*/]", problem))),
        float(len(re.findall(r"\d", problem))),
        float(problem.count("(")),
        float(len(problem)),
    ]


def probe_features(probe: Probe) -> list[float]:
    greedy = probe.samples[0]
    prms = [s.prm or 0.0 for s in probe.samples] if probe.scored else [0.0]
    return [
        greedy.surprisal,
        float(np.log(greedy.surprisal + 1e-4)),  # surprisal is heavy-tailed: most decodes are near 0
        float(np.mean([s.surprisal for s in probe.samples])),
        probe.agreement,
        float(np.mean(prms)),
        float(np.min(prms)),
        greedy.prm or 0.0,
        float(greedy.tokens),
    ]


def features(problem: str, probe: Probe) -> np.ndarray:
    return np.array(prompt_features(problem) + probe_features(probe), dtype=np.float64)


class LogisticModel(BaseModel):
    """p = sigmoid(w . standardized(x) + b), fit to soft targets (pass@1) with an L2 penalty."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.array(self.mean)) / np.array(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.array(self.weights) + self.bias)))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50) -> LogisticModel:
        """Newton's method on the mean cross-entropy; converges in a few dozen steps."""
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        reg = l2 * np.eye(z.shape[1])
        reg[-1, -1] = 0.0
        for _ in range(steps):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) / len(y) + reg @ w
            hess = (z.T * (p * (1 - p))) @ z / len(y) + reg
            w -= np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        return cls(mean=mean.tolist(), scale=scale.tolist(), weights=w[:-1].tolist(), bias=float(w[-1]))


class Estimator(BaseModel):
    """A named estimator with its probe and, for ``learned``, its fitted model."""

    model_config = ConfigDict(extra="forbid")

    name: EstimatorName
    probe: ProbeSpec
    model: LogisticModel | None = None

    @classmethod
    def named(cls, name: EstimatorName, model: LogisticModel | None = None) -> Estimator:
        if name == "learned" and model is None:
            raise ValueError("the learned estimator needs a fitted model (nexus-ray calibrate fits it)")
        return cls(name=name, probe=PROBE_SPECS[name], model=model)

    def difficulty(self, problem: str, probe: Probe, oracle_pass_at_1: float | None = None) -> float:
        if self.name == "probe":
            return 1.0 - 0.5 * (probe.mean_prm + probe.agreement)
        if self.name == "surprisal":
            return probe.samples[0].surprisal
        if self.name == "learned":
            assert self.model is not None
            return 1.0 - float(self.model.predict(features(problem, probe))[0])
        if oracle_pass_at_1 is None:
            raise ValueError("the oracle estimator needs a recorded pool (benchmarks only, never online)")
        return 1.0 - oracle_pass_at_1


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation with average ranks for ties."""

    def ranks(v: list[float]) -> np.ndarray:
        v_arr = np.asarray(v, dtype=np.float64)
        order = np.argsort(v_arr, kind="stable")
        r = np.empty(len(v_arr))
        r[order] = np.arange(len(v_arr))
        for value in np.unique(v_arr):
            tied = v_arr == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])
