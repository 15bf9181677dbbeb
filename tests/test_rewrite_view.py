"""The step checker's views of a step (``line``, ``rewrite``: what a step rewrote), the labels
it trains on, and the same token ids in training and in the engines."""

import random
from itertools import pairwise

import pytest
from transformers import LlamaConfig

from nexus_ray.engines.base import ScoreRequest
from nexus_ray.engines.prm_format import PrmFormatError, StepEncoder, build_encoder
from nexus_ray.engines.rewrite_view import rewrite_spans, rewrite_view
from nexus_ray.tasks import arith
from nexus_ray.training.batches import ProblemStream
from nexus_ray.training.prm import (
    LOCAL_PROMPT,
    corrupt_line,
    next_line,
    pair_batch,
    step_pair,
    synthetic_pairs,
    view_labels,
)
from nexus_ray.zoo.tokenizer import build_tokenizer


@pytest.mark.parametrize(
    "previous,step,view",
    [
        ("12+7*3-5", "12+21-5", "12+[7*3=12]-5"),  # the operation beside its result, digits reversed
        ("37*96+6", "3552+6", "[73*69=2553]+6"),
        ("43-0-16", "43-16", "[34-0=34]-16"),  # the leftmost reading of an ambiguous rewrite
        ("5+3*1", "5+3", "5+[3*1=3]"),  # a number is never split between copy and brackets
        ("12-57+3", "-45+3", "[21-75=-54]+3"),
        ("12+7*3-5", "12+21-6", "12+[7*3-5=12-6]"),  # a miscopied number falls inside
        ("28", "A: 28", "[82=A: 82]"),
    ],
)
def test_the_view_puts_what_a_step_rewrote_in_brackets(previous, step, view):
    assert rewrite_view(previous, step) == view


def test_every_gold_step_rewrites_a_span_into_its_value():
    """The labels rest on it: a right step's replacement is the value of its span, so all its
    digits are labelled right (22k gold steps of every level)."""
    for p in arith.generate_set(2000, seed=123):
        lines = [p.expression, *p.steps, f"{arith.ANSWER_PREFIX}{p.steps[-1]}"]
        for previous, step in pairwise(lines):
            _, span, replacement, _ = rewrite_spans(previous, step)
            assert next_line(span) == replacement, (previous, step)
            _, labels, _ = view_labels(previous, step, "rewrite")
            assert set(labels) == {-100, 1}, (previous, step)


def test_a_wrong_digit_is_labelled_wrong_from_where_it_departs():
    text, labels, predicted = view_labels("37*96+6", "3542+6", "rewrite")
    assert text == "[73*69=2453]+6\n"
    judged = [(ch, label) for ch, label in zip(text, labels) if label != -100]
    assert judged == [("2", 1), ("4", 0), ("5", 0), ("3", 0), ("]", 0), ("\n", 0)]
    assert [ch for ch, p in zip(text, predicted) if p] == ["2"]  # next-token targets: right digits only
    # the right value at the wrong place: its digits are right, the step is not
    text, labels, _ = view_labels("12+7*3-5", "19*3-5", "rewrite")
    assert text.startswith("[21+7=91]") and labels[-1] == 0 and 0 not in labels[:-1]


def test_corrupted_lines_are_wrong_steps():
    rng = random.Random(0)
    for p in arith.generate_set(300, seed=7):
        i = rng.randrange(len(p.steps))
        previous = p.expression if i == 0 else p.steps[i - 1]
        assert step_pair(previous, p.steps[i])[2] == 1
        assert step_pair(previous, corrupt_line(p.steps[i], previous, rng))[2] == 0


def test_fresh_steps_lean_to_products_only_when_asked():
    """The rewrite checker's fresh steps reduce a product about half the time; without a
    share the draws (and so the line checker's batches) are the ones they always were."""
    plain = synthetic_pairs(ProblemStream(1), 600, random.Random(0))
    again = synthetic_pairs(ProblemStream(1), 600, random.Random(0), product_share=0.0)
    leaning = synthetic_pairs(ProblemStream(1), 600, random.Random(0), product_share=0.5)
    assert plain == again
    share = [sum("*" in previous for previous, _, _ in pairs) / 600 for pairs in (plain, leaning)]
    assert share[0] < 0.25 and share[1] > 0.35, share


def test_line_view_labels_the_step_after_its_previous_line():
    text, labels, predicted = view_labels("12+7*3", "12+22", "line")
    assert text == "Q: 12+7*3\n12+22\n"
    judged = [(ch, label) for ch, label in zip(text, labels) if label != -100]
    assert judged == [("1", 1), ("2", 1), ("+", 1), ("2", 1), ("2", 0), ("\n", 0)]
    assert not any(predicted)  # a wrong step teaches no next tokens


@pytest.mark.parametrize("view", ["line", "rewrite"])
def test_engines_read_the_ids_the_checker_was_trained_on(view):
    tok = build_tokenizer()
    encoder = StepEncoder(tok, "local", arith.STEP_DELIMITER, local_prompt=LOCAL_PROMPT, local_view=view)
    p = arith.generate_set(5, seed=3, levels=(4,))[0]
    steps = (*p.steps, f"{arith.ANSWER_PREFIX}{p.steps[-1]}")
    pieces = encoder.pieces(ScoreRequest(p.prompt, steps))
    lines = [p.expression, *p.steps]
    batch = pair_batch([step_pair(a, b) for a, b in zip(lines, steps)], tok, view)
    assert len(pieces) == len(steps)
    for (ids, ends), row, mask in zip(pieces, batch["input_ids"], batch["attention_mask"]):
        assert ids == row[: int(mask.sum())].tolist()
        assert ends == [len(ids) - 1]  # scored at the newline, where the verdict is trained


def test_a_rederive_checker_is_scored_at_the_tokens_it_re_derives():
    tok = build_tokenizer()
    encoder = StepEncoder(
        tok, "local", "\n", local_prompt=LOCAL_PROMPT, local_view="rewrite", local_score="rederive"
    )
    [(ids, ends)] = encoder.pieces(ScoreRequest("Q: 12+7*3-5\n", ("12+21-5",)))
    assert tok.decode(ids, skip_special_tokens=True) == "12+[7*3=12]-5\n"
    assert tok.decode([ids[e] for e in ends]) == "12]"  # the replacement, reversed, and "]"


def test_an_unknown_view_is_a_clear_error():
    config = LlamaConfig(
        num_labels=2, prm_format="local", prm_local_prompt=LOCAL_PROMPT, prm_local_view="diff"
    )
    with pytest.raises(PrmFormatError, match="prm_local_view 'diff'"):
        build_encoder(build_tokenizer(), config, "some-prm", "auto", "\n", "<extra_0>", "", 1)


def test_rederive_needs_the_rewrite_view():
    config = LlamaConfig(
        num_labels=2, prm_format="local", prm_local_prompt=LOCAL_PROMPT, prm_local_score="rederive"
    )
    with pytest.raises(PrmFormatError, match="rederive needs prm_local_view: rewrite"):
        build_encoder(build_tokenizer(), config, "some-prm", "auto", "\n", "<extra_0>", "", 1)
