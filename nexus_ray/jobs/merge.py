"""Merge job: the entry point for `ray job submit` (and what `nexus-ray merge` runs).

    ray job submit --working-dir . -- python -m nexus_ray.jobs.merge config.yaml /shared/out --workers 8

Reads a mergekit-style YAML, merges tensor by tensor as Ray tasks on the cluster at
RAY_ADDRESS (the model paths must be on a filesystem every node sees) and commits the output
directory atomically. Exit status 2 and a one-line message on a bad config or input.
"""

from __future__ import annotations

import argparse
import sys

from nexus_ray.merge.plan import PlanError
from nexus_ray.merge.run import MergeError, merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("config", help="mergekit-style YAML")
    parser.add_argument("out", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--workers", type=int, default=1, help="parallel Ray tasks (1 = in this process)")
    parser.add_argument("--seed", type=int, default=0, help="seed of DARE/DELLA's random masks")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = merge(args.config, args.out, workers=args.workers, seed=args.seed, overwrite=args.overwrite)
    except (PlanError, MergeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged {stats.tensors} tensors ({stats.bytes_written / 1e6:.1f} MB) into {stats.out} in {stats.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
