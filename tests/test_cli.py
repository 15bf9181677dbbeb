"""The console script, run as a user runs it."""

import json
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nexus_ray.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["solve", "--help"],
        ["zoo", "--help"],
        ["demo", "--help"],
        ["eval", "--help"],
        ["rope", "eval", "--help"],
    ],
)
def test_help_everywhere(args):
    r = run(*args)
    assert r.returncode == 0 and "usage" in r.stdout.lower()


def test_solve_greedy_prints_solution_answer_and_tokens():
    r = run("solve", "Q: 12+7*3-5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Q: 12+7*3-5\n")
    assert "answer:" in r.stdout and "tokens:" in r.stdout


def test_solve_best_of_n_json_has_ledger():
    r = run("solve", "3*4+5", "--strategy", "weighted", "--budget", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["gold"] == "17" and out["strategy"] == "best_of_n"
    assert out["ledger"]["generations"] == 4 and out["ledger"]["prm_tokens"] > 0


def test_solve_rejects_non_arithmetic_without_traceback():
    r = run("solve", "what is love?")
    assert r.returncode == 2
    assert "not an arithmetic expression" in r.stderr and "Traceback" not in r.stderr


def test_solve_unknown_strategy_is_clear():
    r = run("solve", "1+2", "--strategy", "telepathy")
    assert r.returncode == 2 and "unknown strategy" in r.stderr


def test_solve_unknown_model_is_clear():
    r = run("solve", "1+2", "--policy", "nope")
    assert r.returncode == 2 and "neither a zoo model" in r.stderr


def test_zoo_list():
    r = run("zoo", "list")
    assert r.returncode == 0 and "arith-policy" in r.stdout and "arith-prm" in r.stdout


def test_eval_bad_strategy_is_a_clear_error():
    r = run("eval", "--strategy", "nope")
    assert r.returncode == 2 and "unknown strategy" in r.stdout and "Traceback" not in r.stderr
