"""Record formats of the `__consumer_offsets` topic and the group → partition mapping.

Two kinds of record share the compacted topic, told apart by the key's version tag (Kafka's
numbers: 1 for an offset commit, 2 for group metadata):

- offset commit: key `[1, group, topic, partition]`, value `{"v": 1, "offset", "leader_epoch",
  "metadata", "commit_ts"}`;
- group metadata: key `[2, group]`, value `{"v": 1, "protocol_type", "generation", "protocol",
  "leader", "state_ts", "members": [{member_id, group_instance_id, client_id, client_host,
  session_timeout_ms, rebalance_timeout_ms, subscription, assignment}]}`.

A value of `None` is a tombstone (a deleted group or an expired offset): compaction keeps the
latest value per key, so keys must be byte-for-byte stable — msgpack of a fixed-shape array is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import xxhash

OFFSETS_TOPIC = "__consumer_offsets"
OFFSET_KEY_VERSION = 1
GROUP_KEY_VERSION = 2
VALUE_VERSION = 1


class GroupRecordError(ValueError):
    """A record of the offsets topic that cannot be decoded (corrupt or from a newer version)."""


def partition_for(group_id: str, num_partitions: int) -> int:
    """The `__consumer_offsets` partition that holds `group_id` (a stable hash, not `hash()`)."""
    assert num_partitions > 0
    return xxhash.xxh32_intdigest(group_id.encode("utf-8")) % num_partitions


@dataclass(frozen=True, slots=True)
class OffsetKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class GroupKey:
    group: str


@dataclass(slots=True)
class OffsetValue:
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_ts: int = 0


@dataclass(slots=True)
class MemberValue:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    subscription: bytes
    assignment: bytes


@dataclass(slots=True)
class GroupValue:
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    state_ts: int
    members: list[MemberValue] = field(default_factory=list)


def offset_key(group: str, topic: str, partition: int) -> bytes:
    return msgpack.packb([OFFSET_KEY_VERSION, group, topic, partition])


def group_key(group: str) -> bytes:
    return msgpack.packb([GROUP_KEY_VERSION, group])


def encode_offset_value(v: OffsetValue) -> bytes:
    return msgpack.packb(
        {"v": VALUE_VERSION, "offset": v.offset, "leader_epoch": v.leader_epoch,
         "metadata": v.metadata, "commit_ts": v.commit_ts}
    )


def encode_group_value(v: GroupValue) -> bytes:
    return msgpack.packb(
        {
            "v": VALUE_VERSION,
            "protocol_type": v.protocol_type,
            "generation": v.generation,
            "protocol": v.protocol,
            "leader": v.leader,
            "state_ts": v.state_ts,
            "members": [
                [m.member_id, m.group_instance_id, m.client_id, m.client_host,
                 m.session_timeout_ms, m.rebalance_timeout_ms, m.subscription, m.assignment]
                for m in v.members
            ],
        }
    )


def decode_key(raw: bytes) -> OffsetKey | GroupKey:
    try:
        k = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise GroupRecordError(f"undecodable key: {e}") from e
    if isinstance(k, list) and k:
        if k[0] == OFFSET_KEY_VERSION and len(k) == 4:
            return OffsetKey(str(k[1]), str(k[2]), int(k[3]))
        if k[0] == GROUP_KEY_VERSION and len(k) == 2:
            return GroupKey(str(k[1]))
    raise GroupRecordError(f"unknown key shape {k!r:.80}")


def _unpack_value(raw: bytes) -> dict:
    try:
        v = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise GroupRecordError(f"undecodable value: {e}") from e
    if not isinstance(v, dict) or v.get("v") != VALUE_VERSION:
        raise GroupRecordError(f"unknown value version {v!r:.80}")
    return v


def decode_offset_value(raw: bytes) -> OffsetValue:
    v = _unpack_value(raw)
    return OffsetValue(int(v["offset"]), int(v.get("leader_epoch", -1)),
                       str(v.get("metadata", "")), int(v.get("commit_ts", 0)))


def decode_group_value(raw: bytes) -> GroupValue:
    v = _unpack_value(raw)
    members = [MemberValue(*m) for m in v.get("members", [])]
    return GroupValue(v["protocol_type"], int(v["generation"]), v.get("protocol"),
                      v.get("leader"), int(v.get("state_ts", 0)), members)
