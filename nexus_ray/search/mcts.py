"""Monte Carlo tree search over steps with PUCT, PRM values and a surprisal bonus.

Nodes are partial solutions; a node's children are ``branching`` sampled next steps. Each
round selects up to ``parallel`` leaves by PUCT (a virtual visit keeps them distinct),
expands them all in one engine call, scores the children in one PRM call, and backs each
child's PRM value up the tree. The selection score of a child is

    Q + c_puct * P * sqrt(N_parent) / (1 + N_child) + surprisal_bonus * surprisal

with P the share of the ``branching`` samples that wrote that step (identical samples are
merged into one child, so a likely step is a likely child) and ``surprisal`` the mean negative
logprob of the child's step under the policy: the seed document's proposal to spend exploration
where the model was surprised. Terminal nodes are the candidates; the answer is chosen among
them. If the simulations end before any path does, the most valuable open path is finished
greedily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nexus_ray.search.base import ScoredSearchParams, SearchContext, worst_case
from nexus_ray.search.ledger import worst_case_round
from nexus_ray.search.paths import Path, complete, expand, paths_result, round_seed, score
from nexus_ray.search.registry import register
from nexus_ray.search.result import SearchResult


class MCTSParams(ScoredSearchParams):
    simulations: int = 16
    branching: int = 4
    parallel: int = 4
    c_puct: float = 1.25
    surprisal_bonus: float = 0.0
    temperature: float = 1.0

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> MCTSParams:
        return cls(**{"simulations": max(1, generations), **overrides})


@dataclass
class Node:
    path: Path
    parent: Node | None = None
    prior: float = 1.0
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else (self.path.score or 0.0)


def _puct(child: Node, parent: Node, params: MCTSParams) -> float:
    explore = params.c_puct * child.prior * math.sqrt(parent.visits + 1) / (1 + child.visits)
    return child.q + explore + params.surprisal_bonus * child.path.surprisal


def _exhausted(node: Node) -> bool:
    """Finished, or every branch below it is."""
    return node.path.done or (bool(node.children) and all(_exhausted(c) for c in node.children))


def _select_leaf(root: Node, params: MCTSParams, taken: list[Node]) -> Node | None:
    """Descend by PUCT through branches with work left; None when the tree is exhausted."""
    node = root
    while node.children:
        live = [c for c in node.children if not _exhausted(c) and c not in taken]
        if not live:
            return None
        node = max(live, key=lambda c: _puct(c, node, params))
    return None if node.path.done else node


def _children(leaf: Node, samples: list[Path], branching: int) -> list[Node]:
    """One child per distinct step text; its prior is the share of samples that wrote it."""
    by_text: dict[str, list[Path]] = {}
    for p in samples:
        by_text.setdefault(p.text, []).append(p)
    return [Node(group[0], leaf, prior=len(group) / branching) for group in by_text.values()]


def _backup(node: Node, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent  # type: ignore[assignment]


@register("mcts", MCTSParams, needs_prm=True, stepwise=True)
async def mcts(ctx: SearchContext, params: MCTSParams) -> SearchResult:
    prm = ctx.require_prm("mcts")
    ledger = ctx.new_ledger()
    root = Node(Path())
    terminals: list[Path] = []
    truncated = False
    done_sims = 0
    r = 0
    while done_sims < params.simulations:
        leaves: list[Node] = []
        for _ in range(min(params.parallel, params.simulations - done_sims)):
            leaf = _select_leaf(root, params, leaves)
            if leaf is None:
                break
            leaves.append(leaf)
            leaf.visits += 1  # virtual visit, undone below, so the next pick differs
        for leaf in leaves:
            leaf.visits -= 1
        if not leaves:
            break
        if not ctx.fits(
            ledger,
            worst_case(ctx, ledger, [l.path for l in leaves], params.branching, params.max_step_tokens),
        ):
            truncated = True
            break
        kids = await expand(
            ctx.policy,
            ledger,
            ctx.prompt,
            ctx.fmt,
            [l.path for l in leaves],
            params.branching,
            params.temperature,
            params.max_step_tokens,
            round_seed(ctx.seed, r),
            logprobs=True,
        )
        scored = await score(
            prm, ledger, ctx.prompt, ctx.fmt, [c for k in kids for c in k], params.aggregation, ctx.messages
        )
        for j, leaf in enumerate(leaves):
            group = scored[j * params.branching : (j + 1) * params.branching]
            leaf.children = _children(leaf, group, params.branching)
            for child in leaf.children:
                _backup(child, child.path.score or 0.0)
                if child.path.done:
                    terminals.append(child.path)
        done_sims += len(leaves)
        r += 1
    ledger.generations += params.simulations
    frontier = [n for n in _frontier(root) if not n.path.done]
    if not terminals and frontier:  # too few simulations to reach an end: finish the best path
        best = max(frontier, key=lambda n: n.q)
        prompt_tokens = [ctx.policy.count_tokens(ctx.prompt + best.path.text)]
        if ctx.fits(ledger, worst_case_round(ledger, prompt_tokens, 1, params.max_tokens, True)):
            done = await complete(ctx.policy, ledger, ctx.prompt, ctx.fmt, best.path, params.max_tokens)
            terminals = await score(
                prm, ledger, ctx.prompt, ctx.fmt, [done], params.aggregation, ctx.messages
            )
    pool = terminals or [n.path for n in _frontier(root)]
    return paths_result("mcts", ctx.fmt, pool, params.selection, ledger, truncated or not terminals)


def _frontier(root: Node) -> list[Node]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        if n.children:
            stack += n.children
        elif n is not root:
            out.append(n)
    return out
