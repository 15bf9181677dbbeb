from nexus_ray.tasks.grading import answer_kind, extract_answer, grade, is_equivalent


def test_arith_exact():
    assert grade("1+2\n3\nA: 3\n", "3")
    assert not grade("1+2\n3\nA: 4\n", "3")
    assert not grade("1+2\n3\n", "3")
    assert is_equivalent(" -7", "-7")
    assert not is_equivalent("7.0x", "7")


def test_math_uses_math_verify():
    assert grade("so the answer is $\\boxed{\\frac{1}{2}}$", "0.5", "math")
    assert is_equivalent("\\frac{2}{4}", "\\frac12", "math")
    assert not is_equivalent("\\frac{1}{3}", "0.5", "math")
    assert extract_answer("no answer here", "math") is None


def test_answer_kind():
    assert answer_kind(["3", "-12"]) == "arith"
    assert answer_kind(["3", "\\frac12"]) == "math"
