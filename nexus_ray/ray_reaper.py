"""Stop the processes of a local Ray cluster once the driver that started it is gone, SIGKILL included.

Ray ties its GCS server and raylet to the driver (the kernel kills them when it dies), but not
the agents the raylet starts (dashboard agent, runtime-env agent): after a SIGKILLed driver
they live on, reparented to init. ``cluster.start_ray`` therefore starts this watchdog in its
own session, with a pipe from the driver on stdin and the pids of Ray's processes as
arguments. While the pipe is open it records those processes and their descendants every
``POLL_S`` seconds; at end of file (the driver closed it, exited or was killed) it stops every
recorded process still alive: SIGTERM, then SIGKILL after ``GRACE_S``. A pid is signalled only
if its start time is the recorded one, so a reused pid is never hit. Linux only (``/proc``).

    python -m nexus_ray.ray_reaper PID [PID ...]    # stdin: the driver's end of a pipe
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone (a zombie is:
    only its exit status is left, for a parent or an init that may never collect it)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def _children() -> dict[int, list[int]]:
    """Every live process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    return children


def record(roots: list[int], known: dict[int, int]) -> None:
    """Add the live ``roots`` and all their descendants to ``known`` (pid -> start time)."""
    children = _children()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None or known.get(pid, st[1]) != st[1]:
            continue
        known[pid] = st[1]
        todo.extend(children.get(pid, []))


def alive(known: dict[int, int]) -> list[int]:
    """The recorded processes still running (the same pid and start time)."""
    return [pid for pid, start in known.items() if (st := _stat(pid)) is not None and st[1] == start]


def stop(known: dict[int, int]) -> None:
    """SIGTERM the recorded processes still alive, SIGKILL those left after ``GRACE_S``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(known):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while alive(known) and time.monotonic() < deadline:
            time.sleep(0.1)


def main(roots: list[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the pipe ends the watch
    known: dict[int, int] = {}
    while True:
        record(roots + list(known), known)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    stop(known)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
