"""Ray Tune search over T3's coefficient rule (see nexus_ray/tuning/t3_search.py, or --help).

python tune/t3_search.py --config tune/configs/t3-zoo.yaml
"""

from nexus_ray.tuning.t3_search import main

if __name__ == "__main__":
    raise SystemExit(main())
