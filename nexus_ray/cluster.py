"""Which Ray cluster a nexus_ray command runs on, decided in one place.

Every command that needs Ray (eval --workers, calibrate --workers, merge --workers, the Tune
searches, nexus-ray serve) follows the same rule: inside a running Ray driver (tests, a
notebook, ``ray job submit``'s entrypoint after it connected) it uses that session; else it
joins the cluster ``RAY_ADDRESS`` names (``ray job submit`` sets it); else it starts a fresh
local Ray sized for this machine, never joining some other session's cluster by accident, and
shuts down what it started when done. A local Ray started here is watched by
``nexus_ray.ray_reaper``, which stops its processes when the driver dies without shutting it
down (an exception, SIGTERM, even SIGKILL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_reaper: subprocess.Popen | None = None  # the watchdog of the local Ray this process started


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
        _start_reaper()
    return True


def _start_reaper() -> None:
    """Start the watchdog of the local Ray just started (Linux: it reads /proc)."""
    global _reaper
    if not sys.platform.startswith("linux"):
        return
    import ray

    node = ray._private.worker._global_node  # the processes ray.init started, by kind
    pids = [str(info.process.pid) for infos in node.all_processes.values() for info in infos]
    _reaper = subprocess.Popen(
        [sys.executable, "-m", "nexus_ray.ray_reaper", *pids],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's process group does not reach it
    )


def stop_ray() -> None:
    """Shut down the Ray session of this process; the watchdog then stops what is left of it."""
    global _reaper
    import ray

    ray.shutdown()
    if _reaper is not None:
        _reaper.stdin.close()
        _reaper.wait()
        _reaper = None


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a block; a session started here is shut down after it."""
    started = start_ray(num_cpus)
    try:
        yield
    finally:
        if started:
            stop_ray()
