"""Ray Tune search over YaRN factors (see nexus_ray/tuning/yarn_search.py, or --help).

python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml
ray job submit --working-dir . -- python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml
"""

from nexus_ray.tuning.yarn_search import main

if __name__ == "__main__":
    raise SystemExit(main())
