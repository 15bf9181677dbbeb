import random

import pytest

from nexus_ray.tasks import arith, datasets


def test_every_generated_solution_checks():
    for p in arith.generate_set(1000, seed=7):
        verdict = arith.check(p.expression, p.solution)
        assert verdict.correct, p
        assert verdict.first_wrong_step is None
        assert all(verdict.step_correct)
        assert int(p.answer) == eval(p.expression)  # Python's precedence agrees with ours


@pytest.mark.parametrize("seed", range(5))
def test_corrupted_step_is_located(seed):
    rng = random.Random(seed)
    for p in arith.generate_set(200, seed=seed):
        index = rng.randrange(len(p.steps))
        bad = arith.corrupt_step(p, index, rng)
        verdict = arith.check(p.expression, arith.format_solution(bad))
        assert not verdict.correct
        assert verdict.first_wrong_step == index
        assert verdict.step_correct == tuple(i < index for i in range(len(bad)))


def test_worked_example():
    p = arith.Problem("12+7*3-5", 1, arith.solve("12+7*3-5"))
    assert p.steps == ("12+21-5", "33-5", "28")
    assert p.prompt + p.solution == "Q: 12+7*3-5\n12+21-5\n33-5\n28\nA: 28\n"


def test_wrong_answer_line_after_right_steps_is_wrong():
    verdict = arith.check("2+3", "5\nA: 6\n")
    assert verdict.step_correct == (True,) and not verdict.correct and verdict.answer == "6"


def test_missing_answer_line_is_wrong():
    assert not arith.check("2+3", "5\n").correct


@pytest.mark.parametrize("bad", ["", "1++2", "+3", "1+", "a+1", "1 2"])
def test_tokenize_rejects_malformed(bad):
    with pytest.raises(ValueError):
        arith.tokenize(bad)


def test_negative_leading_number():
    assert arith.solve("3-15+4") == ("-12+4", "-8")


def test_difficulty_knobs_grow_with_level():
    problems = arith.generate_set(2000, seed=3)
    mean_steps = [sum(len(p.steps) for p in problems if p.level == lv) / 400 for lv in range(1, 6)]
    assert mean_steps == sorted(mean_steps) and mean_steps[-1] > 2 * mean_steps[0]
    assert any("*" in p.expression for p in problems if p.level >= 2)


def test_builtin_sets_match_their_generator():
    for name, (size, _) in datasets.BUILTIN_SETS.items():
        shipped = datasets.load(name)
        regenerated = datasets.builtin_problems(name)
        assert len(shipped) == size == len(regenerated)
        assert [(e.problem, e.answer, e.level) for e in shipped] == [
            (p.expression, p.answer, p.level) for p in regenerated
        ]
        assert {e.level for e in shipped} == {1, 2, 3, 4, 5}
        assert sum(e.level == 1 for e in shipped) == size // 5


def test_calib_and_test_sets_are_disjoint():
    calib = {e.problem for e in datasets.load("arith-calib") if e.level >= 3}
    test = {e.problem for e in datasets.load("arith-test") if e.level >= 3}
    assert not calib & test


@pytest.mark.parametrize("problem", ["١٢+٧", "１２+７", "१२+७", "12+٧", "1²+2"])
def test_arithmetic_takes_ascii_digits_only(problem):
    with pytest.raises(ValueError, match="non-ASCII digits"):
        arith.parse_problem(problem)
    with pytest.raises(ValueError, match="malformed"):
        arith.tokenize(problem)
    assert arith.parse_problem("Q: 12 + 7*3") == "12+7*3"
