import math

import pytest

from nexus_ray.search.aggregate import aggregate_steps, select


def test_step_aggregations():
    s = [0.9, 0.5, 0.8]
    assert aggregate_steps(s, "last") == 0.8
    assert aggregate_steps(s, "min") == 0.5
    assert math.isclose(aggregate_steps(s, "prod"), 0.36)
    assert math.isclose(aggregate_steps(s, "mean"), 2.2 / 3)
    with pytest.raises(ValueError, match="unknown step aggregation"):
        aggregate_steps(s, "max")


def test_selection_modes_differ():
    answers = ["1", "1", "2", None]
    scores = [0.3, 0.3, 0.9, 1.0]
    assert answers[select(answers, None, "majority")] == "1"
    assert answers[select(answers, scores, "weighted")] == "2"  # 0.9 > 0.6
    assert select(answers, scores, "argmax") == 2  # a candidate without an answer never wins
    assert answers[select(answers, [0.5, 0.5, 0.9, 0.0], "weighted")] == "1"  # 1.0 > 0.9


def test_selection_errors():
    with pytest.raises(ValueError, match="needs PRM scores"):
        select(["1"], None, "weighted")
    with pytest.raises(ValueError, match="no candidates"):
        select([], None, "majority")
