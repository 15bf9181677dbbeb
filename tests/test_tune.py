"""The Tune searches end to end on a local Ray cluster, as users run them (the scripts).

Tiny configs, a handful of trials each: the merge search must beat uniform `linear` weights on
the zoo experts (its trials merged in memory score as on disk), the YaRN search must beat no
scaling at 4x the base's context, and each reported best must equal a re-evaluation of its config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def run_script(script: str, config: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, str(ROOT / "tune" / script), "--config", str(path), *extra],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_merge_search_beats_uniform_linear_and_its_best_rescores_the_same(tmp_path):
    config = yaml.safe_load((ROOT / "tune" / "configs" / "merge-zoo.yaml").read_text())
    # One trial at a time: Optuna's proposals and ASHA's cuts then do not depend on timing.
    config |= {
        "name": "tiny-merge",
        "num_samples": 6,
        "problems": [15, 30],
        "max_concurrent_trials": 1,
        "storage_path": str(tmp_path / "tune"),
    }
    run = run_script("merge_search.py", config, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "tune" / "tiny-merge"
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["objective"] == pytest.approx(best["recheck"]["objective"])
    assert best["objective"] > summary["baselines"]["uniform linear"]["objective"]
    merged = yaml.safe_load((out / "best-merge.yaml").read_text())
    assert merged["merge_method"] in ("ties", "dare_ties", "della") and len(merged["models"]) == 2
    assert (out / "search.png").stat().st_size > 0 and (out / "trials.csv").exists()
    again = run_script("merge_search.py", config, tmp_path)  # the experiment is there: resumed, not redone
    assert again.returncode == 0 and "resuming" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]


def test_in_memory_trials_score_as_on_disk_ones(tmp_path):
    """The same seeded trials, merged in memory and on disk: the same scores, trial by trial."""
    config = yaml.safe_load((ROOT / "tune" / "configs" / "merge-zoo.yaml").read_text())
    config |= {"num_samples": 3, "problems": [10], "max_concurrent_trials": 1}
    trials = {}
    for in_memory in (True, False):
        name = f"tiny-merge-{'memory' if in_memory else 'disk'}"
        config |= {"name": name, "in_memory": in_memory, "storage_path": str(tmp_path / "tune")}
        run = run_script("merge_search.py", config, tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        trials[in_memory] = pd.read_csv(tmp_path / "tune" / name / "trials.csv")
    for column in ("config/method", "objective"):
        assert trials[True][column].tolist() == trials[False][column].tolist(), column
    assert (trials[True]["merge_s"] > 0).all() and (trials[True]["score_s"] > 0).all()


def tiny_rope_search(script: str, config_file: str, name: str, tmp_path: Path) -> tuple[Path, dict]:
    """A RoPE search at 4x with few trials and short measures: it must beat no scaling, and its
    best must re-evaluate the same. Returns the experiment folder and the config it ran."""
    config = yaml.safe_load((ROOT / "tune" / "configs" / config_file).read_text())
    config |= {
        "name": name,
        "num_samples": 5,
        "documents": 2,
        "passkey_trials": 4,
        "storage_path": str(tmp_path / "tune"),
    }
    run = run_script(script, config, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "tune" / f"{name}-512"
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["metrics"]["objective"] == pytest.approx(best["recheck"]["objective"])
    assert best["metrics"]["objective"] > summary["baselines"]["no scaling"]["objective"]
    return out, config


def test_yarn_search_beats_no_scaling_at_4x_and_its_best_reevaluates_the_same(tmp_path):
    out, _ = tiny_rope_search("yarn_search.py", "yarn-zoo.yaml", "tiny-yarn", tmp_path)
    block = yaml.safe_load((out / "best-rope.yaml").read_text())
    assert block["rope_parameters"]["rope_type"] == "yarn" and block["max_position_embeddings"] == 512


@pytest.mark.parametrize(
    "script,bad,message",
    [
        ("merge_search.py", {"base_model": "arith-policy", "models": ["arith-expert-mul"]}, "models"),
        ("merge_search.py", {"base_model": "arith-policy", "models": ["arith-expert-mul", "nope"]}, "nope"),
        ("yarn_search.py", {"target_length": 512, "beta_slow": [1, 64]}, "beta_slow"),
        ("yarn_search.py", {"target_length": 64}, "within the model's trained"),
        (
            "longrope_search.py",
            {"target_length": 512, "unscaled_pairs": [0, 16]},
            "below the model's 16 pairs",
        ),
        ("longrope_search.py", {"target_length": 512, "unscaled_pairs": [4, 2]}, "unscaled_pairs"),
    ],
)
def test_bad_search_configs_are_clear_errors(tmp_path, script, bad, message):
    run = run_script(script, bad | {"storage_path": str(tmp_path / "tune")}, tmp_path)
    assert run.returncode == 2 and message in run.stdout and "Traceback" not in run.stdout + run.stderr, (
        run.stdout
    )
