"""The evaluation harness end to end: real zoo models, files on disk, and a real local Ray."""

import json

import pytest

from nexus_ray.jobs import eval as eval_job


def test_eval_writes_records_summary_and_plot(tmp_path):
    rc = eval_job.main(
        [
            "--dataset",
            "arith-test",
            "--per-level",
            "1",
            "--strategy",
            "greedy,majority,beam",
            "--budget",
            "4",
            "--out",
            str(tmp_path),
            "--run",
            "r1",
        ]
    )
    assert rc == 0
    run = tmp_path / "r1"
    records = [json.loads(l) for l in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 5 * 3
    assert {r["strategy"] for r in records} == {"greedy", "majority", "beam"}
    assert all(r["ledger"]["policy_generated_tokens"] > 0 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    overall = {(r["strategy"], r["level"]): r for r in summary["rows"]}
    assert overall[("beam", "all")]["problems"] == 5
    beam_correct = sum(r["correct"] for r in records if r["strategy"] == "beam")
    assert overall[("beam", "all")]["accuracy"] == pytest.approx(beam_correct / 5)
    assert (run / "accuracy_vs_compute.png").stat().st_size > 10_000
    best = {(w["level"], w["budget"]): w for w in summary["winners"]}
    top = max((r for r in summary["rows"] if r["level"] == "all"), key=lambda r: r["accuracy"])
    assert best[("all", 4)]["accuracy"] == top["accuracy"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--strategy", "nope"], "unknown strategy"),
        (["--budget", "0"], "positive"),
        (["--param", "beam.m"], "strategy.key=value"),
        (["--strategy", "beam", "--param", "beam.n=6", "--param", "beam.m=4"], "multiple of m"),
        (["--dataset", "missing.jsonl"], "unknown dataset"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, args, message):
    assert eval_job.main([*args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_eval_on_ray_workers(tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rc = eval_job.main(
            [
                "--dataset",
                "arith-test",
                "--per-level",
                "2",
                "--strategy",
                "greedy,weighted",
                "--budget",
                "4",
                "--workers",
                "2",
                "--out",
                str(tmp_path),
                "--run",
                "ray",
            ]
        )
    finally:
        ray.shutdown()
    assert rc == 0
    records = [json.loads(l) for l in (tmp_path / "ray" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 10 * 2
    assert len({r["problem"] for r in records}) == 10
    assert len({(r["problem"], r["strategy"]) for r in records}) == 20  # each pair exactly once


def test_interrupted_run_resumes_without_redoing_or_losing_work(tmp_path, capsys):
    args = [
        "--dataset",
        "arith-test",
        "--per-level",
        "1",
        "--strategy",
        "greedy,majority",
        "--budget",
        "2",
        "--out",
        str(tmp_path),
        "--run",
        "r",
    ]
    assert eval_job.main(args) == 0
    path = tmp_path / "r" / "records.jsonl"
    full = path.read_text().splitlines()
    path.write_text("\n".join(full[:3]) + "\n" + full[3][:25])  # killed while writing line 4
    assert eval_job.main(args) == 2 and "--resume" in capsys.readouterr().out  # never overwritten
    assert eval_job.main([*args, "--resume"]) == 0
    assert "3 done before, 7 to go" in capsys.readouterr().out
    records = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(records) == 10 and records[:3] == [json.loads(l) for l in full[:3]]
    assert len({(r["problem"], r["strategy"]) for r in records}) == 10
    rows = json.loads((tmp_path / "r" / "summary.json").read_text())["rows"]
    assert [r["problems"] for r in rows if r["level"] == "all"] == [5, 5]


def test_a_larger_selection_reuses_a_smaller_runs_records(tmp_path, capsys):
    base = ["--dataset", "arith-test", "--strategy", "greedy", "--out", str(tmp_path), "--run", "r"]
    assert eval_job.main([*base, "--per-level", "1"]) == 0
    assert eval_job.main([*base, "--per-level", "2", "--resume"]) == 0
    assert "5 done before, 5 to go" in capsys.readouterr().out
    assert eval_job.main([*base, "--per-level", "1", "--resume"]) == 0  # back to the subset: 0 to go
    rows = json.loads((tmp_path / "r" / "summary.json").read_text())["rows"]
    assert [r["problems"] for r in rows if r["level"] == "all"] == [5]


def test_interleave_levels_takes_levels_in_turn():
    from nexus_ray.tasks.datasets import Example

    examples = [Example(f"p{i}", "0", level) for i, level in enumerate([1, 1, 1, 2, 3, 3])]
    assert [e.problem for e in eval_job.interleave_levels(examples)] == ["p0", "p3", "p4", "p1", "p5", "p2"]
