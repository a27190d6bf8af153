"""A worker's copy of the cluster metadata, fed by MetadataLogFetch responses, in order.

The follower keeps the coordinator's `MetadataImage` (same apply code, so every process of the
cluster reaches the same state) and answers the questions a worker asks: which partition
replicas are placed on me (`owned`), and for one I do not own, whether the partition exists
at all (NOT_LEADER_OR_FOLLOWER vs UNKNOWN_TOPIC_OR_PARTITION). The worker reconciles its open
logs against `owned()` after each response rather than reacting to single records: a topic
deleted and re-created between two polls is then seen as a new topic id, and a snapshot is
handled the same way as a stream of records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qnode.coordinator import records as rec
from qnode.coordinator.image import MetadataImage
from qnode.transport.errors import ErrorCode


class MetadataGapError(Exception):
    """A response the follower cannot place in the log (refetch from where the image stands)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """What the metadata says about one partition replica placed on this worker."""

    topic: str
    partition: int
    topic_id: str
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    configs: dict[str, str]
    config_version: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


class MetadataFollower:
    def __init__(self, node_id: int, worker_id: int) -> None:
        self.node_id = node_id
        self.worker_id = worker_id
        self.image = MetadataImage()
        self.synced = False  # True after the first response: `owned()` is authoritative

    @property
    def next_offset(self) -> int:
        return self.image.offset

    def apply_response(self, body: dict[str, Any]) -> int:
        """Apply a MetadataLogFetch response body; return how many records it applied.

        Records at offsets already applied are skipped (a resent answer); offsets may jump
        forward (log entries that are not metadata records, e.g. a new leader's no-op), and
        `next_offset` moves the image past such entries. Raises `MetadataGapError` on a record
        without an offset, `rec.BadRecordError` on a malformed record (the image then stands
        at the last record applied).
        """
        snapshot = body.get("snapshot")
        if snapshot is not None:
            self.image = MetadataImage.from_dict(snapshot)
        applied = 0
        for raw in body.get("records") or ():
            offset = raw.get("offset") if isinstance(raw, dict) else None
            if type(offset) is not int:
                raise MetadataGapError(f"metadata record without an offset: {raw!r:.200}")
            if offset < self.image.offset:
                continue  # already applied: applying twice is not idempotent
            record = {k: v for k, v in raw.items() if k not in ("offset", "term")}
            self.image.apply(rec.check_record(record), offset)
            applied += 1
        next_offset = body.get("next_offset")
        if type(next_offset) is int and next_offset > self.image.offset:
            self.image.offset = next_offset
        self.synced = True
        return applied

    def owned(self) -> dict[tuple[str, int], Placement]:
        """Every partition replica the metadata places on this worker of this node."""
        out: dict[tuple[str, int], Placement] = {}
        for t in self.image.topics.values():
            for p in t.partitions.values():
                if p.worker == self.worker_id and self.node_id in p.replicas:
                    out[(t.name, p.partition)] = Placement(
                        t.name,
                        p.partition,
                        t.topic_id,
                        p.leader,
                        p.leader_epoch,
                        tuple(p.replicas),
                        tuple(p.isr),
                        dict(t.configs),
                        t.config_version,
                    )
        return out

    def missing_error(self, topic: str, partition: int) -> ErrorCode:
        """The error for a partition this worker does not serve."""
        t = self.image.topics.get(topic)
        if t is None or partition not in t.partitions:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return ErrorCode.NOT_LEADER_OR_FOLLOWER

    def topic_names(self) -> set[str]:
        return set(self.image.topics)
