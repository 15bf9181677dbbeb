"""Step-level building blocks shared by the tree strategies (beam, DVTS, lookahead, MCTS, particles).

A ``Path`` is a partial solution: the text generated so far after the prompt. ``expand``
samples the next step of many paths in one engine call; ``score`` has the PRM read many paths
in one call. Both charge the ledger, so no strategy can forget to count a token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nexus_ray.engines.base import GenerationParams, PolicyEngine, RewardEngine, ScoreRequest
from nexus_ray.search.aggregate import Selection, StepAggregation, aggregate_steps, select
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.result import Candidate, SearchResult
from nexus_ray.tasks.format import TaskFormat


@dataclass(frozen=True)
class Path:
    text: str = ""
    done: bool = False
    score: float | None = None
    step_scores: tuple[float, ...] = ()
    surprisal: float = 0.0  # mean negative logprob of the last step's tokens


def _is_done(fmt: TaskFormat, text: str, finish_reason: str, stop_reason: str | None) -> bool:
    """A path ends at EOS, at the length limit, or once it states its answer."""
    ended = finish_reason == "length" or stop_reason is None
    return ended or fmt.answer(text) is not None


async def expand(
    policy: PolicyEngine,
    ledger: ComputeLedger,
    prompt: str,
    fmt: TaskFormat,
    paths: list[Path],
    samples_each: int,
    temperature: float,
    max_step_tokens: int,
    seed: int | None,
    logprobs: bool = False,
) -> list[list[Path]]:
    """The next step of every path, ``samples_each`` times, in one engine call."""
    params = GenerationParams(
        n=samples_each,
        temperature=temperature,
        max_tokens=max_step_tokens,
        stop=(fmt.step_delimiter,),
        seed=seed,
        logprobs=logprobs,
    )
    results = await policy.generate([prompt + p.text for p in paths], params)
    ledger.charge_generation(results)
    children = []
    for p, r in zip(paths, results):
        kids = []
        for c in r.completions:
            text = p.text + c.text
            surprisal = -sum(c.logprobs) / max(1, len(c.logprobs)) if c.logprobs else 0.0
            kids.append(Path(text, _is_done(fmt, text, c.finish_reason, c.stop_reason), None, (), surprisal))
        children.append(kids)
    return children


async def complete(
    policy: PolicyEngine, ledger: ComputeLedger, prompt: str, fmt: TaskFormat, path: Path, max_tokens: int
) -> Path:
    """Finish a partial path greedily in one call (for a search that ran out before any end)."""
    [r] = await policy.generate(
        [prompt + path.text], GenerationParams(temperature=0.0, max_tokens=max_tokens)
    )
    ledger.charge_generation([r])
    c = r.completions[0]
    return Path(path.text + c.text, True, None, (), path.surprisal)


async def score(
    prm: RewardEngine,
    ledger: ComputeLedger,
    prompt: str,
    fmt: TaskFormat,
    paths: list[Path],
    aggregation: StepAggregation,
    messages: tuple[tuple[str, str], ...] = (),
) -> list[Path]:
    """Every path with its PRM step scores and aggregated score, in one PRM call."""
    if not paths:
        return []
    requests = [ScoreRequest(prompt, fmt.steps(p.text), messages) for p in paths]
    results = await prm.score(requests)
    ledger.charge_scoring(results, requests)
    return [
        replace(p, score=aggregate_steps(r.scores, aggregation), step_scores=r.scores)
        for p, r in zip(paths, results)
    ]


def round_seed(seed: int | None, round_index: int) -> int | None:
    """A distinct, reproducible seed for each round of a search."""
    return None if seed is None else seed * 1009 + round_index


def paths_result(
    name: str,
    fmt: TaskFormat,
    pool: list[Path],
    selection: Selection,
    ledger: ComputeLedger,
    truncated: bool,
) -> SearchResult:
    """Choose the answer among finished paths (PRM scores as weights)."""
    candidates = [Candidate(p.text, fmt.answer(p.text), p.score, p.step_scores) for p in pool]
    if not candidates:
        return SearchResult(name, None, "", ledger, [], truncated=True)
    scores = None if selection == "majority" else [c.score or 0.0 for c in candidates]
    i = select([c.answer for c in candidates], scores, selection)
    return SearchResult(name, candidates[i].answer, candidates[i].text, ledger, candidates, truncated)
