from pathlib import Path

import pytest

from nexus_ray.config import ConfigError, ModelsConfig, RewardConfig, load_yaml

DEPLOYMENTS = sorted((Path(__file__).parent.parent / "deployments").glob("*.yaml"))


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_configs_validate(path):
    cfg = load_yaml(path, ModelsConfig)
    assert cfg.policy.model and cfg.prm.model


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
