"""`ray job submit` runs the evaluation harness on a real (local, CLI-started) Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster_address():
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    dashboard = free_port()
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)


def test_eval_as_a_ray_job(cluster_address, tmp_path):
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_API_SERVER_ADDRESS": cluster_address}
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--",
        sys.executable,
        "-m",
        "nexus_ray.jobs.eval",
        "--dataset",
        "arith-test",
        "--per-level",
        "1",
        "--strategy",
        "greedy,weighted",
        "--budget",
        "2",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
        "--run",
        "job",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "job" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 10 and {r["strategy"] for r in records} == {"greedy", "weighted"}
    assert (tmp_path / "job" / "summary.json").exists()
    # A failing entrypoint fails the submit (the CI gate users rely on).
    bad = subprocess.run(
        [*cmd[:4], sys.executable, "-m", "nexus_ray.jobs.eval", "--strategy", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "unknown strategy" in bad.stdout + bad.stderr


def test_calibrate_as_a_ray_job(cluster_address, tmp_path):
    """Calibration records its pools on Ray tasks over shared model workers and writes the table."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_API_SERVER_ADDRESS": cluster_address}
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--",
        sys.executable,
        "-m",
        "nexus_ray.jobs.calibrate",
        "--dataset",
        "arith-calib",
        "--per-level",
        "1",
        "--samples",
        "3",
        "--sizes",
        "2,4",
        "--bins",
        "2",
        "--estimator",
        "surprisal",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from nexus_ray.planner.table import PlanTable

    table = PlanTable.load(tmp_path / "table-surprisal.json")
    assert table.problems == 5 and table.dataset == "arith-calib"
    assert len((tmp_path / "pools.jsonl").read_text().splitlines()) == 5


def test_a_tune_search_as_a_ray_job(cluster_address, tmp_path):
    """`ray job submit -- python tune/yarn_search.py`: the search runs on the cluster's workers."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((root / "tune" / "configs" / "yarn-zoo.yaml").read_text())
    config |= {
        "name": "job-yarn",
        "num_samples": 2,
        "documents": 1,
        "passkey_trials": 2,
        "storage_path": str(tmp_path / "tune"),
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_API_SERVER_ADDRESS": cluster_address}
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--",
        sys.executable,
        str(root / "tune" / "yarn_search.py"),
        "--config",
        str(path),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "tune" / "job-yarn-512" / "summary.json").read_text())
    assert summary["trials"] == 2
