"""Merge fine-tuned models from a mergekit-style YAML (what `nexus-ray merge` runs).

    nexus-ray merge examples/merge-ties-zoo.yaml /tmp/merged --workers 2
    ray job submit --working-dir . -- python -m nexus_ray.jobs.merge config.yaml /shared/out --workers 8

Methods: linear, task_arithmetic, ties, dare_ties/linear, della(_linear), breadcrumbs(_ties),
slerp. Reads the same YAML as mergekit-yaml and gives the same tensors (defaults included).
Example (ties of two zoo experts on the zoo base):

  merge_method: ties
  base_model: arith-policy
  models:
    - {model: arith-expert-addsub, parameters: {weight: 1.0, density: 0.5}}
    - {model: arith-expert-mul, parameters: {weight: 1.0, density: 0.5}}
  dtype: float32

Parameters may be numbers, gradients over layers ([0, 0.5, 1]) or {filter, value} lists.
Everything is checked before anything is written; the output is written to a hidden temp dir
and renamed when complete. A merge runs in this process on every core (fused kernels).
--workers N spreads the tensors over the nodes of a Ray cluster (the session of `ray job
submit`, or RAY_ADDRESS) as tasks of CPUs/N cores each; the driver writes every byte, and the
model paths must be readable at the same path on every node (a shared filesystem). On one
machine --workers N merges in this process: Ray would only add start-up on the same cores.
Exit status 2 and a one-line message on a bad config or input.
"""

from __future__ import annotations

import argparse
import sys

from nexus_ray.merge.plan import MergeConfigError
from nexus_ray.merge.run import MergeError, merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus-ray merge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config", help="mergekit-style YAML: merge_method, base_model, models, parameters")
    parser.add_argument("out", help="output directory (must not exist unless --overwrite)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray tasks in flight over a cluster's nodes (one machine: in-process)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of dare_* and della* random masks")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        stats = merge(args.config, args.out, workers=args.workers, seed=args.seed, overwrite=args.overwrite)
    except (MergeConfigError, MergeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mb = stats.bytes_written / 1e6
    print(f"merged {stats.tensors} tensors ({mb:.1f} MB) into {stats.out} in {stats.seconds:.1f}s")
    print(f"in {stats.where}")
    for node, (count, nbytes) in sorted((stats.per_node or {}).items()):
        print(f"  node {node}: {count} tensors, {nbytes / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
