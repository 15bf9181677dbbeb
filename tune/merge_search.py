"""Ray Tune search over merge coefficients (see nexus_ray/tuning/merge_search.py, or --help).

python tune/merge_search.py --config tune/configs/merge-zoo.yaml
ray job submit --working-dir . -- python tune/merge_search.py --config tune/configs/merge-zoo.yaml
"""

from nexus_ray.tuning.merge_search import main

if __name__ == "__main__":
    raise SystemExit(main())
