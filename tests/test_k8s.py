"""The KubeRay manifests: strictly valid (the project's own check, k8s/); the RayService serves gpu-multi."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s.check import document_errors, file_errors, main

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_the_strict_kuberay_check(path):
    assert file_errors(path) == []


def test_make_k8s_check_passes_every_shipped_file(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert (
        out.strip()
        == f"k8s-check: {len(MANIFESTS) + len(list(ROOT.glob('deployments/*.yaml')))} files, 0 errors"
    )


def _manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "k8s" / name).read_text())


def _head_container(doc: dict) -> dict:
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _gpu_container(doc: dict) -> dict:
    return doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


GPU = "spec.workerGroupSpecs[0].template.spec.containers[0]"
HEAD = "spec.headGroupSpec.template.spec.containers[0]"
BROKEN = [
    pytest.param(
        "raycluster.yaml",
        lambda d: _gpu_container(d).update(volumeMount=[]),
        f"{GPU}.volumeMount: unknown field",
        id="unknown-container-key",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="0"),
        "spec.workerGroupSpecs[0].replicas: Input should be a valid integer (got str '0')",
        id="int-as-string",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "spec.headGroupSpec.rayStartParams.num-cpus: Input should be a valid string (got int 0)",
        id="string-as-int",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: _gpu_container(d)["resources"]["limits"].update(cpu=0.5),
        f"{GPU}.resources.limits.cpu: expected a quantity (an integer or a string like '500m' or '16Gi'), "
        "got 0.5",
        id="float-quantity",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
        "spec.autoscalerOptions.upscalingMode: Input should be 'Default', 'Aggressive' or 'Conservative' "
        "(got str 'Fast')",
        id="enum",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["headGroupSpec"].pop("template"),
        "spec.headGroupSpec.template: missing required field",
        id="missing-template",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: _head_container(d).pop("image"),
        f"{HEAD}.image: missing required field",
        id="missing-image",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: _head_container(d)["ports"][0].update(containerPort="6379"),
        f"{HEAD}.ports[0].containerPort: Input should be a valid integer (got str '6379')",
        id="port-string",
    ),
    pytest.param(
        "rayjob-eval.yaml",
        lambda d: d["spec"].update(clusterSelectors=d["spec"].pop("clusterSelector")),
        "spec.clusterSelectors: unknown field",
        id="job-typo",
    ),
    pytest.param(
        "rayjob-eval.yaml",
        lambda d: d["spec"].update(backoffLimit="2"),
        "spec.backoffLimit: Input should be a valid integer (got str '2')",
        id="job-int-as-string",
    ),
    pytest.param(
        "rayjob-merge-search.yaml",
        lambda d: d["spec"].update(runtimeEnvYAML="- working_dir\n"),
        "spec.runtimeEnvYAML: must be a YAML mapping (a runtime_env), got list",
        id="runtime-env-list",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"].update(
            toleration=[]
        ),
        "spec.rayClusterConfig.workerGroupSpecs[0].template.spec.toleration: unknown field",
        id="podspec-typo",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"].pop("rayClusterConfig"),
        "spec.rayClusterConfig: missing required field",
        id="missing-cluster",
    ),
    pytest.param("rayservice.yaml", lambda d: d.update(status={}), "status: unknown field", id="status"),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"].update(
            serveConfigV2=d["spec"]["serveConfigV2"].replace("max_budget", "max_budgets")
        ),
        "spec.serveConfigV2: applications[0].args.planner.max_budgets: unknown field",
        id="serve-args-typo",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"].update(
            serveConfigV2=d["spec"]["serveConfigV2"].replace(
                "request_timeout_s: 240", "request_timeout_s: 300"
            )
        ),
        "spec.serveConfigV2: applications[0].args.request_timeout_s: 300 s is not below "
        "http_options.request_timeout_s (300 s): Serve's proxy would answer a plain-text 408 first",
        id="serve-timeout-past-the-proxy",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace("port: 8000", "port: x")),
        "spec.serveConfigV2: http_options.port: Input should be a valid integer, unable to parse string as "
        "an integer (got str 'x')",
        id="serve-wrong-type",
    ),
]


@pytest.mark.parametrize(("name", "edit", "error"), BROKEN)
def test_the_check_names_the_path_of_each_fault(name, edit, error):
    doc = _manifest(name)
    edit(doc)
    assert document_errors(doc) == [error]


def test_errors_name_the_file_and_the_nested_path(tmp_path, capsys):
    """The issue's example: an unknown key in a RayJob's own cluster spec."""
    doc = _manifest("rayjob-eval.yaml")
    del doc["spec"]["clusterSelector"]
    doc["spec"]["rayClusterSpec"] = _manifest("raycluster.yaml")["spec"]
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["foo"] = 1
    path = tmp_path / "rayjob-eval.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main([str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: spec.rayClusterSpec.headGroupSpec.foo: unknown field",
        "k8s-check: 1 files, 1 errors",
    ]


def test_a_document_of_another_kind_is_an_error():
    assert document_errors({"apiVersion": "ray.io/v1", "kind": "RayClusterr"}) == [
        "kind: 'RayClusterr' is not one of RayCluster, RayJob, RayService"
    ]
    assert document_errors(["not", "a", "mapping"]) == [
        "<root>: neither a KubeRay manifest (kind: ...) nor a Serve config (applications: ...)"
    ]


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
