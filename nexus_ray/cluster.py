"""Which Ray cluster a nexus_ray command runs on, decided in one place.

Every command that needs Ray (eval --workers, calibrate --workers, merge --workers, the Tune
searches, nexus-ray serve) follows the same rule: inside a running Ray driver (tests, a
notebook, ``ray job submit``'s entrypoint after it connected) it uses that session; else it
joins the cluster ``RAY_ADDRESS`` names (``ray job submit`` sets it); else it starts a fresh
local Ray sized for this machine, never joining some other session's cluster by accident, and
shuts down what it started when done.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def start_ray(num_cpus: int | None = None) -> bool:
    """Connect as the module docstring says; True when this call started (and owns) the session."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a block; a session started here is shut down after it."""
    import ray

    started = start_ray(num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
