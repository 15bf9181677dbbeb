"""File-level merging: configs, streaming vs. in-memory, sharding, Ray workers, atomic commit,
bad configs, mergekit-yaml parity on zoo-shaped checkpoints, and the CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nexus_ray import ray_reaper
from nexus_ray.merge import methods
from nexus_ray.merge.io import ModelReader, remove_stale
from nexus_ray.merge.plan import MergeConfigError, build
from nexus_ray.merge.run import MergeError, merge
from nexus_ray.zoo.registry import ZOO_DIR

BASE = ZOO_DIR / "arith-policy"


def _expert(base: Path, out: Path, seed: int, scale: float = 0.02, edit=None) -> Path:
    """A fake fine-tune of ``base``: its weights plus seeded noise, a full HF checkpoint."""
    shutil.copytree(base, out)
    g = torch.Generator().manual_seed(seed)
    tensors = {
        k: v + scale * torch.randn(v.shape, generator=g)
        for k, v in load_file(base / "model.safetensors").items()
    }
    if edit:
        edit(tensors)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [_expert(BASE, root / f"e{i}", i) for i in range(3)]


def _config(method: str, experts, **params) -> dict:
    models = [
        {"model": str(e), "parameters": {"weight": w, "density": d}}
        for e, w, d in zip(experts, [0.5, 0.3, 0.8], [0.4, 0.6, 0.5])
    ]
    if method in ("linear", "task_arithmetic"):
        for m in models:
            m["parameters"].pop("density")
    cfg = {"merge_method": method, "models": models, "parameters": params}
    if method != "linear":
        cfg["base_model"] = str(BASE)
    return cfg


def _load(out: Path) -> dict[str, torch.Tensor]:
    reader = ModelReader(out)
    return {n: reader.get(n) for n in reader.names()}


def _in_memory(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same merge with the method functions on whole state dicts (no streaming)."""
    plan = build(cfg)
    base = load_file(BASE / "model.safetensors")
    sds = [load_file(Path(m["model"]) / "model.safetensors") for m in cfg["models"]]
    out = {}
    for tp in plan.tensors:
        out[tp.name] = methods.call(
            plan.method,
            base[tp.name] if plan.base else None,
            [sd[tp.name] for sd in sds],
            tp.model_params,
            tp.global_params,
            seed,
            tp.name,
        )
    return out


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della", "linear"])
def test_streaming_equals_in_memory(experts, tmp_path, method):
    cfg = _config(method, experts)
    stats = merge(cfg, tmp_path / "out", progress=False)
    got, want = _load(stats.out), _in_memory(cfg)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer.json").exists()


def test_sharded_output_equals_single_file_and_workers_alone_merge_here(experts, tmp_path):
    cfg = _config("dare_ties", experts)
    one = merge(cfg, tmp_path / "one", seed=3, progress=False)
    sharded = merge(cfg, tmp_path / "sharded", seed=3, shard_bytes=600_000, workers=2, progress=False)
    assert one.where == "this process" and sharded.where.startswith("this process (no Ray cluster")
    index = json.loads((sharded.out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    a, b = _load(one.out), _load(sharded.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other_seed = _load(merge(cfg, tmp_path / "seed4", seed=4, progress=False).out)
    assert any(not torch.equal(a[k], other_seed[k]) for k in a)


def test_workers_spread_over_the_nodes_of_a_simulated_cluster(experts, tmp_path, monkeypatch):
    """Two Ray nodes on this machine (one CPU each): --workers 2 runs a task per tensor on both,
    one thread each, and writes the same bytes as a merge in this process. A model path the
    nodes cannot read fails the merge with the node and the path named, leaving nothing."""
    import ray
    from ray.cluster_utils import Cluster

    from nexus_ray.merge import run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = _config("ties", experts)
        spread = merge(cfg, tmp_path / "spread", workers=2, progress=False)
        gone = shutil.copytree(experts[0], tmp_path / "gone")
        real_build = run.build

        def build_then_remove(config):  # the driver sees the model, then the nodes do not
            plan = real_build(config)
            shutil.rmtree(gone)
            return plan

        unreadable = r"node .* cannot read .*gone.*same path on every node"
        with monkeypatch.context() as m, pytest.raises(MergeError, match=unreadable):
            m.setattr(run, "build", build_then_remove)
            merge(_config("ties", [gone, *experts[1:]]), tmp_path / "unreadable", workers=2, progress=False)
        assert not list(tmp_path.glob("*unreadable*"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert spread.where == "2 Ray nodes" and len(spread.per_node) == 2
    assert sum(c for c, _ in spread.per_node.values()) == spread.tensors
    assert sum(b for _, b in spread.per_node.values()) == spread.bytes_written
    here = _load(merge(cfg, tmp_path / "here", progress=False).out)
    got = _load(spread.out)
    assert got.keys() == here.keys() and all(torch.equal(got[k], here[k]) for k in here)


def test_merged_model_loads_in_transformers(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge({**_config("ties", experts), "dtype": "bfloat16"}, tmp_path / "m", progress=False).out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_nan_input_fails_and_writes_nothing(tmp_path, experts):
    bad = _expert(
        BASE, tmp_path / "bad", 9, edit=lambda t: t["model.norm.weight"].__setitem__(3, float("nan"))
    )
    cfg = _config("ties", [experts[0], bad])
    with pytest.raises(MergeError, match="model.norm.weight"):
        merge(cfg, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no output, no partial directory


def _merge_subprocess(tmp_path: Path, cfg: dict, patch: str) -> subprocess.Popen:
    """A real merge to ``tmp_path/out`` in a child process, ``patch`` (code) applied to ``run`` first."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    code = (
        "import json, time; from nexus_ray.merge import run\n"
        f"{patch}\n"
        f"run.merge(json.load(open({str(cfg_path)!r})), {str(tmp_path / 'out')!r}, "
        "progress=False)\n"
    )
    root = Path(__file__).parents[1]
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE)


def test_killed_merge_leaves_nothing_loadable_and_next_run_cleans_up(tmp_path, experts):
    """SIGKILL mid-write: no output directory, a partial one whose shard does not load (its header
    is written last), removed by the next merge to the same output."""
    slow = (
        "real = run.merge_tensor\n"
        "def slow(*a):\n    time.sleep(0.5); return real(*a)\n"
        "run.merge_tensor = slow"
    )
    proc = _merge_subprocess(tmp_path, _config("ties", experts), slow)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.partial-*/model.safetensors")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, "the merge finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    [partial] = tmp_path.glob(".out.partial-*")
    shard = partial / "model.safetensors"
    assert shard.stat().st_size > 1_000_000  # the data was being written...
    with pytest.raises(Exception, match="(?i)header"):
        safe_open(shard, framework="pt")  # ...but nothing loads it
    merge(_config("ties", experts), tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "out"]


def test_stale_partials_of_dead_processes_only_are_removed(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        names = [
            f".out.partial-{live.pid}",  # a merge still running: kept
            f".out.partial-{dead.pid}",
            f".out.old-{dead.pid}",
            f".out2.partial-{dead.pid}",  # another output's: not ours to remove
        ]
        for name in names:
            (tmp_path / name).mkdir()
        removed = remove_stale(tmp_path / "out")
        assert sorted(p.name for p in removed) == sorted(names[1:3])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[3]])
    finally:
        live.kill()
        live.wait()


def test_killed_ray_driver_leaves_no_ray_process(tmp_path):
    """SIGKILL of a driver that started a local Ray (``cluster.ray_session``, as eval, calibrate
    and the Tune searches do): the watchdog stops the Ray processes it started, the raylet's
    dashboard and runtime-env agents included."""
    code = "import time\nfrom nexus_ray.cluster import ray_session\nwith ray_session(2):\n"
    code += "    print('ray up', flush=True); time.sleep(120)\n"
    root = Path(__file__).parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ray up\n"
        known: dict[int, int] = {}
        seen: set[str] = set()  # names read while the driver lives: a reaped agent reads '' later
        deadline = time.time() + 120  # the agents start late on a busy machine
        while time.time() < deadline and not {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= seen:
            time.sleep(0.5)
            ray_reaper.record([proc.pid], known)
            seen |= {_cmdline(pid) for pid in known}
    finally:
        proc.kill()
        proc.wait()
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= seen
    deadline = time.time() + 30
    while ray_reaper.alive(known) and time.time() < deadline:
        time.sleep(0.5)
    assert not [_cmdline(pid) for pid in ray_reaper.alive(known)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
    except OSError:
        return ""


def test_existing_output_needs_overwrite(experts, tmp_path):
    cfg = _config("linear", experts)
    merge(cfg, tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError):
        merge(cfg, tmp_path / "out", progress=False)
    merge(cfg, tmp_path / "out", progress=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _mismatched_shape(t):
    t["model.norm.weight"] = torch.ones(7)


def _renamed(t):
    t["model.norm.weight_renamed"] = t.pop("model.norm.weight")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c, e, tmp: c.update(merge_method="frankenmerge"), "unknown merge_method 'frankenmerge'"),
        (lambda c, e, tmp: c["models"][0].update(model=str(tmp / "nope")), r"models\[0\].model"),
        (lambda c, e, tmp: c.pop("base_model"), "needs 'base_model'"),
        (lambda c, e, tmp: c["models"][1]["parameters"].update(density=1.5), "density 1.5 .* outside"),
        (
            lambda c, e, tmp: c["models"][1]["parameters"].update(density=0),
            r"density 0\.0 for tensor .* outside",
        ),
        (lambda c, e, tmp: c["models"][0]["parameters"].pop("weight"), "'weight' is required"),
        (lambda c, e, tmp: c["models"][0]["parameters"].update(gamma=0.1), r"models\[0\].parameters.gamma"),
        (lambda c, e, tmp: c["parameters"].update(lambada=1), "parameters.lambada"),
        (lambda c, e, tmp: c.update(dtype="float8"), "dtype"),
        (
            lambda c, e, tmp: c["models"][2].update(
                model=str(_expert(BASE, tmp / "s", 1, edit=_mismatched_shape))
            ),
            "model.norm.weight.*shape",
        ),
        (
            lambda c, e, tmp: c["models"][2].update(model=str(_expert(BASE, tmp / "r", 1, edit=_renamed))),
            "model.norm.weight",
        ),
    ],
)
def test_bad_configs_fail_before_writing(experts, tmp_path, mutate, match):
    cfg = _config("ties", experts)
    mutate(cfg, experts, tmp_path)
    with pytest.raises(MergeConfigError, match=match):
        merge(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_della_epsilon_domain_names_the_model(experts, tmp_path):
    cfg = _config("della", experts)
    cfg["models"][1]["parameters"]["epsilon"] = 0.5
    with pytest.raises(MergeConfigError, match="epsilon 0.5"):
        build(cfg)


def test_filters_and_gradients_resolve_per_tensor(experts):
    cfg = _config("ties", experts)
    cfg["models"][0]["parameters"]["weight"] = [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.25}]
    plan = build(cfg)
    by_name = {t.name: t.model_params["weight"][0] for t in plan.tensors}
    assert by_name["model.layers.0.mlp.up_proj.weight"] == 0.0
    assert by_name["model.layers.3.mlp.up_proj.weight"] == 1.0
    assert abs(by_name["model.layers.1.mlp.up_proj.weight"] - 1 / 3) < 1e-9
    assert by_name["model.layers.2.self_attn.q_proj.weight"] == 0.25
    assert by_name["model.embed_tokens.weight"] == 0.25


# --- mergekit-yaml on the same checkpoints -------------------------------------------------------


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", {}),
        ("task_arithmetic", {"lambda": 0.8}),
        ("ties", {}),
        ("breadcrumbs_ties", {"normalize": True}),
        ("slerp", {"t": 0.4}),
    ],
)
def test_matches_mergekit_yaml_on_checkpoints(experts, tmp_path, method, params):
    from tests.merge_oracle.oracle import mergekit_yaml

    if method == "slerp":
        cfg = {
            "merge_method": "slerp",
            "base_model": str(BASE),
            "parameters": params,
            "models": [{"model": str(BASE)}, {"model": str(experts[0])}],
        }
    else:
        cfg = _config(method, experts, **params)
    mergekit_yaml(cfg, tmp_path / "mk")
    ours = _load(merge(cfg, tmp_path / "ours", progress=False).out)
    theirs = _load(tmp_path / "mk")
    for name, t in ours.items():
        assert name in theirs, name
        differ = ((t - theirs[name]).abs() > 1e-5).flatten().nonzero().squeeze(1)
        if method == "ties":  # the same selection, up to which of equal magnitudes at the cut is kept
            assert all(_at_trim_threshold(cfg, name, int(i)) for i in differ), name
        else:
            assert len(differ) == 0, name


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs"])
def test_zoo_experts_match_mergekit_yaml(tmp_path, method):
    """The committed zoo experts (real fine-tunes), merged by both tools."""
    from tests.merge_oracle.oracle import mergekit_yaml

    experts = [ZOO_DIR / "arith-expert-addsub", ZOO_DIR / "arith-expert-mul"]
    cfg = _config(method, experts)
    cfg["models"] = cfg["models"][:2]
    mergekit_yaml(cfg, tmp_path / "mk")
    ours = _load(merge(cfg, tmp_path / "ours", progress=False).out)
    theirs = _load(tmp_path / "mk")
    for name, t in ours.items():
        differ = ((t - theirs[name]).abs() > 1e-5).flatten().nonzero().squeeze(1)
        assert (
            all(_at_trim_threshold(cfg, name, int(i)) for i in differ)
            if method == "ties"
            else len(differ) == 0
        ), name


def _at_trim_threshold(cfg: dict, name: str, index: int) -> bool:
    """Whether element ``index`` of tensor ``name`` ties the k-th largest |delta| of some model."""
    base = load_file(BASE / "model.safetensors")[name].flatten()
    for m in cfg["models"]:
        delta = (load_file(Path(m["model"]) / "model.safetensors")[name].flatten() - base).abs()
        k = max(1, int(m["parameters"]["density"] * delta.numel()))
        if delta[index] == delta.kthvalue(delta.numel() - k + 1).values:
            return True
    return False


# --- the command line ----------------------------------------------------------------------------


def test_cli_merge_and_bad_config(experts, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from nexus_ray.cli import app

    cfg = tmp_path / "ties.yaml"
    cfg.write_text(yaml.safe_dump(_config("ties", experts)))
    result = CliRunner().invoke(app, ["merge", str(cfg), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: ties\nbase_model: nowhere\nmodels: [{model: nowhere}]\n")
    result = CliRunner().invoke(app, ["merge", str(bad), str(tmp_path / "out2")])
    assert result.exit_code == 2
    assert "base_model" in result.output and "Traceback" not in result.output
