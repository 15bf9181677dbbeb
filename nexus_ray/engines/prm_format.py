"""How a (question, steps) pair becomes PRM input, and where each step's score is read.

Three formats, the same in every engine:

- ``token``: the policy's prompt (special tokens added), then each step with its separator
  appended; a step's score is read at the last token of its segment. For any
  ``*ForTokenClassification`` model.
- ``local``: one sequence per step: the line before it (the prompt for the first step)
  written as the model's ``prm_local_prompt`` says, then the step and its separator, read at
  the separator. A step checker scores a step given the line it rewrites; the engine
  multiplies the scores into P(still correct after step i) (``chain``). A model whose config
  says ``prm_local_view: rewrite`` reads instead what the step rewrote in that line
  (``rewrite_view``: ``12+[7*3=12]-5``), the line of the first step taken from the prompt
  written as ``prm_local_prompt`` says; with ``prm_local_score: rederive`` a step's score is
  the model's own probability of writing the replacement it reads (a generative check: the
  checker re-derives the step; the tokens it re-derives are the piece's scored positions),
  not its classifier head. The zoo's arith-prm (``line``) and arith-prm-rewrite.
- ``qwen-prm``: Qwen2.5-Math-PRM's. The conversation goes through the PRM tokenizer's chat
  template with the PRM's own system prompt and the user's turns; the assistant turn is the
  steps joined and ended by the step tag (``<extra_0>``); a step's score is read at its tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from nexus_ray.config import QWEN_MATH_SYSTEM_PROMPT, PrmFormat, RewardConfig
from nexus_ray.engines.base import ScoreRequest, ScoreResult
from nexus_ray.engines.rewrite_view import rewrite_parts
from nexus_ray.engines.tokens import prompt_ids

STEP_POOLER_ARCHITECTURES = ("Qwen2ForProcessRewardModel",)
LOCAL_VIEWS = ("line", "rewrite")
LOCAL_SCORES = ("head", "rederive")


class PrmFormatError(ValueError):
    """The PRM's directory does not fit the format its config names; the message says why."""


Piece = tuple[list[int], list[int]]  # one sequence's token ids, and the positions scored in it


@dataclass(frozen=True)
class StepEncoder:
    """Token ids of a PRM input and the index of the token that scores each step."""

    tokenizer: object
    format: PrmFormat = "token"
    separator: str = "\n"
    step_tag: str = "<extra_0>"
    system_prompt: str = QWEN_MATH_SYSTEM_PROMPT
    local_prompt: str = "{previous}\n"
    local_view: str = "line"
    local_score: str = "head"

    @property
    def step_tag_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.step_tag)

    def pieces(self, request: ScoreRequest) -> list[Piece]:
        """The sequences an engine runs for one request: one, or one per step (``local``)."""
        if self.format != "local":
            return [self.encode(request)]
        if self.local_view == "rewrite":
            lines = [self.prompt_line(request.prompt), *request.steps]
            return [self.encode_rewrite(a, b) for a, b in zip(lines, request.steps)]
        previous = [request.prompt, *(self.local_prompt.format(previous=s) for s in request.steps)]
        return [self.encode(ScoreRequest(p, (step,))) for p, step in zip(previous, request.steps)]

    def encode_rewrite(self, previous: str, step: str) -> Piece:
        """``rewrite_view(previous, step)`` and the separator, scored at the separator, or at
        the replacement's tokens (and the closing bracket) for a ``rederive`` score."""
        lead, replacement, rest = rewrite_parts(previous, step)
        head = prompt_ids(self.tokenizer, lead)
        body = self.tokenizer(replacement, add_special_tokens=False).input_ids
        tail = self.tokenizer(rest + self.separator, add_special_tokens=False).input_ids
        ids = head + body + tail
        if self.local_score == "rederive":
            return ids, list(range(len(head), len(head) + len(body)))
        return ids, [len(ids) - 1]

    def prompt_line(self, prompt: str) -> str:
        """The line a prompt holds, read back through ``local_prompt`` (``Q: 12+7*3\\n`` -> ``12+7*3``)."""
        head, _, tail = self.local_prompt.partition("{previous}")
        line = prompt.removeprefix(head) if head else prompt
        return (line.removesuffix(tail) if tail else line).strip()

    def chain(self, scores: list[float]) -> tuple[float, ...]:
        """Per-step scores as P(still correct after the step): ``local`` scores multiply."""
        if self.format != "local":
            return tuple(scores)
        out, product = [], 1.0
        for score in scores:
            product *= score
            out.append(product)
        return tuple(out)

    def encode(self, request: ScoreRequest) -> Piece:
        if self.format == "qwen-prm":
            return self._encode_chat(request)
        ids = prompt_ids(self.tokenizer, request.prompt)
        ends = []
        for step in request.steps:
            ids += self.tokenizer(step + self.separator, add_special_tokens=False).input_ids
            ends.append(len(ids) - 1)
        return ids, ends

    def _encode_chat(self, request: ScoreRequest) -> tuple[list[int], list[int]]:
        users = [{"role": r, "content": c} for r, c in request.messages if r == "user"]
        if not users:
            users = [{"role": "user", "content": request.prompt}]
        steps = [
            s.replace(self.step_tag, "") for s in request.steps
        ]  # a tag in the text would move the scores
        answer = "".join(s + self.step_tag for s in steps)
        messages = [
            {"role": "system", "content": self.system_prompt},
            *users,
            {"role": "assistant", "content": answer},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        tag = self.step_tag_id
        ends = [i for i, t in enumerate(ids) if t == tag]
        if len(ends) != len(steps):
            raise PrmFormatError(
                f"the chat template of the PRM kept {len(ends)} of {len(steps)} step tags {self.step_tag!r}"
            )
        return ids, ends


def results_of(
    encoder: StepEncoder, pieces: list[list[Piece]], scored: list[list[float]]
) -> list[ScoreResult]:
    """Each request's step scores (its pieces' scores in order, ``chain``ed) and the tokens
    the PRM read for it; ``scored`` holds the scores of every piece, flattened in order."""
    results, k = [], 0
    for request_pieces in pieces:
        scores = [s for piece_scores in scored[k : k + len(request_pieces)] for s in piece_scores]
        tokens = sum(len(ids) for ids, _ in request_pieces)
        results.append(ScoreResult(encoder.chain(scores), tokens, _step_tokens(request_pieces)))
        k += len(request_pieces)
    return results


def _step_tokens(pieces: list[Piece]) -> tuple[int, ...]:
    """Tokens each step adds: a piece per step (``local``), or one sequence cut at its ends."""
    if len(pieces) != 1 or len(pieces[0][1]) == 1:
        return tuple(len(ids) for ids, _ in pieces)
    ids, ends = pieces[0]
    if not ends:
        return ()
    cuts = [e + 1 for e in ends]
    out = [cuts[0], *(b - a for a, b in pairwise(cuts))]
    out[-1] += len(ids) - cuts[-1]
    return tuple(out)


def encoder_for(config: RewardConfig, model_dir: str | Path) -> StepEncoder:
    """The PRM directory's tokenizer in the format its config names (``auto``: the one the
    model declares), checked against the model: a mismatch fails here, before any engine starts."""
    from transformers import AutoConfig, AutoTokenizer

    return build_encoder(
        AutoTokenizer.from_pretrained(model_dir),
        AutoConfig.from_pretrained(model_dir),
        str(model_dir),
        config.format,
        config.step_separator,
        config.step_tag,
        config.system_prompt,
        config.positive_label,
    )


def build_encoder(
    tokenizer,
    model_config,
    model_dir: str,
    fmt: PrmFormat,
    separator: str,
    step_tag: str,
    system_prompt: str,
    positive_label: int,
) -> StepEncoder:
    """The encoder for a loaded PRM: ``auto`` resolved (``resolve_format``), then checked."""
    fmt = resolve_format(fmt, model_config, model_dir)
    local_prompt = getattr(model_config, "prm_local_prompt", None)
    if fmt == "local" and not local_prompt:
        raise PrmFormatError(
            f"{model_dir}/config.json: format local needs prm_local_prompt, the text a step's "
            "previous line is written as (e.g. 'Q: {previous}\\n')"
        )
    view = getattr(model_config, "prm_local_view", None) or "line"
    if view not in LOCAL_VIEWS:
        raise PrmFormatError(f"{model_dir}/config.json: prm_local_view {view!r} is not one of {LOCAL_VIEWS}")
    score = getattr(model_config, "prm_local_score", None) or "head"
    if score not in LOCAL_SCORES or (score == "rederive" and view != "rewrite"):
        raise PrmFormatError(
            f"{model_dir}/config.json: prm_local_score {score!r} is not one of {LOCAL_SCORES} "
            "(rederive needs prm_local_view: rewrite)"
        )
    encoder = StepEncoder(
        tokenizer, fmt, separator, step_tag, system_prompt, local_prompt or "{previous}\n", view, score
    )
    check_format(encoder, model_config, model_dir, positive_label)
    return encoder


def resolve_format(fmt: PrmFormat, model_config, model_dir: str) -> PrmFormat:
    """``auto``: what the model's config.json declares (``prm_format``), else ``qwen-prm`` for
    step-pooled architectures, else ``token``. An explicit format must agree with a declared one."""
    declared = getattr(model_config, "prm_format", None)
    if declared is not None and declared not in ("token", "local", "qwen-prm"):
        raise PrmFormatError(
            f"{model_dir}/config.json: prm_format {declared!r} is not token, local or qwen-prm"
        )
    if fmt == "auto":
        architectures = list(getattr(model_config, "architectures", None) or [])
        pooled = any(a in STEP_POOLER_ARCHITECTURES for a in architectures)
        return declared or ("qwen-prm" if pooled else "token")
    if declared is not None and fmt != declared:
        raise PrmFormatError(
            f"{model_dir}/config.json declares prm_format {declared!r}; prm.format is {fmt!r}: "
            f"set prm.format: {declared} (or auto)"
        )
    return fmt


def check_format(encoder: StepEncoder, model_config, model_dir: str, positive_label: int) -> None:
    """Fail at start-up, naming the directory and the field, when the model cannot be read this way."""
    architectures = list(getattr(model_config, "architectures", None) or [])
    labels = getattr(model_config, "num_labels", None)
    if labels is None or labels < 2:
        raise PrmFormatError(
            f"{model_dir}/config.json: num_labels is {labels}; a PRM needs 2 (negative, positive)"
        )
    if not 0 <= positive_label < labels:
        raise PrmFormatError(
            f"prm.positive_label {positive_label} is not a label of {model_dir} ({labels} labels)"
        )
    step_pooled = any(a in STEP_POOLER_ARCHITECTURES for a in architectures)
    if encoder.format in ("token", "local") and step_pooled:
        raise PrmFormatError(
            f"{model_dir}/config.json: architectures {architectures} score at step tags; "
            "set prm.format: qwen-prm"
        )
    if encoder.format != "qwen-prm":
        return
    if labels != 2:
        raise PrmFormatError(f"{model_dir}/config.json: num_labels is {labels}; format qwen-prm needs 2")
    tok = encoder.tokenizer
    ids = tok(encoder.step_tag, add_special_tokens=False).input_ids
    if encoder.step_tag not in tok.get_vocab() or len(ids) != 1:
        raise PrmFormatError(
            f"{model_dir}: the tokenizer has no single token {encoder.step_tag!r} (prm.step_tag), "
            "which format qwen-prm reads the step scores at"
        )
    if not getattr(tok, "chat_template", None):
        raise PrmFormatError(
            f"{model_dir}: the tokenizer has no chat template (chat_template.jinja or "
            "tokenizer_config.json's chat_template), which format qwen-prm needs"
        )
