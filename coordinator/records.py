"""Metadata records: the entries of the metadata log (docs/internals.md §3).

A record is a plain dict with a `"type"` and the fields of that type; on disk it is the msgpack
value of one Kafka record inside a RecordBatch of the `__cluster_metadata-0` log, and on the
wire (MetadataLogFetch) the same dict plus `"offset"` and `"term"`. Constructors here build
well-formed records; `check_record` validates one read back from disk or a peer, so a damaged
record is refused before it can change state.
"""

from __future__ import annotations

from typing import Any

import msgpack

TOPIC = "topic"
PARTITION = "partition"
REMOVE_TOPIC = "remove_topic"
CONFIG = "config"
PRODUCER_IDS = "producer_ids"
REGISTER_NODE = "register_node"
WORKER = "worker"
LEADER_CHANGE = "leader_change"

# Required fields and their types, per record type.
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    TOPIC: {"name": str, "topic_id": str, "configs": dict, "internal": bool},
    PARTITION: {
        "topic": str,
        "partition": int,
        "replicas": list,
        "isr": list,
        "leader": int,
        "leader_epoch": int,
        "worker": int,
    },
    REMOVE_TOPIC: {"name": str},
    CONFIG: {"topic": str, "configs": dict},
    PRODUCER_IDS: {"next": int, "node_id": int},
    REGISTER_NODE: {"node_id": int, "bootstrap": str},
    WORKER: {"node_id": int, "worker_id": int, "endpoint": str},
    LEADER_CHANGE: {"leader": int, "controller_epoch": int, "voters": list},
}
# Served records carry these two keys besides their own fields (MetadataLogFetch).
WIRE_KEYS = ("offset", "term")
assert not any(k in fields for fields in _FIELDS.values() for k in WIRE_KEYS)


class BadRecordError(ValueError):
    """A metadata record that is not well formed (unknown type, missing or mistyped field)."""


def check_record(record: Any) -> dict[str, Any]:
    """Return `record` if it is a well-formed metadata record, else raise BadRecordError."""
    if not isinstance(record, dict):
        raise BadRecordError(f"metadata record is a {type(record).__name__}, expected a map")
    fields = _FIELDS.get(record.get("type"))  # type: ignore[arg-type]
    if fields is None:
        raise BadRecordError(f"unknown metadata record type {record.get('type')!r}")
    for name, kind in fields.items():
        value = record.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadRecordError(f"metadata record {record['type']!r}: bad field {name!r}")
    return record


def encode(record: dict[str, Any]) -> bytes:
    return msgpack.packb(check_record(record), use_bin_type=True)


def decode(value: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(value, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise BadRecordError(f"metadata record is not valid msgpack: {exc}") from None
    return check_record(obj)


def topic(name: str, topic_id: str, configs: dict[str, str], internal: bool = False) -> dict:
    return {
        "type": TOPIC,
        "name": name,
        "topic_id": topic_id,
        "configs": dict(configs),
        "internal": internal,
    }


def partition(
    topic_name: str,
    index: int,
    replicas: list[int],
    isr: list[int],
    leader: int,
    leader_epoch: int,
    worker: int,
) -> dict:
    return {
        "type": PARTITION,
        "topic": topic_name,
        "partition": index,
        "replicas": list(replicas),
        "isr": list(isr),
        "leader": leader,
        "leader_epoch": leader_epoch,
        "worker": worker,
    }


def remove_topic(name: str) -> dict:
    return {"type": REMOVE_TOPIC, "name": name}


def config(topic_name: str, configs: dict[str, str]) -> dict:
    """The topic's whole set of config overrides after a change (it replaces the previous set)."""
    return {"type": CONFIG, "topic": topic_name, "configs": dict(configs)}


def producer_ids(node_id: int, next_id: int) -> dict:
    """A block of producer ids ending before `next_id` now belongs to `node_id`."""
    return {"type": PRODUCER_IDS, "node_id": node_id, "next": next_id}


def register_node(node_id: int, bootstrap: str) -> dict:
    return {"type": REGISTER_NODE, "node_id": node_id, "bootstrap": bootstrap}


def worker(node_id: int, worker_id: int, endpoint: str) -> dict:
    """Where a worker serves (its ROUTER): written when a worker says hello from a new endpoint."""
    return {"type": WORKER, "node_id": node_id, "worker_id": worker_id, "endpoint": endpoint}


def leader_change(leader: int, term: int, voters: list[int]) -> dict:
    """The first record of a term, written by its leader (commits all records before it).
    `controller_epoch` is that term: what fences a deposed controller."""
    return {
        "type": LEADER_CHANGE,
        "leader": leader,
        "controller_epoch": term,
        "voters": list(voters),
    }
