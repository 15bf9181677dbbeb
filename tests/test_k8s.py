"""The KubeRay manifests: valid against the real CRDs, and the service is the GPU Serve config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate_kuberay.py"
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))


def test_every_manifest_passes_the_strict_kuberay_validator():
    if not VALIDATOR.exists():
        pytest.skip(f"{VALIDATOR} not found next to this checkout")
    run = subprocess.run([sys.executable, str(VALIDATOR), *map(str, MANIFESTS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_rayservice_serves_deployments_gpu_multi():
    service = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((ROOT / "deployments" / "gpu-multi.yaml").read_text())


def test_the_head_runs_no_work_and_gpu_workers_request_what_they_limit():
    for path in MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterConfig") or (doc["spec"] if doc["kind"] == "RayCluster" else None)
        if spec is None:  # RayJobs run on the `nexus` cluster
            assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": "nexus"}
            continue
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for group in spec["workerGroupSpecs"]:
            for c in group["template"]["spec"]["containers"]:
                gpus = c["resources"]["limits"].get("nvidia.com/gpu")
                assert gpus == c["resources"]["requests"].get("nvidia.com/gpu")


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name.startswith("rayjob-")], ids=lambda p: p.name)
def test_every_rayjob_entrypoint_exists(path):
    entry = yaml.safe_load(path.read_text())["spec"]["entrypoint"].split()
    assert entry[0] == "python"
    if entry[1] == "-m":
        module = ROOT / (entry[2].replace(".", "/") + ".py")
        assert module.exists(), module
    else:
        assert (ROOT / entry[1]).exists(), entry[1]
        config = entry[entry.index("--config") + 1]
        assert (ROOT / config).exists(), config
