from pathlib import Path

import pytest

import subprocess
import sys

from nexus_ray.config import ConfigError, ModelsConfig, RewardConfig, load_service_config, load_yaml

ROOT = Path(__file__).parent.parent
DEPLOYMENTS = sorted((ROOT / "deployments").glob("*.yaml"))
STRICT_SERVE = ROOT.parent / "shared" / "tools" / "strict_serve_config.py"


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_configs_validate(path):
    cfg, data = load_service_config(path)
    assert cfg.policy.model and cfg.prm.model
    assert data["applications"][0]["import_path"] == "nexus_ray.serving.app:build_app"


@pytest.mark.skipif(not STRICT_SERVE.exists(), reason="the shared Serve config validator is not checked out")
@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_configs_pass_the_strict_serve_validator(path):
    run = subprocess.run([sys.executable, str(STRICT_SERVE), str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_service_config_errors_name_the_key(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text("applications:\n- name: nexus\n  import_path: nexus_ray.serving.app:build_app\n  args:\n"
                 "    policy: {model: arith-policy}\n    prm: {model: arith-prm}\n    planner: {max_budget: 0}\n")
    with pytest.raises(ConfigError, match="planner.max_budget"):
        load_service_config(f)
    with pytest.raises(ConfigError, match="no application named 'other'"):
        load_service_config(f, app="other")


def test_errors_name_the_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("policy:\n  model: arith-policy\n  engine: tpu\n  gpu_memory_utilisation: 0.5\nprm:\n  model: x\n")
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


def test_step_pooler_requires_vllm():
    with pytest.raises(ValueError, match="set engine: vllm"):
        RewardConfig(model="x", pooler="step")
