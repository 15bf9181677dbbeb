"""Merge-search trial time, in memory against on disk, on the zoo search.

    python benchmarks/merge_trials.py                  # 4 trials each, one at a time, seed 0

Runs ``tune/configs/merge-zoo.yaml`` twice with the same seed, ``in_memory: true`` then
``false``, one trial at a time (so both modes run the same trials), and prints each trial's
``merge_s`` (merge + load: in memory, the merge into the kept engine, the first trial also
building it; on disk, the merge written to scratch plus the engine loading it) and ``score_s``,
both timed inside the trial, and the whole search's wall time (the same baselines and re-check
in both modes; on disk, every trial also starts a fresh trial process, in memory Tune reuses
one). Writes ``benchmarks/results/merge/trials.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from nexus_ray.tuning.merge_search import MergeSearchConfig, run

ROOT = Path(__file__).resolve().parent.parent


def search_trials(in_memory: bool, num_samples: int, storage: Path) -> pd.DataFrame:
    """One zoo search in the given mode; its trials' method, rungs and timings."""
    raw = yaml.safe_load((ROOT / "tune" / "configs" / "merge-zoo.yaml").read_text())
    name = f"merge-trials-{'memory' if in_memory else 'disk'}"
    raw |= {"name": name, "num_samples": num_samples, "max_concurrent_trials": 1, "in_memory": in_memory}
    start = time.perf_counter()
    run(MergeSearchConfig.model_validate(raw | {"storage_path": str(storage)}), fresh=True)
    trials = pd.read_csv(storage / name / "trials.csv")
    trials["search_s"] = time.perf_counter() - start
    trials = trials.sort_values("timestamp")  # one at a time: the order they ran in
    return trials[["trial_id", "config/method", "problems", "objective", "merge_s", "score_s", "search_s"]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "merge" / "trials.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="merge-trials-") as storage:
        modes = {
            mode: search_trials(mode == "memory", args.trials, Path(storage)) for mode in ("memory", "disk")
        }
    print("| trial | method | problems | in memory: merge_s / score_s | on disk: merge_s / score_s |")
    print("|---|---|---|---|---|")
    memory, disk = modes["memory"], modes["disk"]
    for i in range(len(memory)):
        m, d = memory.iloc[i], disk.iloc[i]
        print(
            f"| {i + 1} | {m['config/method']} | {m['problems']} | {m['merge_s']:.3f} / {m['score_s']:.1f} "
            f"| {d['merge_s']:.3f} / {d['score_s']:.1f} |"
        )
    for mode, t in modes.items():
        print(
            f"{mode}: merge_s mean {t['merge_s'].mean():.3f} s, score_s mean {t['score_s'].mean():.1f} s, "
            f"whole search {t['search_s'].iloc[0]:.0f} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({k: v.to_dict(orient="records") for k, v in modes.items()}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
