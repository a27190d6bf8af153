"""Which partition a record goes to: explicit, else key hash, else sticky round-robin.

Key hash: xxhash32 (seed 0) of the key bytes, modulo the partition count. It is stable across
processes and languages (xxhash has bindings everywhere), so any qnode client puts a key on
the same partition. Keyless records stick to one partition until its batch is sealed, then
move to the next partition round-robin (Kafka's sticky partitioner, KIP-480): full batches,
even spread.
"""

from __future__ import annotations

import random

import xxhash

_hash = xxhash.xxh32_intdigest


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition of a keyed record."""
    return _hash(key) % num_partitions


class StickyPartitioner:
    """Round-robin over partitions, one whole batch at a time, per topic."""

    def __init__(self, seed: int | None = None) -> None:
        self._next: dict[str, int] = {}
        self._rng = random.Random(seed)

    def next_partition(self, topic: str, num_partitions: int) -> int:
        """The partition for the next keyless batch of `topic`."""
        n = self._next.get(topic)
        if n is None:
            n = self._rng.randrange(num_partitions)
        p = n % num_partitions
        self._next[topic] = p + 1
        return p
