"""Byte formats of the consumer protocol carried opaquely by JoinGroup and SyncGroup.

The coordinator never looks inside these: the group leader (a client) reads every member's
`Subscription` and writes each member's `Assignment`. Both are msgpack arrays led by a format
version, so a newer client can add fields at the end and an older one ignores them:

- Subscription v1: `[1, topics, owned_partitions, generation, user_data]` where
  `owned_partitions` is `[[topic, [partition, ...]], ...]` — what the member holds now, so a
  cooperative assignor can keep partitions where they are (KIP-429);
- Assignment v1: `[1, [[topic, [partition, ...]], ...], user_data]`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

FORMAT_VERSION = 1
TP = tuple[str, int]


class GroupProtocolError(ValueError):
    """Subscription or assignment bytes that are not in a format this client knows."""


def _group_by_topic(tps: Iterable[TP]) -> list[list]:
    by_topic: dict[str, list[int]] = defaultdict(list)
    for topic, partition in tps:
        by_topic[topic].append(partition)
    return [[t, sorted(ps)] for t, ps in sorted(by_topic.items())]


def _flatten(raw: list) -> list[TP]:
    return [(str(t), int(p)) for t, ps in raw for p in ps]


def _unpack(raw: bytes, what: str) -> list:
    try:
        v = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise GroupProtocolError(f"undecodable {what}: {e}") from e
    if not isinstance(v, list) or not v or not isinstance(v[0], int) or v[0] < FORMAT_VERSION:
        raise GroupProtocolError(f"unknown {what} format {v!r:.60}")
    return v


@dataclass(slots=True)
class Subscription:
    topics: list[str]
    owned_partitions: list[TP] = field(default_factory=list)
    generation: int = -1
    user_data: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb([FORMAT_VERSION, sorted(self.topics),
                              _group_by_topic(self.owned_partitions), self.generation,
                              self.user_data])

    @classmethod
    def decode(cls, raw: bytes) -> Subscription:
        v = _unpack(raw, "subscription")
        try:
            return cls([str(t) for t in v[1]], _flatten(v[2]), int(v[3]), bytes(v[4]))
        except (IndexError, TypeError, ValueError) as e:
            raise GroupProtocolError(f"malformed subscription: {e}") from e


@dataclass(slots=True)
class Assignment:
    partitions: list[TP] = field(default_factory=list)
    user_data: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb([FORMAT_VERSION, _group_by_topic(self.partitions), self.user_data])

    @classmethod
    def decode(cls, raw: bytes) -> Assignment:
        if not raw:
            return cls()  # a member the leader gave nothing (or a failed generation)
        v = _unpack(raw, "assignment")
        try:
            return cls(_flatten(v[1]), bytes(v[2]))
        except (IndexError, TypeError, ValueError) as e:
            raise GroupProtocolError(f"malformed assignment: {e}") from e
