"""Ray Tune search over T3's coefficient rule: lambda_min, lambda_max, gamma (and normalize).

    python tune/t3_search.py --config tune/configs/t3-zoo.yaml

The objective, held-out problems and ASHA rungs are the merge search's
(``nexus_ray.tuning.merge_search``): each trial builds a per-request T3 engine over the base and
the experts (``nexus_ray.engines.t3``) and scores its greedy decodes on every sub-task. The
searcher is Optuna's TPE, seeded, its first trials the configs in ``start``. At the end the best
point is scored again (it must match) and the search writes ``best-t3.yaml`` (a policy's
``merge`` section), ``trials.csv``, ``summary.json`` and ``search.png`` next to the experiment.
Run the same command again to resume it.
"""

from __future__ import annotations

import json
from typing import Literal

import yaml
from pydantic import Field, model_validator

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
from nexus_ray.tuning.merge_search import score_engine


class T3SearchConfig(SearchSettings):
    name: str = "t3-search"
    base_model: str = Field(description="zoo name or model directory the experts were fine-tuned from")
    models: list[str] = Field(min_length=1, description="the experts (zoo names or model directories)")
    method: Literal["t3", "t3_batch"] = "t3"
    lambda_min: tuple[float, float] = (-1.0, 1.0)
    lambda_span: tuple[float, float] = Field((0.0, 3.0), description="lambda_max - lambda_min")
    gamma: tuple[float, float] = (-300.0, 50.0)
    normalize: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    start: list[dict] = Field(default_factory=list, description="points the searcher tries first")
    objective: dict[str, float] | None = Field(None, description="sub-task weights (default: the mean)")
    problems: list[int] = Field(default_factory=lambda: [50, 100], description="ASHA rungs per sub-task")

    @model_validator(mode="after")
    def _ranges(self) -> T3SearchConfig:
        for key, (lo, hi) in (
            ("lambda_min", self.lambda_min),
            ("lambda_span", self.lambda_span),
            ("gamma", self.gamma),
        ):
            if lo > hi:
                raise ValueError(f"{key}: expected low <= high, got ({lo}, {hi})")
        if self.lambda_span[0] < 0:
            raise ValueError(f"lambda_span must be >= 0, got {self.lambda_span}")
        if sorted(self.problems) != self.problems or self.problems[0] < 1:
            raise ValueError(f"problems must be increasing positive counts, got {self.problems}")
        return self


def merge_section(cfg: T3SearchConfig, point: dict) -> dict:
    """A trial's point as a policy's ``merge`` section (what ``best-t3.yaml`` holds)."""
    low = round(point["lambda_min"], 4)
    return {
        "method": cfg.method,
        "lambda_min": low,
        "lambda_max": round(low + point["lambda_span"], 4),
        "gamma": round(point["gamma"], 3),
        "normalize": bool(point["normalize"]),
    }


def evaluate(cfg: T3SearchConfig, merge: dict, rungs: list[int], report=None) -> dict:
    """Build the T3 engine for ``merge`` and score it rung by rung."""
    from nexus_ray.config import EngineConfig
    from nexus_ray.engines import build_policy_engine

    engine = build_policy_engine(EngineConfig(model=cfg.base_model, experts=cfg.models, merge=merge))
    try:
        return score_engine(engine, rungs, cfg.objective, report)
    finally:
        engine.shutdown()


def trial(point: dict, search: dict) -> None:
    from ray import tune

    cfg = T3SearchConfig.model_validate(search)
    evaluate(cfg, merge_section(cfg, point), cfg.problems, report=tune.report)


def run(cfg: T3SearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = {
        "lambda_min": tune.uniform(*cfg.lambda_min),
        "lambda_span": tune.uniform(*cfg.lambda_span),
        "gamma": tune.uniform(*cfg.gamma),
        "normalize": tune.choice(cfg.normalize),
    }
    searcher = OptunaSearch(points_to_evaluate=cfg.start or None, seed=cfg.seed)
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=len(cfg.problems), grace_period=1, reduction_factor=2
    )
    trainable = tune.with_parameters(trial, search=cfg.model_dump(by_alias=True))
    results, _ = fit(trainable, cfg, space, "objective", searcher, scheduler, fresh)

    ordered = trials_in_order(results)
    finished = [r for r in ordered if r.metrics.get("problems") == cfg.problems[-1]]
    if not finished:
        raise SearchError("no trial finished every rung; raise num_samples")
    best = max(finished, key=lambda r: r.metrics["objective"])
    best_merge = merge_section(cfg, best.config)
    recheck = evaluate(cfg, best_merge, [cfg.problems[-1]])
    values = [r.metrics["objective"] for r in ordered]
    full = [r.metrics["objective"] if r in finished else float("-inf") for r in ordered]
    summary = {
        "best": {
            "merge": best_merge,
            "objective": best.metrics["objective"],
            "accuracy": {k[4:]: v for k, v in best.metrics.items() if k.startswith("acc_")},
            "recheck": recheck,
        },
        "trials": len(values),
        "finished_all_rungs": len(finished),
        "trials_to_95pct_of_best": trials_to_reach(full),
        "points": [
            {
                **merge_section(cfg, r.config),
                "objective": r.metrics["objective"],
                "problems": r.metrics["problems"],
            }
            for r in ordered
        ],
    }
    local = output_dir(cfg)
    local.mkdir(parents=True, exist_ok=True)
    (local / "best-t3.yaml").write_text(yaml.safe_dump(best_merge, sort_keys=False))
    results.get_dataframe().to_csv(local / "trials.csv", index=False)
    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    coefficients = {k: [float(r.config[k]) for r in ordered] for k in ("lambda_min", "lambda_span", "gamma")}
    plot_search(values, coefficients, {}, f"T3 search: {cfg.name}", local / "search.png")
    print(
        f"\nbest {best_merge}: objective {best.metrics['objective']:.3f}, "
        f"re-scored {recheck['objective']:.3f}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    return search_main(argv, "tune/t3_search.py", __doc__, T3SearchConfig, run, "tune/configs/t3-zoo.yaml")
