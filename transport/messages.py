"""Request body schemas per (API, version), and the validation every server runs.

The schemas transcribe docs/internals.md §1. Keys the contract marks nullable are `Opt`; keys
a client may reasonably leave out get a `Default` (filled in, so handlers can index the body
without checks). A body that does not match is INVALID_REQUEST with a message naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qnode.transport.api import ApiKey, VersionRange
from qnode.transport.frame import FrameLike, MalformedRequest, Request, decode_request
from qnode.transport.schema import Default, ListOf, Opt, SchemaError, StrMap, compile_schema

DEFAULT_PARTITION_MAX_BYTES = 1048576
DEFAULT_FETCH_MAX_BYTES = 52428800


def _topics(partition: dict[str, Any]) -> ListOf:
    """Kafka's nesting: `topics: [{name, partitions: [{partition, ...}]}]`."""
    return ListOf({"name": str, "partitions": ListOf({"partition": int, **partition})})


PRODUCE_V0 = {
    "acks": int,
    "timeout_ms": Default(int, 30000),
    "transactional_id": Opt(str),
    "topics": _topics({"frame": int}),
}
FETCH_V0 = {
    "replica_id": Default(int, -1),
    "max_wait_ms": Default(int, 500),
    "min_bytes": Default(int, 1),
    "max_bytes": Default(int, DEFAULT_FETCH_MAX_BYTES),
    "isolation_level": Default(int, 0),
    # a same-host consumer's Unix datagram socket for the answer (transport/doorbell.py)
    "doorbell": Default(Opt(str), None),
    "topics": _topics(
        {
            "fetch_offset": int,
            "partition_max_bytes": Default(int, DEFAULT_PARTITION_MAX_BYTES),
            "current_leader_epoch": Default(int, -1),
        }
    ),
}
LIST_OFFSETS_V0 = {"isolation_level": Default(int, 0), "topics": _topics({"timestamp": int})}
DELETE_RECORDS_V0 = {"timeout_ms": Default(int, 30000), "topics": _topics({"offset": int})}
METADATA_V0 = {"topics": Opt(ListOf(str)), "include_offsets": Default(bool, False)}
CREATE_TOPICS_V0 = {
    "topics": ListOf(
        {
            "name": str,
            "num_partitions": Default(int, -1),
            "replication_factor": Default(int, -1),
            "configs": Default(StrMap(), {}),
        }
    ),
    "validate_only": Default(bool, False),
}
DELETE_TOPICS_V0 = {"topics": ListOf(str)}
# Kafka's CreatePartitions: grow each topic to `count` partitions (never shrink)
CREATE_PARTITIONS_V0 = {
    "topics": ListOf({"name": str, "count": int}),
    "validate_only": Default(bool, False),
}
DESCRIBE_CONFIGS_V0 = {
    "resources": ListOf({"type": str, "name": str, "keys": Opt(ListOf(str))}),
}
INCREMENTAL_ALTER_CONFIGS_V0 = {
    "resources": ListOf(
        {
            "type": str,
            "name": str,
            "configs": ListOf({"name": str, "op": Default(str, "set"), "value": Opt(str)}),
        }
    ),
    "validate_only": Default(bool, False),
}
INIT_PRODUCER_ID_V0 = {
    "transactional_id": Opt(str),
    "transaction_timeout_ms": Default(int, 60000),
    "producer_id": Default(int, -1),
    "producer_epoch": Default(int, -1),
}
FIND_COORDINATOR_V0 = {"key": str, "key_type": Default(int, 0)}
JOIN_GROUP_V0 = {
    "group_id": str,
    "session_timeout_ms": int,
    "rebalance_timeout_ms": Default(int, -1),
    "member_id": Default(str, ""),
    "group_instance_id": Opt(str),
    "protocol_type": Default(str, "consumer"),
    "protocols": ListOf({"name": str, "metadata": bytes}),
}
SYNC_GROUP_V0 = {
    "group_id": str,
    "generation_id": int,
    "member_id": str,
    "group_instance_id": Opt(str),
    "assignments": Default(ListOf({"member_id": str, "assignment": bytes}), []),
}
HEARTBEAT_V0 = {
    "group_id": str,
    "generation_id": int,
    "member_id": str,
    "group_instance_id": Opt(str),
}
LEAVE_GROUP_V0 = {
    "group_id": str,
    "members": ListOf({"member_id": str, "group_instance_id": Opt(str)}),
}
OFFSET_COMMIT_V0 = {
    "group_id": str,
    "generation_id": Default(int, -1),
    "member_id": Default(str, ""),
    "group_instance_id": Opt(str),
    "topics": _topics(
        {"offset": int, "leader_epoch": Default(int, -1), "metadata": Default(Opt(str), "")}
    ),
}
OFFSET_FETCH_V0 = {
    "group_id": str,
    "topics": Opt(ListOf({"name": str, "partitions": ListOf(int)})),
}
LIST_GROUPS_V0: dict[str, Any] = {}
DESCRIBE_GROUPS_V0 = {"groups": ListOf(str)}
DELETE_GROUPS_V0 = {"groups": ListOf(str)}
API_VERSIONS_V0: dict[str, Any] = {}
WORKER_HELLO_V0 = {"node_id": int, "worker_id": int, "endpoint": str, "pid": int}
METADATA_LOG_FETCH_V0 = {"offset": int, "max_wait_ms": Default(int, 0)}

REQUEST_SCHEMAS: Mapping[tuple[int, int], dict[str, Any]] = {
    (ApiKey.PRODUCE, 0): PRODUCE_V0,
    (ApiKey.FETCH, 0): FETCH_V0,
    (ApiKey.LIST_OFFSETS, 0): LIST_OFFSETS_V0,
    (ApiKey.METADATA, 0): METADATA_V0,
    (ApiKey.OFFSET_COMMIT, 0): OFFSET_COMMIT_V0,
    (ApiKey.OFFSET_FETCH, 0): OFFSET_FETCH_V0,
    (ApiKey.FIND_COORDINATOR, 0): FIND_COORDINATOR_V0,
    (ApiKey.JOIN_GROUP, 0): JOIN_GROUP_V0,
    (ApiKey.HEARTBEAT, 0): HEARTBEAT_V0,
    (ApiKey.LEAVE_GROUP, 0): LEAVE_GROUP_V0,
    (ApiKey.SYNC_GROUP, 0): SYNC_GROUP_V0,
    (ApiKey.DESCRIBE_GROUPS, 0): DESCRIBE_GROUPS_V0,
    (ApiKey.LIST_GROUPS, 0): LIST_GROUPS_V0,
    (ApiKey.API_VERSIONS, 0): API_VERSIONS_V0,
    (ApiKey.CREATE_TOPICS, 0): CREATE_TOPICS_V0,
    (ApiKey.CREATE_PARTITIONS, 0): CREATE_PARTITIONS_V0,
    (ApiKey.DELETE_TOPICS, 0): DELETE_TOPICS_V0,
    (ApiKey.DELETE_RECORDS, 0): DELETE_RECORDS_V0,
    (ApiKey.INIT_PRODUCER_ID, 0): INIT_PRODUCER_ID_V0,
    (ApiKey.DESCRIBE_CONFIGS, 0): DESCRIBE_CONFIGS_V0,
    (ApiKey.DELETE_GROUPS, 0): DELETE_GROUPS_V0,
    (ApiKey.INCREMENTAL_ALTER_CONFIGS, 0): INCREMENTAL_ALTER_CONFIGS_V0,
    (ApiKey.WORKER_HELLO, 0): WORKER_HELLO_V0,
    (ApiKey.METADATA_LOG_FETCH, 0): METADATA_LOG_FETCH_V0,
}


_CHECKS = {key: compile_schema(schema) for key, schema in REQUEST_SCHEMAS.items()}


def validate_request(req: Request) -> None:
    """Check a decoded request's body against its schema (defaults filled in place).

    Raises `MalformedRequest` (INVALID_REQUEST) naming the offending key.
    """
    check = _CHECKS.get((req.api_key, req.version))
    if check is None:
        raise MalformedRequest(f"no schema for API {req.api_key} version {req.version}", req.header)
    try:
        check(req.body)
    except SchemaError as exc:
        raise MalformedRequest(str(exc), req.header) from None


def parse_request(
    frames: Sequence[FrameLike], served: Mapping[int, VersionRange] | None = None
) -> Request:
    """Decode `[header, body, *data]` and validate the body: what a server's loop calls.

    Raises `MalformedRequest` / `UnsupportedVersion` (both `RequestError`); answer with
    `frame.response_for_error(exc)`.
    """
    req = decode_request(frames, served)
    validate_request(req)
    return req
