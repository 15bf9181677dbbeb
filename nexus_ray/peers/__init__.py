"""Peer libraries on nexus_ray's engines, so a benchmark can run them side by side with
nexus_ray on the same models, problems and compute ledger (``benchmarks/peers.py``).

Nothing else in nexus_ray imports this package; its modules need their peer installed (the
``peers`` extra: ``pip install -e ".[peers]"``).
"""
