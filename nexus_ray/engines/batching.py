"""Merge concurrent async calls into one batched blocking call.

Many solves run at once (a batch eval, a server); each asks the engine for a few samples.
A transformers model is far faster on one batch of 64 than on 64 batches of one, so calls
that arrive while the model is busy, or in the same event-loop tick, are queued, grouped by
key (calls that can share a forward pass), and run together on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher:
    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]]) -> None:
        """``run(key, items)`` is the blocking batched call; it returns one result per item."""
        self._run = run
        self._queues: dict[asyncio.AbstractEventLoop, list[tuple[Hashable, list[Any], asyncio.Future]]] = {}
        self._draining: set[asyncio.AbstractEventLoop] = set()

    async def submit(self, key: Hashable, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queues.setdefault(loop, []).append((key, items, future))
        if loop not in self._draining:
            self._draining.add(loop)
            loop.create_task(self._drain(loop))
        return await future

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self._queues.get(loop):
                pending = self._queues.pop(loop)
                groups: dict[Hashable, list[tuple[list[Any], asyncio.Future]]] = defaultdict(list)
                for key, items, future in pending:
                    groups[key].append((items, future))
                for key, calls in groups.items():
                    merged = [item for items, _ in calls for item in items]
                    try:
                        results = await asyncio.to_thread(self._run, key, merged)
                    except Exception as err:  # noqa: BLE001 - every caller of the batch sees the error
                        for _, future in calls:
                            if not future.done():
                                future.set_exception(err)
                        continue
                    start = 0
                    for items, future in calls:
                        if not future.done():
                            future.set_result(results[start : start + len(items)])
                        start += len(items)
        finally:
            self._draining.discard(loop)
