from pathlib import Path

import pytest
import yaml

from k8s.serve_config import serve_config_errors
from nexus_ray.config import (
    ConfigError,
    ModelsConfig,
    RewardConfig,
    load_service_config,
    load_yaml,
    local_models,
)
from nexus_ray.planner.table import load_table

ROOT = Path(__file__).parent.parent
DEPLOYMENTS = sorted((ROOT / "deployments").glob("*.yaml"))


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_configs_validate(path):
    cfg, data = load_service_config(path)
    assert cfg.policy.model and cfg.prm.model
    assert data["applications"][0]["import_path"] == "nexus_ray.serving.app:build_app"


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_configs_pass_the_strict_serve_check(path):
    assert serve_config_errors(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_a_deployments_plan_table_was_calibrated_with_its_models(path):
    """The service refuses a table calibrated for other models at start-up: every shipped
    config must name the table of its own models (on vLLM: arith-prm's, ``arith-zoo-line``)."""
    cfg, _ = load_service_config(path)
    if cfg.planner.table is not None:
        load_table(cfg.planner.table).check_models(cfg.policy.model, cfg.prm.model)


def test_the_local_default_checker_depends_on_the_engine():
    """arith-prm-rewrite re-derives steps from next-token probabilities, which vLLM's pooling
    runner does not return: on vLLM the default is arith-prm."""
    assert local_models("hf").prm.model == "arith-prm-rewrite"
    assert local_models("vllm").prm.model == "arith-prm"
    assert local_models("vllm", prm="chat-prm").prm.model == "chat-prm"


def _app(config: dict) -> dict:
    return config["applications"][0]


DEPLOYMENT = "applications[0].deployments[0]"
BROKEN_SERVE = [
    pytest.param(
        lambda c: c.update(proxy_locaton="EveryNode"), "proxy_locaton: unknown field", id="root-typo"
    ),
    pytest.param(
        lambda c: c["http_options"].update(prot=8000), "http_options.prot: unknown field", id="http-typo"
    ),
    pytest.param(
        lambda c: _app(c).update(route_prefx="/"), "applications[0].route_prefx: unknown field", id="app-typo"
    ),
    pytest.param(
        lambda c: _app(c).update(deployments=[{"name": "Ingress", "max_ongoing_request": 3}]),
        f"{DEPLOYMENT}.max_ongoing_request: unknown field",
        id="deployment-typo",
    ),
    pytest.param(
        lambda c: _app(c).update(deployments=[{"name": "Ingress", "ray_actor_options": {"num_gpu": 1}}]),
        f"{DEPLOYMENT}.ray_actor_options.num_gpu: unknown field",
        id="actor-options-typo",
    ),
    pytest.param(
        lambda c: _app(c).update(deployments=[{"name": "Ingress", "autoscaling_config": {"max_replica": 2}}]),
        f"{DEPLOYMENT}.autoscaling_config.max_replica: unknown field",
        id="autoscaling-typo",
    ),
    pytest.param(
        lambda c: c.update(logging_config={"log_levl": "INFO"}),
        "logging_config.log_levl: unknown field",
        id="logging-typo-reported-once",
    ),
    pytest.param(
        lambda c: c["http_options"].update(port="x"),
        "http_options.port: Input should be a valid integer, unable to parse string as an integer "
        "(got str 'x')",
        id="wrong-type",
    ),
    pytest.param(
        lambda c: _app(c).pop("import_path"),
        "applications[0].import_path: missing required field",
        id="missing-import-path",
    ),
    pytest.param(
        lambda c: _app(c).update(import_path="nexus_ray.serving.nope:build_app"),
        "applications[0].import_path: cannot import 'nexus_ray.serving.nope': "
        "No module named 'nexus_ray.serving.nope'",
        id="import-path-module",
    ),
    pytest.param(
        lambda c: _app(c).update(import_path="nexus_ray.serving.app:build_ap"),
        "applications[0].import_path: module 'nexus_ray.serving.app' has no attribute 'build_ap'",
        id="import-path-attribute",
    ),
    pytest.param(
        lambda c: _app(c)["args"]["policy"].update(engine="tpu"),
        "applications[0].args.policy.engine: Input should be 'hf' or 'vllm' (got str 'tpu')",
        id="args-value",
    ),
    pytest.param(
        lambda c: _app(c)["args"]["planner"].update(max_budgets=64),
        "applications[0].args.planner.max_budgets: unknown field",
        id="args-typo",
    ),
]


@pytest.mark.parametrize(("edit", "error"), BROKEN_SERVE)
def test_the_strict_serve_check_names_each_fault(edit, error):
    """Ray's schema alone accepts the typos; the check finds them, the imports and the args' problems."""
    config = yaml.safe_load((ROOT / "deployments" / "local-cpu.yaml").read_text())
    edit(config)
    assert serve_config_errors(config) == [error]


def test_service_config_errors_name_the_key(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(
        "applications:\n- name: nexus\n  import_path: nexus_ray.serving.app:build_app\n  args:\n"
        "    policy: {model: arith-policy}\n    prm: {model: arith-prm}\n    planner: {max_budget: 0}\n"
    )
    with pytest.raises(ConfigError, match="planner.max_budget"):
        load_service_config(f)
    with pytest.raises(ConfigError, match="no application named 'other'"):
        load_service_config(f, app="other")


def test_errors_name_the_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "policy:\n  model: arith-policy\n  engine: tpu\n  gpu_memory_utilisation: 0.5\nprm:\n  model: x\n"
    )
    with pytest.raises(ConfigError) as err:
        load_yaml(f, ModelsConfig)
    text = str(err.value)
    assert "policy.engine" in text and "policy.gpu_memory_utilisation" in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml", ModelsConfig)
    f = tmp_path / "x.yaml"
    f.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(f, ModelsConfig)


def test_pooler_step_is_the_qwen_prm_format_on_either_engine():
    assert RewardConfig(model="x", engine="hf", pooler="step").format == "qwen-prm"
    assert RewardConfig(model="x", engine="vllm", pooler="token").format == "token"
    with pytest.raises(ValueError, match="contradicts"):
        RewardConfig(model="x", pooler="step", format="token")


# What a CPU copy of a GPU config may change: where the models are and what they run on.
RESOURCE_KEYS = {
    "model",
    "model_id",
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
    "enforce_eager",
    "num_gpus",
    "num_cpus",
    "replicas",
    "host",
}


def _differences(a, b, path: str = "") -> set[str]:
    """The keys (last path element) at which two YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            if key not in a or key not in b:
                out.add(str(key))
            else:
                out |= _differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(_differences(x, y, path) for x, y in zip(a, b)))
    return set() if a == b else {path.rsplit(".", 1)[-1]}


@pytest.mark.parametrize(
    "name, also", [("local-cpu-chat.yaml", set()), ("local-cpu-chat-hf.yaml", {"engine"})]
)
def test_the_local_chat_config_is_gpu_single_with_only_paths_and_resources_changed(name, also):
    gpu = yaml.safe_load((ROOT / "deployments" / "gpu-single.yaml").read_text())
    local = yaml.safe_load((ROOT / "deployments" / name).read_text())
    assert _differences(gpu, local) - RESOURCE_KEYS - also == set()
    assert _app(local)["args"]["task"] == {"format": "chat-math"}


def test_a_worker_autoscales_by_rays_own_autoscaling_config():
    from nexus_ray.config import EngineConfig, WorkerConfig
    from nexus_ray.serving.workers import worker_options

    scaled = WorkerConfig(autoscaling={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16})
    options = worker_options(EngineConfig(model="x", num_gpus=1), scaled)
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 16,
    }
    assert "num_replicas" not in options
    assert worker_options(EngineConfig(model="x"), WorkerConfig(replicas=3))["num_replicas"] == 3
    with pytest.raises(ValueError, match="not both"):
        WorkerConfig(replicas=2, autoscaling={"max_replicas": 4})
    with pytest.raises(ValueError, match="exceeds"):
        WorkerConfig(autoscaling={"min_replicas": 5, "max_replicas": 4})
