"""Ray Tune search over a merge's coefficients: per-model weight and density, lambda, method.

    python tune/merge_search.py --config tune/configs/merge-zoo.yaml
    ray job submit --working-dir . -- python tune/merge_search.py --config tune/configs/merge-zoo.yaml

Each trial merges the experts straight into the weights of its scoring engine, in memory
(``in_memory: true``, the default: ``nexus_ray.merge.run.merge_into``, the numerics of the
on-disk merge; the trial process and its engine are kept from trial to trial), or with
``in_memory: false`` into node-local scratch space, loaded back from disk; then it scores the
merged model by greedy decoding on held-out problems of every sub-task, on growing subsets
(``problems``: the ASHA rungs), so ASHA stops poor trials after the first few dozen problems.
The searcher is Optuna's TPE, seeded, its first trial the default TIES merge; the methods it
chooses among are ties, dare_ties and della by default (linear and task_arithmetic on request).
At the end the best config is merged again, on disk whatever ``in_memory`` says, and re-scored
on the full set (the reported best must match), and the search writes ``best-merge.yaml``
(mergekit-compatible), ``trials.csv`` (with each trial's ``merge_s`` and ``score_s``),
``summary.json`` and ``search.png`` next to the experiment. Run the same command again to
resume it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from nexus_ray.tasks.subtasks import SUBTASKS, eval_set
from nexus_ray.tuning.common import (
    SearchError,
    SearchSettings,
    fit,
    output_dir,
    plot_search,
    search_main,
    trials_in_order,
    trials_to_reach,
)

Method = Literal["ties", "dare_ties", "della", "linear", "task_arithmetic"]
SPARSE = ("ties", "dare_ties", "della")  # the methods that read density


class MergeSearchConfig(SearchSettings):
    name: str = "merge-search"
    base_model: str = Field(description="zoo name or model directory the experts were fine-tuned from")
    models: list[str] = Field(min_length=2, description="the experts (zoo names or model directories)")
    methods: list[Method] = Field(default_factory=lambda: ["ties", "dare_ties", "della"], min_length=1)
    weight: tuple[float, float] = (0.1, 1.0)
    density: tuple[float, float] = (0.2, 0.95)
    lambda_: tuple[float, float] = Field((0.3, 1.4), alias="lambda")
    objective: dict[str, float] | None = Field(None, description="sub-task weights (default: the mean)")
    problems: list[int] = Field(
        default_factory=lambda: [25, 50, 100], description="ASHA rungs, problems per sub-task"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    in_memory: bool = Field(
        True,
        description="merge into the trial's scoring engine in place (no files; bit-equal to false), "
        "or false: merge to disk and load it, as a scorer in another process would",
    )

    @model_validator(mode="after")
    def _ranges(self) -> MergeSearchConfig:
        for key, (lo, hi) in (("weight", self.weight), ("density", self.density), ("lambda", self.lambda_)):
            if not 0 < lo <= hi:
                raise ValueError(f"{key}: expected 0 < low <= high, got ({lo}, {hi})")
        if not 0 < self.density[0] <= self.density[1] < 1:
            raise ValueError(f"density must lie in (0, 1) (della needs room around it), got {self.density}")
        if sorted(self.problems) != self.problems or self.problems[0] < 1:
            raise ValueError(f"problems must be increasing positive counts, got {self.problems}")
        unknown = sorted(set(self.objective or {}) - set(SUBTASKS))
        if unknown:
            raise ValueError(f"objective names unknown sub-tasks {unknown}; known: {', '.join(SUBTASKS)}")
        return self


def merge_config(cfg: MergeSearchConfig, point: dict) -> dict:
    """A trial's point as a mergekit-style config (what ``best-merge.yaml`` holds)."""
    method = point["method"]
    models = []
    for i, model in enumerate(cfg.models):
        params = {"weight": round(point[f"weight_{i}"], 4)}
        if method in SPARSE:
            density = round(point[f"density_{i}"], 4)
            params["density"] = density
            if method == "della":  # mergekit needs 0 < density - epsilon and density + epsilon < 1
                params["epsilon"] = round(min(0.15, 0.49 * min(density, 1 - density)), 4)
        models.append({"model": model, "parameters": params})
    out = {"merge_method": method, "base_model": cfg.base_model, "models": models, "dtype": cfg.dtype}
    if method != "linear":
        out["parameters"] = {"lambda": round(point["lambda"], 4)}
    return out


def objective(accuracy: dict[str, float], weights: dict[str, float] | None) -> float:
    weights = weights or {k: 1.0 for k in accuracy}
    return sum(weights[k] * accuracy[k] for k in weights) / sum(weights.values())


def score(model_dir: Path, rungs: list[int], weights: dict[str, float] | None, report=None) -> dict:
    """Greedy accuracy per sub-task on growing prefixes of the held-out sets; ``report`` is
    called after each rung (Tune's, in a trial). Returns the last rung's metrics."""
    from nexus_ray.engines.hf import HFPolicyEngine

    engine = HFPolicyEngine(model_dir)
    try:
        return score_engine(engine, rungs, weights, report)
    finally:
        engine.shutdown()


def score_engine(engine, rungs: list[int], weights: dict[str, float] | None, report=None) -> dict:
    """``score`` on an engine already built (any with ``generate_sync``: a test-time merge too)."""
    from nexus_ray.tuning.subtask_score import count_correct

    correct = {name: 0 for name in SUBTASKS}
    done, metrics = 0, {}
    for n in rungs:
        for name in SUBTASKS:
            correct[name] += count_correct(engine, eval_set(name, n)[done:n])
        done = n
        accuracy = {name: correct[name] / n for name in SUBTASKS}
        metrics = {
            "objective": objective(accuracy, weights),
            "problems": n,
            **{f"acc_{k}": v for k, v in accuracy.items()},
        }
        if report is not None:
            report(metrics)
    return metrics


_ENGINES: dict[Path, object] = {}


def _trial_engine(base_model: str):
    """The scoring engine of this trial process, built from the base once: trials merge into it
    in place, and Tune's reused actors keep it (and the memory-mapped checkpoints) loaded."""
    from nexus_ray.engines.hf import HFPolicyEngine

    path = _resolve(base_model)
    if path not in _ENGINES:
        _ENGINES[path] = HFPolicyEngine(path)
    return _ENGINES[path]


def _score_timed(engine, cfg: MergeSearchConfig, merge_s: float, report: Callable) -> None:
    """``score_engine`` reporting, with each rung, the trial's merge + load seconds and its scoring
    seconds so far, both timed inside the trial (so in-memory and on-disk trials compare)."""
    start = time.perf_counter()

    def timed(metrics: dict) -> None:
        report(metrics | {"merge_s": merge_s, "score_s": time.perf_counter() - start})

    score_engine(engine, cfg.problems, cfg.objective, report=timed)


def trial(point: dict, search: dict) -> None:
    """One Tune trial: merge (in memory, or into node-local scratch space, not the trial folder,
    which Tune uploads to storage on every report), score rung by rung, clean up."""
    from ray import tune

    from nexus_ray.engines.hf import HFPolicyEngine
    from nexus_ray.merge.run import merge, merge_into

    cfg = MergeSearchConfig.model_validate(search)
    start = time.perf_counter()
    if cfg.in_memory:
        engine = _trial_engine(cfg.base_model)
        merge_into(engine.model, merge_config(cfg, point), seed=cfg.seed)
        _score_timed(engine, cfg, time.perf_counter() - start, tune.report)
        return
    with tempfile.TemporaryDirectory(prefix=f"nexus-merge-{tune.get_context().get_trial_id()}-") as scratch:
        out = Path(scratch) / "merged"
        merge(merge_config(cfg, point), out, workers=1, seed=cfg.seed, progress=False)
        engine = HFPolicyEngine(out)
        try:
            _score_timed(engine, cfg, time.perf_counter() - start, tune.report)
        finally:
            engine.shutdown()


def evaluate_merge(merge_cfg: dict, out: Path, cfg: MergeSearchConfig) -> dict:
    """Merge a config and score it on the full held-out sets (baselines, and the re-check)."""
    from nexus_ray.merge.run import merge

    merge(merge_cfg, out, workers=1, seed=cfg.seed, overwrite=True, progress=False)
    try:
        return score(out, [cfg.problems[-1]], cfg.objective)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def default_ties(cfg: MergeSearchConfig) -> dict:
    """mergekit's usual TIES starting point: weight 1 and density 0.5 per expert, lambda 1."""
    point = {"method": "ties", "lambda": 1.0}
    for i in range(len(cfg.models)):
        point |= {f"weight_{i}": 1.0, f"density_{i}": 0.5}
    return point


def run(cfg: MergeSearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from nexus_ray.merge.plan import build

    for m in [cfg.base_model, *cfg.models]:  # unknown models fail here, before any trial
        build({"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}}]})
    space = {"method": tune.choice(cfg.methods), "lambda": tune.uniform(*cfg.lambda_)}
    for i in range(len(cfg.models)):
        space[f"weight_{i}"] = tune.uniform(*cfg.weight)
        space[f"density_{i}"] = tune.uniform(*cfg.density)
    start = [default_ties(cfg)] if "ties" in cfg.methods else None
    searcher = OptunaSearch(points_to_evaluate=start, seed=cfg.seed)
    rungs = len(cfg.problems)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=rungs, grace_period=1, reduction_factor=2)
    trainable = tune.with_parameters(trial, search=cfg.model_dump(by_alias=True))
    results, _ = fit(trainable, cfg, space, "objective", searcher, scheduler, fresh, cfg.in_memory)

    finished = [r for r in trials_in_order(results) if r.metrics.get("problems") == cfg.problems[-1]]
    if not finished:
        raise SearchError(
            "no trial finished every rung; raise num_samples or lower the early-stopping pressure"
        )
    best = max(finished, key=lambda r: r.metrics["objective"])
    best_cfg = merge_config(cfg, best.config)
    local = output_dir(cfg)
    local.mkdir(parents=True, exist_ok=True)
    scratch = local / "scratch-model"
    recheck = evaluate_merge(best_cfg, scratch, cfg)
    uniform = {
        "merge_method": "linear",
        "base_model": cfg.base_model,
        "dtype": cfg.dtype,
        "models": [{"model": m, "parameters": {"weight": 1.0 / len(cfg.models)}} for m in cfg.models],
    }
    baselines = {
        "uniform linear": evaluate_merge(uniform, scratch, cfg),
        "default ties": evaluate_merge(merge_config(cfg, default_ties(cfg)), scratch, cfg),
    }
    for i, m in enumerate(cfg.models):
        baselines[f"expert {m}"] = score(_resolve(m), [cfg.problems[-1]], cfg.objective)
    ordered = trials_in_order(results)
    values = [r.metrics["objective"] for r in ordered]  # ASHA-stopped trials: their last rung's score
    full = [
        r.metrics["objective"] if r.metrics.get("problems") == cfg.problems[-1] else float("-inf")
        for r in ordered
    ]
    summary = {
        "best": {
            "config": best_cfg,
            "objective": best.metrics["objective"],
            "accuracy": {k[4:]: v for k, v in best.metrics.items() if k.startswith("acc_")},
            "recheck": recheck,
        },
        "baselines": baselines,
        "trials": len(values),
        "finished_all_rungs": len(finished),
        "trials_to_95pct_of_best": trials_to_reach(full),
    }
    (local / "best-merge.yaml").write_text(yaml.safe_dump(best_cfg, sort_keys=False))
    results.get_dataframe().to_csv(local / "trials.csv", index=False)
    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    coefficients = {k: [r.config[k] for r in ordered] for k in sorted(space) if k != "method"}
    plot_search(
        values,
        coefficients,
        {k: v["objective"] for k, v in baselines.items()},
        f"merge search: {cfg.name}",
        local / "search.png",
    )
    print(
        f"\nbest ({best_cfg['merge_method']}): objective {best.metrics['objective']:.3f}, "
        f"re-scored {recheck['objective']:.3f}; "
        + ", ".join(f"{k} {v['objective']:.3f}" for k, v in baselines.items())
    )
    print(f"wrote {local / 'best-merge.yaml'}, trials.csv, summary.json, search.png")
    return summary


def _resolve(model: str) -> Path:
    from nexus_ray.zoo.registry import resolve

    return resolve(model)


def main(argv: list[str] | None = None) -> int:
    return search_main(
        argv, "tune/merge_search.py", __doc__, MergeSearchConfig, run, "tune/configs/merge-zoo.yaml"
    )
