"""The client's view of the cluster: topic → partitions → leader worker endpoint.

Filled from Metadata responses (served by any node's coordinator on its bootstrap endpoint).
The owning thread refreshes it through a `NetworkClient`; other threads only read it (plain
dict reads, atomic under the GIL) — e.g. the producer's `send()` reads partition counts.
Refreshes after NOT_LEADER / UNKNOWN_TOPIC / a lost connection are rate-limited by
`retry_backoff_ms` so a flapping partition cannot turn the client into a metadata storm.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import (
    InvalidConfigError,
    NetworkError,
    QnodeError,
    UnknownTopicError,
    error_for,
)
from qnode.sdk.types import TopicPartition
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.sockets import split_endpoint

DEFAULT_BOOTSTRAP = "tcp://127.0.0.1:9700"


@dataclass(slots=True)
class PartitionInfo:
    partition: int
    leader: int
    leader_epoch: int
    endpoint: str | None
    replicas: list[int] = field(default_factory=list)
    isr: list[int] = field(default_factory=list)
    error: int = 0
    log_start_offset: int = -1
    high_watermark: int = -1
    log_end_offset: int = -1


@dataclass(slots=True)
class TopicInfo:
    name: str
    error: int
    partitions: list[PartitionInfo]
    internal: bool = False
    message: str | None = None


def parse_bootstrap(bootstrap: str | Iterable[str] | None) -> list[str]:
    """Endpoints from "tcp://a:1,tcp://b:2", a list, or None (the default endpoint)."""
    if bootstrap is None:
        return [DEFAULT_BOOTSTRAP]
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "://" not in item:
            item = "tcp://" + item
        check_endpoint(item)
        out.append(item)
    if not out:
        raise InvalidConfigError(f"no endpoint in bootstrap {bootstrap!r}")
    return out


def check_endpoint(endpoint: str) -> None:
    """Raise InvalidConfigError unless `endpoint` is tcp://host:port (port 1-65535): a bad
    one must fail where the user wrote it, not as a zmq error deep in a send."""
    try:
        scheme, host, port = split_endpoint(endpoint)
    except ValueError:
        scheme, host, port = "", "", None
    if scheme != "tcp" or not host or port is None or not 0 < port < 65536:
        raise InvalidConfigError(f"bootstrap endpoint {endpoint!r} is not tcp://host:port "
                         "(port 1-65535)")


def parse_topic(entry: dict[str, Any]) -> TopicInfo:
    parts = []
    for p in entry.get("partitions") or []:
        parts.append(PartitionInfo(
            partition=p["partition"], leader=p.get("leader", -1),
            leader_epoch=p.get("leader_epoch", -1), endpoint=p.get("endpoint") or None,
            replicas=list(p.get("replicas") or []), isr=list(p.get("isr") or []),
            error=p.get("error", 0), log_start_offset=p.get("log_start_offset", -1),
            high_watermark=p.get("high_watermark", -1),
            log_end_offset=p.get("log_end_offset", -1)))
    parts.sort(key=lambda p: p.partition)
    return TopicInfo(entry["name"], entry.get("error", 0), parts, bool(entry.get("internal")),
                     entry.get("message"))


class Metadata:
    """Cached cluster metadata plus the bootstrap endpoints to refresh it from."""

    def __init__(self, bootstrap: str | Iterable[str] | None, retry_backoff_ms: int = 100,
                 metadata_max_age_ms: int = 300000) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self._next_bootstrap = 0
        self.retry_backoff = retry_backoff_ms / 1000.0
        self.max_age = metadata_max_age_ms / 1000.0
        self.topics: dict[str, TopicInfo] = {}
        self.partition_counts: dict[str, int] = {}  # read by other threads: keep it a plain dict
        self.unknown: set[str] = set()  # topics the node says do not exist
        self.nodes: dict[int, str] = {}
        self.cluster_id = ""
        self.controller_id = -1
        self.last_refresh = 0.0
        self.last_attempt = 0.0
        self.stale = False  # set after NOT_LEADER etc.: refresh at the next chance
        self.version = 0  # bumped by every applied response

    # ------------------------------------------------------------------ reading
    def leader_endpoint(self, tp: TopicPartition) -> str | None:
        info = self.topics.get(tp.topic)
        if info is None or tp.partition >= len(info.partitions):
            return None
        part = info.partitions[tp.partition]
        if part.error or part.leader < 0:
            return None
        return part.endpoint

    def partition(self, topic: str, partition: int) -> PartitionInfo | None:
        info = self.topics.get(topic)
        if info is None or partition >= len(info.partitions):
            return None
        return info.partitions[partition]

    def refresh_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self.last_attempt < self.retry_backoff:
            return False
        return self.stale or now - self.last_refresh > self.max_age

    def endpoint(self) -> str:
        """A bootstrap endpoint (rotating after failures) or a known node's."""
        candidates = self.bootstrap + [e for e in self.nodes.values() if e not in self.bootstrap]
        return candidates[self._next_bootstrap % len(candidates)]

    def rotate(self) -> None:
        self._next_bootstrap += 1

    # ------------------------------------------------------------------ updating
    def apply(self, body: dict[str, Any], requested: Iterable[str] | None) -> None:
        """Merge a Metadata response body; `requested` None means every topic was listed."""
        self.cluster_id = body.get("cluster_id", self.cluster_id)
        self.controller_id = body.get("controller_id", self.controller_id)
        for n in body.get("nodes") or []:
            self.nodes[n["node_id"]] = n["bootstrap"]
        seen = set()
        for entry in body.get("topics") or []:
            info = parse_topic(entry)
            seen.add(info.name)
            if info.error == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                self.topics.pop(info.name, None)
                self.partition_counts.pop(info.name, None)
                self.unknown.add(info.name)
                continue
            self.unknown.discard(info.name)
            self.topics[info.name] = info
            if info.partitions:
                self.partition_counts[info.name] = len(info.partitions)
        if requested is None:
            for name in list(self.topics):
                if name not in seen:
                    self.topics.pop(name, None)
                    self.partition_counts.pop(name, None)
        now = time.monotonic()
        self.version += 1
        self.last_refresh = now
        self.last_attempt = now
        self.stale = False

    def request_body(self, topics: Iterable[str] | None,
                     include_offsets: bool = False) -> dict[str, Any]:
        return {"topics": None if topics is None else sorted(set(topics)),
                "include_offsets": include_offsets}

    def fetch(self, client: NetworkClient, topics: Iterable[str] | None,
              include_offsets: bool = False, timeout_ms: int | None = None) -> dict[str, Any]:
        """Blocking refresh through `client`; tries each bootstrap endpoint once."""
        topics = None if topics is None else list(topics)
        self.last_attempt = time.monotonic()
        last: QnodeError | None = None
        for _ in range(len(self.bootstrap) + len(self.nodes)):
            ep = self.endpoint()
            try:
                resp = client.request(ep, ApiKey.METADATA,
                                      self.request_body(topics, include_offsets), (), timeout_ms)
            except NetworkError as exc:
                last = exc
                self.rotate()
                continue
            except QnodeError as exc:
                if not exc.retriable:
                    raise
                last = exc
                self.rotate()
                continue
            self.apply(resp.body, topics)
            return resp.body
        assert last is not None
        raise last

    def require_topic(self, name: str) -> TopicInfo:
        info = self.topics.get(name)
        if info is None:
            raise UnknownTopicError(f"UNKNOWN_TOPIC_OR_PARTITION: topic {name!r} does not exist",
                                    retriable=False)
        if info.error:
            raise error_for(info.error, info.message or f"topic {name!r}")
        return info
