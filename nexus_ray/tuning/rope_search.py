"""What the RoPE scaling searches (YaRN, LongRoPE) share: the objective, the trial, the outcome.

The objective comes from ``nexus_ray.rope.evaluate`` at the target length: passkey accuracy
minus ``ppl_weight`` x a log perplexity (of whole documents, or of the passkey's answer tokens:
LongRoPE2's needle perplexity), with a penalty when short-context perplexity (at the model's
trained length, under the same scaling) rises more than ``short_ppl_bound`` over the unscaled
model. Trials whose scalings are the same (a search's ``key_of``) are evaluated once: a result
cache in the experiment folder serves the duplicates. ``search`` writes ``best-rope.yaml`` (the
``rope_parameters`` block for the model's config), ``trials.csv``, ``summary.json`` and
``search.png`` into ``storage_path/<name>-<target_length>``; the best is re-evaluated.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from nexus_ray.config import RopeConfig
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


class RopeSearchConfig(SearchSettings):
    model: str = Field("rope-base", description="zoo name or model directory")
    target_length: int = Field(description="tokens the scaled model must handle")
    target_perplexity: Literal["documents", "needle"] = Field(
        "documents", description="the perplexity in the objective: whole documents, or the passkey's answer"
    )
    ppl_weight: float = Field(0.5, ge=0)
    short_ppl_bound: float = Field(
        0.10, ge=0, description="allowed relative rise of short-context perplexity"
    )
    documents: int = Field(4, ge=1, description="perplexity documents per length")
    passkey_trials: int = Field(8, ge=1, description="passkey examples per (length, depth)")


RopeOf = Callable[[Any, dict], RopeConfig]
KeyOf = Callable[[Any, RopeConfig], list]


def trained_length(model: str) -> int:
    """The context the model was trained at (its ``max_position_embeddings``)."""
    from nexus_ray.zoo.registry import resolve

    return json.loads((resolve(model) / "config.json").read_text())["max_position_embeddings"]


def model_base(model: str):
    """The model's rotary geometry (``RopeBase``)."""
    from nexus_ray.rope.apply import load_config as load_model_config
    from nexus_ray.rope.scaling import RopeBase
    from nexus_ray.zoo.registry import resolve

    return RopeBase.from_hf_config(load_model_config(resolve(model), None))


def measure(cfg: RopeSearchConfig, rope: RopeConfig | None, short_ppl_unscaled: float | None) -> dict:
    """The objective's parts for one scaling (None: the unscaled model)."""
    from nexus_ray.rope.evaluate import evaluate
    from nexus_ray.zoo.registry import resolve

    original = trained_length(cfg.model)
    out = evaluate(
        resolve(cfg.model),
        rope,
        [original, cfg.target_length],
        documents_per_length=cfg.documents,
        trials=cfg.passkey_trials,
        seed=cfg.seed,
    )
    short = out["perplexity"][str(original)]
    ppl = out["perplexity"][str(cfg.target_length)]
    passkey = out["passkey"][str(cfg.target_length)]
    log_ppl = passkey["answer_nll"] if cfg.target_perplexity == "needle" else math.log(ppl)
    value = passkey["accuracy"] - cfg.ppl_weight * log_ppl
    reference = short_ppl_unscaled if short_ppl_unscaled is not None else short
    excess = short / reference - 1 - cfg.short_ppl_bound
    if excess > 0:
        value -= 1.0 + excess  # over the bound: worse than any feasible point
    return {
        "objective": value,
        "ppl_target": ppl,
        "needle_ppl_target": math.exp(passkey["answer_nll"]),
        "passkey_target": passkey["accuracy"],
        "ppl_short": short,
        "short_ppl_rise": short / reference - 1,
    }


def trial(
    point: dict,
    search: dict,
    config: type[RopeSearchConfig],
    rope_of: RopeOf,
    key_of: KeyOf,
    short_ppl_unscaled: float,
    cache_dir: str,
) -> None:
    """One Tune trial: the point's scaling measured, or its cached result if already measured."""
    from ray import tune

    cfg = config.model_validate(search)
    rope = rope_of(cfg, point)
    key = hashlib.sha256(json.dumps(key_of(cfg, rope)).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{key}.json"
    if cache.exists():
        tune.report(json.loads(cache.read_text()) | {"cached": True})
        return
    metrics = measure(cfg, rope, short_ppl_unscaled) | {"attention_factor": rope.attention_factor}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics))
    tune.report(metrics | {"cached": False})


def for_target(cfg: RopeSearchConfig) -> RopeSearchConfig:
    """One experiment per target length (``--target-length 1024`` does not resume the 512 search);
    a target within the trained context is an error."""
    original = trained_length(cfg.model)
    if cfg.target_length <= original:
        raise SearchError(
            f"target_length {cfg.target_length} is within the model's trained {original} tokens"
        )
    return cfg.model_copy(update={"name": f"{cfg.name}-{cfg.target_length}"})


def search(
    cfg: RopeSearchConfig,
    rope_of: RopeOf,
    key_of: KeyOf,
    space: dict,
    searcher: Any,
    baselines: dict[str, dict],
    title: str,
    fresh: bool,
) -> dict:
    """Run (or resume) the search, re-evaluate its best and write the outcome files.

    ``baselines`` must hold "no scaling": its short-context perplexity is the bound's reference."""
    from ray import tune

    from nexus_ray.rope.apply import rope_parameters

    unscaled = baselines["no scaling"]
    local = output_dir(cfg)
    trainable = tune.with_parameters(
        trial,
        search=cfg.model_dump(),
        config=type(cfg),
        rope_of=rope_of,
        key_of=key_of,
        short_ppl_unscaled=unscaled["ppl_short"],
        cache_dir=str(local / "dedupe-cache"),
    )
    results, _ = fit(trainable, cfg, space, "objective", searcher, None, fresh)
    ordered = trials_in_order(results)
    if not ordered:
        raise SearchError("no trial finished")
    best = max(ordered, key=lambda r: r.metrics["objective"])
    best_rope = rope_of(cfg, best.config)
    recheck = measure(cfg, best_rope, unscaled["ppl_short"])
    original = trained_length(cfg.model)
    block = {
        "rope_parameters": rope_parameters(best_rope, model_base(cfg.model)),
        "max_position_embeddings": max(cfg.target_length, original),
    }
    values = [r.metrics["objective"] for r in ordered]
    shown = ("objective", "ppl_target", "needle_ppl_target", "passkey_target", "ppl_short")
    summary = {
        "target_length": cfg.target_length,
        "trained_length": original,
        "best": {
            "config": {k: best.config[k] for k in space},
            "rope": best_rope.model_dump(exclude_none=True),
            "metrics": {k: best.metrics[k] for k in shown},
            "recheck": recheck,
        },
        "baselines": baselines,
        "trials": len(values),
        "evaluated": sum(not r.metrics.get("cached", False) for r in ordered),
        "trials_to_95pct_of_best": trials_to_reach(values),
    }
    local.mkdir(parents=True, exist_ok=True)
    (local / "best-rope.yaml").write_text(yaml.safe_dump(block, sort_keys=False))
    results.get_dataframe().to_csv(local / "trials.csv", index=False)
    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    plot_search(
        values,
        {k: [r.config[k] for r in ordered] for k in space},
        {k: v["objective"] for k, v in baselines.items()},
        f"{title}: {cfg.model} at {cfg.target_length} tokens",
        local / "search.png",
    )
    print(
        f"\nbest: objective {best.metrics['objective']:.3f} (re-evaluated {recheck['objective']:.3f}); "
        + ", ".join(f"{k} {v['objective']:.3f}" for k, v in baselines.items())
    )
    print(f"wrote {local / 'best-rope.yaml'}, trials.csv, summary.json, search.png")
    return summary


def rope_search_main(argv: list[str] | None, kind: str, doc: str | None, model: type, run: Callable) -> int:
    """The command line of ``tune/<kind>_search.py``: the common flags plus ``--target-length``."""
    return search_main(
        argv,
        f"tune/{kind}_search.py",
        doc,
        model,
        run,
        f"tune/configs/{kind}-zoo.yaml",
        {"target_length": (int, "overrides target_length")},
    )
