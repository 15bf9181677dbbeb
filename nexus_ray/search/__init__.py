"""Search strategies over a policy and a PRM. Importing the package registers every strategy
(``registry``): adding one is its module plus its line here."""

from nexus_ray.search import (  # noqa: F401
    adaptive,
    beam,
    best_of_n,
    deepconf_offline,
    deepconf_online,
    dvts,
    greedy,
    lookahead,
    mcts,
    particles,
)
