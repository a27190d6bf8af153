"""API keys of the wire protocol and the versions each side serves.

Numbers are Kafka's where Kafka has the API (docs/internals.md §1), so a Kafka user reading a
log line knows them on sight; the internal worker↔coordinator APIs live at 1000 and up.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class ApiKey(IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    DESCRIBE_CONFIGS = 32
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    INCREMENTAL_ALTER_CONFIGS = 44
    WORKER_HELLO = 1000
    METADATA_LOG_FETCH = 1001


# The api_key a server puts in the answer to a request whose header it could not parse.
UNPARSEABLE_API_KEY = 0xFFFF

VersionRange = tuple[int, int]

# Every (API, version) anyone on the node serves: min and max version, inclusive.
SUPPORTED_VERSIONS: Mapping[ApiKey, VersionRange] = {key: (0, 0) for key in ApiKey}

# What a worker's ROUTER serves.
WORKER_APIS: Mapping[ApiKey, VersionRange] = {
    key: SUPPORTED_VERSIONS[key]
    for key in (
        ApiKey.PRODUCE,
        ApiKey.FETCH,
        ApiKey.LIST_OFFSETS,
        ApiKey.DELETE_RECORDS,
        ApiKey.API_VERSIONS,
    )
}

# What the coordinator's bootstrap ROUTER serves: everything a worker does not, plus ApiVersions.
COORDINATOR_APIS: Mapping[ApiKey, VersionRange] = {
    key: rng
    for key, rng in SUPPORTED_VERSIONS.items()
    if key not in WORKER_APIS or key is ApiKey.API_VERSIONS
}


def api_name(api_key: int) -> str:
    """The symbolic name of an API key, or `UNKNOWN(<key>)`."""
    try:
        return ApiKey(api_key).name
    except ValueError:
        return f"UNKNOWN({api_key})"


def api_versions_body(served: Mapping[ApiKey, VersionRange]) -> dict[str, object]:
    """The ApiVersions response body for a server serving `served`."""
    return {"error": 0, "apis": [[int(k), lo, hi] for k, (lo, hi) in sorted(served.items())]}
