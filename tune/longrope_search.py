"""Ray Tune search over LongRoPE's per-pair factors (see nexus_ray/tuning/longrope_search.py, or --help).

python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml
ray job submit --working-dir . -- python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml
"""

from nexus_ray.tuning.longrope_search import main

if __name__ == "__main__":
    raise SystemExit(main())
