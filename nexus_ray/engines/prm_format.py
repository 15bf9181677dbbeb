"""How a (prompt, steps) pair becomes PRM input, shared by every reward engine.

The prompt is tokenized with special tokens, each step with its separator appended and none
added; the score of a step is read at the last token of its segment. With separator ``\\n``
that is the zoo PRM's format; with ``<extra_0>`` it is Qwen2.5-Math-PRM's step tag.
"""

from __future__ import annotations

from nexus_ray.engines.base import ScoreRequest


def encode_steps(tokenizer, request: ScoreRequest, separator: str) -> tuple[list[int], list[int]]:
    """Token ids of the whole input and the index of the token that ends each step."""
    ids = list(tokenizer(request.prompt).input_ids)
    ends = []
    for step in request.steps:
        ids += tokenizer(step + separator, add_special_tokens=False).input_ids
        ends.append(len(ids) - 1)
    return ids, ends
