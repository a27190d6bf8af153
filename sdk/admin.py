"""`Admin`: topics, configs and cluster state, through the bootstrap endpoint's coordinator.

Calls are synchronous and thread-safe: one lock serialises every use of the admin's own
sockets (ZeroMQ lets a socket move between threads behind such a full memory barrier). Topic
creation waits, by default, until every new partition has a leader a client can reach, so
`create_topic(); Producer().send()` works without a sleep. Consumer-group operations are
delegated to `qnode.sdk.group_admin.GroupAdmin(admin)` (the consumer-groups feature), which
uses `_call` / `_call_endpoint` and `_metadata` from here (docs/internals.md §4).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import (
    QnodeError,
    RequestTimeoutError,
    UnknownTopicError,
    error_for,
)
from qnode.sdk.metadata import Metadata, parse_topic
from qnode.sdk.types import (
    ClusterDescription,
    ConfigEntry,
    GroupDescription,
    NodeDescription,
    PartitionDescription,
    TopicDescription,
    TopicPartition,
)
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import Response


class Admin:
    """Administrative client of a qnode cluster."""

    def __init__(self, bootstrap: str | Iterable[str] | None = None, *,
                 request_timeout_ms: int = 30000, client_id: str | None = None,
                 retry_backoff_ms: int = 100) -> None:
        self.client_id = client_id or f"admin-{uuid.uuid4().hex[:8]}"
        self._client = NetworkClient(self.client_id, request_timeout_ms)
        self._metadata = Metadata(bootstrap, retry_backoff_ms)
        self._lock = threading.RLock()
        self.request_timeout_ms = request_timeout_ms
        self._retry_backoff = retry_backoff_ms / 1000.0
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _call(self, api: ApiKey, body: dict[str, Any], timeout: float | None = None) -> Response:
        """One request to a coordinator (bootstrap endpoints in turn on network errors)."""
        timeout_ms = self.request_timeout_ms if timeout is None else int(timeout * 1000)
        with self._lock:
            if self._closed:
                raise QnodeError("admin client is closed")
            md = self._metadata
            last: QnodeError | None = None
            for _ in range(len(md.bootstrap) + len(md.nodes)):
                try:
                    return self._client.request(md.endpoint(), api, body, timeout_ms=timeout_ms)
                except QnodeError as exc:
                    if not exc.retriable:
                        raise
                    last = exc
                    md.rotate()
            assert last is not None
            raise last

    def _call_endpoint(self, endpoint: str, api: ApiKey, body: dict[str, Any],
                       timeout: float | None = None) -> Response:
        timeout_ms = self.request_timeout_ms if timeout is None else int(timeout * 1000)
        with self._lock:
            return self._client.request(endpoint, api, body, timeout_ms=timeout_ms)

    def _fetch_metadata(self, topics: list[str] | None, include_offsets: bool = False,
                        timeout: float | None = None) -> dict[str, Any]:
        timeout_ms = self.request_timeout_ms if timeout is None else int(timeout * 1000)
        with self._lock:
            return self._metadata.fetch(self._client, topics, include_offsets, timeout_ms)

    @staticmethod
    def _check(entry: Mapping[str, Any], what: str) -> None:
        code = entry.get("error", 0)
        if code:
            msg = entry.get("message") or what
            raise error_for(code, msg)

    # ------------------------------------------------------------------ topics
    def create_topic(self, name: str, partitions: int | None = None,
                     replication_factor: int | None = None,
                     config: Mapping[str, Any] | None = None, *, validate_only: bool = False,
                     wait: bool = True, timeout: float | None = None) -> None:
        """Create a topic (None takes the node's num.partitions / default.replication.factor).

        With `wait`, returns once every partition has a leader (up to `timeout` s).
        """
        body = {"topics": [{"name": name,
                            "num_partitions": -1 if partitions is None else int(partitions),
                            "replication_factor": -1 if replication_factor is None
                            else int(replication_factor),
                            "configs": {str(k): str(v) for k, v in (config or {}).items()}}],
                "validate_only": validate_only}
        resp = self._call(ApiKey.CREATE_TOPICS, body, timeout)
        for entry in resp.body.get("topics") or []:
            self._check(entry, f"topic {name!r}")
        if wait and not validate_only:
            self._wait_for(name, lambda info: info is not None and bool(info.partitions) and all(
                p.leader >= 0 and p.endpoint for p in info.partitions), timeout)

    def _wait_for(self, name: str, ready: Any, timeout: float | None) -> None:
        deadline = time.monotonic() + (self.request_timeout_ms / 1000.0 if timeout is None
                                       else timeout)
        while True:
            body = self._fetch_metadata([name], timeout=max(0.1, deadline - time.monotonic()))
            entry = next((t for t in body.get("topics") or [] if t.get("name") == name), None)
            info = None
            if entry is not None and not entry.get("error"):
                info = parse_topic(entry)
            if ready(info):
                return
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(f"topic {name!r} not ready after {timeout} s")
            time.sleep(0.02)

    def create_partitions(self, name: str, count: int, *, validate_only: bool = False,
                          wait: bool = True, timeout: float | None = None) -> None:
        """Grow a topic to `count` partitions (only ever more, as in Kafka: keyed records then
        hash over the new count). With `wait`, returns once every partition has a leader."""
        body = {"topics": [{"name": name, "count": int(count)}], "validate_only": validate_only}
        resp = self._call(ApiKey.CREATE_PARTITIONS, body, timeout)
        for entry in resp.body.get("topics") or []:
            self._check(entry, f"topic {name!r}")
        if wait and not validate_only:
            self._wait_for(name, lambda info: info is not None
                           and len(info.partitions) >= count and all(
                               p.leader >= 0 and p.endpoint for p in info.partitions), timeout)

    def delete_topic(self, name: str, *, wait: bool = True, timeout: float | None = None) -> None:
        resp = self._call(ApiKey.DELETE_TOPICS, {"topics": [name]}, timeout)
        for entry in resp.body.get("topics") or []:
            self._check(entry, f"topic {name!r}")
        if wait:
            self._wait_for(name, lambda info: info is None, timeout)

    def list_topics(self, internal: bool = False) -> list[str]:
        body = self._fetch_metadata(None)
        return sorted(t["name"] for t in body.get("topics") or []
                      if not t.get("error") and (internal or not t.get("internal")))

    def describe_topic(self, name: str, timeout: float | None = None) -> TopicDescription:
        """Partitions with leader, replicas, ISR, log start offset and high watermark."""
        body = self._fetch_metadata([name], include_offsets=True, timeout=timeout)
        entry = next((t for t in body.get("topics") or [] if t.get("name") == name), None)
        if entry is None or entry.get("error") == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            raise UnknownTopicError(f"UNKNOWN_TOPIC_OR_PARTITION: topic {name!r} does not exist",
                                    retriable=False)
        self._check(entry, f"topic {name!r}")
        info = parse_topic(entry)
        return TopicDescription(name, [PartitionDescription(
            id=p.partition, leader=p.leader, replicas=p.replicas, isr=p.isr,
            log_start_offset=p.log_start_offset, high_watermark=p.high_watermark,
            log_end_offset=p.log_end_offset, leader_epoch=p.leader_epoch,
            endpoint=p.endpoint or "", error=p.error) for p in info.partitions], info.internal)

    def describe_configs(self, name: str, keys: Iterable[str] | None = None,
                         resource_type: str = "topic") -> list[ConfigEntry]:
        body = {"resources": [{"type": resource_type, "name": name,
                               "keys": None if keys is None else list(keys)}]}
        resp = self._call(ApiKey.DESCRIBE_CONFIGS, body)
        out: list[ConfigEntry] = []
        for res in resp.body.get("resources") or []:
            self._check(res, f"{resource_type} {name!r}")
            for c in res.get("configs") or []:
                out.append(ConfigEntry(c["name"], c.get("value"), c.get("source", ""),
                                       bool(c.get("read_only"))))
        return sorted(out, key=lambda c: c.name)

    def alter_topic_config(self, name: str, config: Mapping[str, Any], *,
                           validate_only: bool = False) -> None:
        """Set keys (value None deletes the topic override, back to the node default)."""
        ops = [{"name": k, "op": "delete", "value": None} if v is None
               else {"name": k, "op": "set", "value": str(v)} for k, v in config.items()]
        body = {"resources": [{"type": "topic", "name": name, "configs": ops}],
                "validate_only": validate_only}
        resp = self._call(ApiKey.INCREMENTAL_ALTER_CONFIGS, body)
        for res in resp.body.get("resources") or []:
            self._check(res, f"topic {name!r}")

    def delete_records(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Move log start offsets forward; returns the new low watermarks."""
        self._fetch_metadata(sorted({tp.topic for tp in offsets}))
        by_ep: dict[str, dict[str, list[dict[str, int]]]] = {}
        for tp, off in offsets.items():
            ep = self._metadata.leader_endpoint(tp)
            if ep is None:
                raise UnknownTopicError(f"no leader for {tp.topic}-{tp.partition}")
            by_ep.setdefault(ep, {}).setdefault(tp.topic, []).append(
                {"partition": tp.partition, "offset": off})
        out: dict[TopicPartition, int] = {}
        for ep, topics in by_ep.items():
            resp = self._call_endpoint(ep, ApiKey.DELETE_RECORDS, {"topics": [
                {"name": t, "partitions": p} for t, p in topics.items()]})
            for t in resp.body.get("topics") or []:
                for p in t.get("partitions") or []:
                    self._check(p, f"{t['name']}-{p['partition']}")
                    out[TopicPartition(t["name"], p["partition"])] = p.get("low_watermark", -1)
        return out

    # ------------------------------------------------------------------ cluster
    def describe_cluster(self) -> ClusterDescription:
        body = self._fetch_metadata([])
        return ClusterDescription(
            body.get("cluster_id", ""), body.get("controller_id", -1),
            [NodeDescription(n["node_id"], n["bootstrap"]) for n in body.get("nodes") or []])

    def api_versions(self) -> dict[int, tuple[int, int]]:
        resp = self._call(ApiKey.API_VERSIONS, {})
        return {k: (lo, hi) for k, lo, hi in resp.body.get("apis") or []}

    # ------------------------------------------------------------------ groups
    def _groups(self) -> Any:
        try:
            from qnode.sdk.group_admin import GroupAdmin  # type: ignore[import]
        except ImportError:
            raise QnodeError("consumer groups are not available in this qnode version") from None
        return GroupAdmin(self)

    def list_groups(self) -> list[str]:
        return self._groups().list_groups()

    def describe_group(self, group_id: str) -> GroupDescription:
        return self._groups().describe_group(group_id)

    def reset_group_offsets(self, group_id: str, topic: str,
                            to: str | int | datetime) -> dict[TopicPartition, int]:
        return self._groups().reset_group_offsets(group_id, topic, to)

    def delete_group(self, group_id: str) -> None:
        return self._groups().delete_group(group_id)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
