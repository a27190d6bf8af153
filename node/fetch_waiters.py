"""Parked (long-poll) fetches of one worker: woken by appends, expired by deadline.

A Fetch that cannot yet return `min_bytes` is parked here under every partition it reads.
The worker loop marks the partitions it appended to; after each batch of requests it asks
`woken(partitions)` for the fetches to re-evaluate (each at most once per loop iteration, so
a burst of appends costs one re-read, not one per append), and `expired(now)` for those whose
`max_wait_ms` ran out. Nothing here sleeps: the poll timeout is `next_deadline()`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from qnode.transport.doorbell import Doorbell

PartitionKey = tuple[str, int]


@dataclass(eq=False, slots=True)
class ParkedFetch:
    identity: bytes  # the ROUTER peer to answer
    api_version: int
    correlation_id: int
    body: dict[str, Any]
    deadline: float  # monotonic seconds
    keys: tuple[PartitionKey, ...]
    doorbell: Doorbell | None = None  # the consumer's: answer there as a datagram
    done: bool = field(default=False)


class FetchWaiters:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ParkedFetch]] = []
        self._by_partition: dict[PartitionKey, dict[ParkedFetch, None]] = {}
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def park(self, fetch: ParkedFetch) -> None:
        heapq.heappush(self._heap, (fetch.deadline, next(self._seq), fetch))
        for key in fetch.keys:
            self._by_partition.setdefault(key, {})[fetch] = None
        self._count += 1

    def has_waiters(self, key: PartitionKey) -> bool:
        return key in self._by_partition

    def remove(self, fetch: ParkedFetch) -> None:
        """Forget a fetch (answered): its heap entry is dropped lazily."""
        if fetch.done:
            return
        fetch.done = True
        self._count -= 1
        for key in fetch.keys:
            waiting = self._by_partition.get(key)
            if waiting is not None:
                waiting.pop(fetch, None)
                if not waiting:
                    del self._by_partition[key]

    def woken(self, keys: Iterable[PartitionKey]) -> list[ParkedFetch]:
        """The distinct live fetches parked on any of `keys`, in parking order."""
        seen: dict[ParkedFetch, None] = {}
        for key in keys:
            waiting = self._by_partition.get(key)
            if waiting:
                seen.update(waiting)
        return list(seen)

    def expired(self, now: float) -> list[ParkedFetch]:
        """Remove and return the fetches whose deadline is at or before `now`."""
        out: list[ParkedFetch] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, fetch = heapq.heappop(heap)
            if not fetch.done:
                self.remove(fetch)
                out.append(fetch)
        return out

    def next_deadline(self) -> float | None:
        """The earliest live deadline (monotonic seconds), or None with nothing parked."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def drain(self) -> list[ParkedFetch]:
        """Remove and return every parked fetch (shutdown: answer them all now)."""
        out = [f for _, _, f in sorted(self._heap) if not f.done]
        for f in out:
            self.remove(f)
        self._heap.clear()
        return out
