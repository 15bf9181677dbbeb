"""What the Tune searches share: config loading with clear errors, a resumable Tuner, plots.

A search is resumable: its experiment lives at ``storage_path/name``; running the same command
again after the driver was killed restores it (``Tuner.restore``) and finishes the trials that
were pending or running, instead of starting over.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nexus_ray.cluster import ray_session

M = TypeVar("M", bound=BaseModel)


class SearchError(ValueError):
    """A search config is missing or invalid; the message names the file and the key."""


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractions share a GPU between trials")


class SearchSettings(BaseModel):
    """The Tune side of a search: how many trials, how many at once, where they are kept."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    num_samples: int = Field(16, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    storage_path: str = Field("results/tune", description="a folder every node sees, or s3://, gs://")
    seed: int = 0


def load_config(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """A search config from YAML, command-line overrides on top; errors name the file and key."""
    from nexus_ray.config import ConfigError, explain, read_yaml

    try:
        raw = read_yaml(Path(path)) | {k: v for k, v in (overrides or {}).items() if v is not None}
        return model.model_validate(raw)
    except ConfigError as err:
        raise SearchError(str(err)) from None
    except ValidationError as err:
        raise SearchError(explain(str(path), model, err)) from None


def search_main(
    argv: list[str] | None,
    prog: str,
    doc: str | None,
    model: type[M],
    run: Callable[[M, bool], Any],
    example: str,
    extra: dict[str, tuple[type, str]] | None = None,
) -> int:
    """A search's command line: ``--config`` plus the overrides every search takes (and its own
    ``extra`` ones: config key -> (type, help)), errors as one line and exit status 2."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help=f"search config YAML (see {example})")
    p.add_argument("--storage", default=None, help="overrides storage_path (a shared folder, s3:// or gs://)")
    p.add_argument("--num-samples", type=int, default=None, help="overrides num_samples")
    for key, (kind, text) in (extra or {}).items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None, help=text)
    p.add_argument(
        "--fresh", action="store_true", help="start over even if the experiment folder holds a search"
    )
    args = p.parse_args(argv)
    overrides = {"storage_path": args.storage, "num_samples": args.num_samples}
    overrides |= {key: getattr(args, key) for key in extra or {}}
    try:
        run(load_config(args.config, model, overrides), args.fresh)
    except (SearchError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    return 0


def storage_uri(storage_path: str) -> str:
    """Tune wants an absolute path or a URI."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def output_dir(settings: SearchSettings) -> Path:
    """Where a search writes its outcome: the experiment folder, or ./results/tune/<name> when
    the experiment lives on cloud storage."""
    root = settings.storage_path if "://" not in settings.storage_path else "results/tune"
    return Path(root).resolve() / settings.name


def fit(
    trainable: Callable,
    settings: SearchSettings,
    param_space: dict,
    metric: str,
    search_alg: Any = None,
    scheduler: Any = None,
    fresh: bool = False,
    reuse_actors: bool = False,
):
    """Run the search, or resume it when its experiment folder already holds one; with
    ``reuse_actors`` a trial process runs trial after trial (what it loaded stays loaded)."""
    from ray import tune

    root = storage_uri(settings.storage_path)
    path = f"{root.rstrip('/')}/{settings.name}"
    wrapped = tune.with_resources(trainable, {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu})
    with ray_session():
        args = (param_space, metric, search_alg, scheduler, fresh, reuse_actors)
        return _fit(wrapped, path, root, settings, *args), path


def _fit(
    wrapped: Any,
    path: str,
    root: str,
    settings: SearchSettings,
    param_space: dict,
    metric: str,
    search_alg: Any,
    scheduler: Any,
    fresh: bool,
    reuse_actors: bool,
):
    from ray import tune

    if not fresh and tune.Tuner.can_restore(path):
        print(f"resuming the search in {path}")
        tuner = tune.Tuner.restore(
            path, trainable=wrapped, resume_unfinished=True, resume_errored=True, param_space=param_space
        )
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=settings.num_samples,
                search_alg=search_alg,
                scheduler=scheduler,
                max_concurrent_trials=settings.max_concurrent_trials,
                reuse_actors=reuse_actors,
            ),
            run_config=tune.RunConfig(name=settings.name, storage_path=root, verbose=1),
        )
    return tuner.fit()


def trials_in_order(results) -> list:
    """Trials that reported, in the order they were created (the counter in Tune's trial folder
    name: ``trial_<id>_<n>_<params>``)."""

    def created(r) -> int:
        match = re.match(r"trial_[0-9a-f]+_(\d+)_", Path(r.path).name)
        return int(match.group(1)) if match else 0

    return sorted((r for r in results if r.metrics), key=created)


def trials_to_reach(values: list[float], fraction: float = 0.95) -> int | None:
    """How many trials, in order, until the running best reaches ``fraction`` of the final best."""
    if not values:
        return None
    target = max(values) * fraction if max(values) > 0 else max(values)
    best = float("-inf")
    for i, v in enumerate(values, 1):
        best = max(best, v)
        if best >= target:
            return i
    return None


def plot_search(
    values: list[float],
    coefficients: dict[str, list[float]],
    baselines: dict[str, float],
    title: str,
    path: Path,
) -> None:
    """Objective vs. trial (with the running best and the baselines), then each coefficient vs. objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(coefficients)
    fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 3.6), squeeze=False)
    ax = axes[0][0]
    xs = list(range(1, len(values) + 1))
    ax.plot(xs, values, "o", label="trial")
    running = [max(values[:i]) for i in xs]
    ax.plot(xs, running, "-", label="best so far")
    for name, v in baselines.items():
        ax.axhline(v, linestyle="--", linewidth=1, label=name, color=None)
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for ax, (name, xs_) in zip(axes[0][1:], coefficients.items()):
        ax.scatter(xs_, values, s=14)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
