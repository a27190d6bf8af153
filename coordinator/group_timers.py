"""Deadlines of the group coordinator, on a heap, driven by whoever owns the clock.

The coordinator's poll loop asks `next_deadline()` to bound its poll timeout and calls
`pop_due(now)` after every wake-up: no thread and no sleep loop. Entries are never removed
early; the owner re-checks each fired entry against the current state (a heartbeat moves a
member's deadline without touching the heap), which keeps every operation O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class DeadlineHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Hashable]] = []
        self._seq = itertools.count()

    def schedule(self, deadline_ms: int, key: Hashable) -> None:
        heapq.heappush(self._heap, (deadline_ms, next(self._seq), key))

    def next_deadline(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int) -> list[Hashable]:
        due = []
        while self._heap and self._heap[0][0] <= now_ms:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def __len__(self) -> int:
        return len(self._heap)
