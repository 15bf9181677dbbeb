import json

import pytest

from nexus_ray.tasks.datasets import DatasetError, load, load_jsonl


def test_loads_math500_schema(tmp_path):
    f = tmp_path / "math.jsonl"
    f.write_text(
        json.dumps({"problem": "What is 1/2 + 1/2?", "answer": "1", "level": 2, "subject": "x"})
        + "\n\n"
        + json.dumps({"problem": "p", "answer": "\\frac{1}{2}"})
        + "\n"
    )
    rows = load(str(f))
    assert [(r.problem, r.answer, r.level) for r in rows] == [
        ("What is 1/2 + 1/2?", "1", 2),
        ("p", "\\frac{1}{2}", None),
    ]


def test_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "a", "answer": "1"}\n{not json}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        load_jsonl(f)
    f.write_text('{"problem": "a"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: .*'answer'"):
        load_jsonl(f)


def test_unknown_name_lists_builtins():
    with pytest.raises(DatasetError, match="arith-calib"):
        load("no-such-set")
