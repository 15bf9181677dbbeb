"""The Serve application (``import_path: nexus_ray.serving.app:build_app`` in deployments/*.yaml).

    serve run deployments/local-cpu.yaml      # or: nexus-ray serve
    curl -s localhost:8000/v1/solve -H 'Content-Type: application/json' \\
        -d '{"problem": "12+7*3-5", "strategy": "weighted", "budget": 8}'

``build_app`` checks everything it can before anything starts (the config, the API-key
variable, the plan table against the models, the task and PRM formats against the model
directories), loads the plan table once and hands it to the
ingress, which hands it to the admission actor. The routes are in ``ingress.py``.
"""

import json

from pydantic import ValidationError
from ray import serve

from nexus_ray.config import ServiceConfig
from nexus_ray.planner.table import load_table
from nexus_ray.serving.http import api_keys
from nexus_ray.serving.ingress import Ingress
from nexus_ray.serving.workers import PolicyWorker, RewardWorker, worker_options


def build_app(args: dict) -> serve.Application:
    """The Serve application for a ``ServiceConfig`` (a Serve config's ``args:`` block)."""
    try:
        config = ServiceConfig.model_validate(args or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid nexus_ray service config: {problems}") from None
    api_keys(config.api_keys_env)  # a missing key variable fails here, not at the first request
    table = None
    if config.planner.table is not None:  # so does a missing, unreadable or stale plan table
        table = load_table(config.planner.table)
        table.check_models(config.policy.model, config.prm.model)
    policy = PolicyWorker.options(**worker_options(config.policy, config.policy_worker)).bind(
        config.policy.model_dump(), config.policy_worker.batching
    )
    prm = RewardWorker.options(**worker_options(config.prm, config.prm_worker)).bind(
        config.prm.model_dump(), config.prm_worker.batching
    )
    ingress = Ingress.options(ray_actor_options={"num_cpus": config.num_cpus})
    return ingress.bind(json.loads(config.model_dump_json()), policy, prm, table)
