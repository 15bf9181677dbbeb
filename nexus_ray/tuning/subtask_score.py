"""Greedy accuracy of a (merged) model on the merge sub-tasks' held-out sets.

The objective of the merge search (``nexus_ray.tuning.merge_search``) and of the zoo merge
table (``benchmarks/merge_zoo.py``); the sub-tasks themselves are ``nexus_ray.tasks.subtasks``.
"""

from __future__ import annotations

from pathlib import Path

from nexus_ray.engines.base import GenerationParams
from nexus_ray.engines.hf import HFPolicyEngine
from nexus_ray.engines.t3 import T3PolicyEngine
from nexus_ray.tasks import arith
from nexus_ray.tasks.subtasks import SUBTASKS, eval_set


def count_correct(engine: HFPolicyEngine | T3PolicyEngine, problems: list[arith.Problem]) -> int:
    """How many of ``problems`` the engine's greedy decode solves (every step checked)."""
    if not problems:
        return 0
    params = GenerationParams(n=1, temperature=0.0, max_tokens=200, seed=0)
    results = engine.generate_sync([p.prompt for p in problems], params)
    return sum(arith.check(p.expression, r.completions[0].text).correct for p, r in zip(problems, results))


def score(model_dir: str | Path, n: int = 100, names: tuple[str, ...] = tuple(SUBTASKS)) -> dict[str, float]:
    """Greedy accuracy of the model at ``model_dir`` on ``n`` held-out problems per sub-task."""
    engine = HFPolicyEngine(Path(model_dir))
    try:
        return {name: count_correct(engine, eval_set(name, n)) / n for name in names}
    finally:
        engine.shutdown()
