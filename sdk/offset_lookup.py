"""ListOffsets for the consumer: earliest, latest or by timestamp, per partition.

Each partition is asked of its leader worker; partitions whose leader is unknown or moved
(NOT_LEADER, a lost connection) are retried after a metadata refresh and `retry_backoff`,
until the deadline. A topic or partition the cluster does not have fails at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import QnodeError, RequestTimeoutError, UnknownTopicError, error_for
from qnode.sdk.metadata import Metadata
from qnode.sdk.types import TopicPartition
from qnode.transport.api import ApiKey


def _check_exists(md: Metadata, tps: list[TopicPartition]) -> None:
    for tp in tps:
        if tp.topic in md.unknown:
            raise UnknownTopicError(
                f"UNKNOWN_TOPIC_OR_PARTITION: topic {tp.topic!r} does not exist",
                retriable=False)
        info = md.topics.get(tp.topic)
        if info is not None and tp.partition >= len(info.partitions):
            raise UnknownTopicError(
                f"UNKNOWN_TOPIC_OR_PARTITION: {tp.topic}-{tp.partition} does not exist",
                retriable=False)


def list_offsets(client: NetworkClient, md: Metadata, targets: Mapping[TopicPartition, int],
                 isolation_level: int, timeout: float, retry_backoff: float
                 ) -> dict[TopicPartition, tuple[int, int]]:
    """{tp: (offset, timestamp)} for each target timestamp (-2 earliest, -1 latest, or ms).

    The offset is -1 where no record has a timestamp at or after the one asked.
    """
    deadline = time.monotonic() + timeout
    remaining = dict(targets)
    result: dict[TopicPartition, tuple[int, int]] = {}
    last_error: QnodeError | None = None
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            raise last_error or RequestTimeoutError("ListOffsets timed out")
        if md.stale or any(md.leader_endpoint(tp) is None for tp in remaining):
            try:
                md.fetch(client, {tp.topic for tp in remaining}, timeout_ms=int(left * 1000))
            except QnodeError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
                time.sleep(min(retry_backoff, max(0.0, left)))
                continue
            _check_exists(md, list(remaining))
        by_ep: dict[str, dict[str, list[dict[str, int]]]] = {}
        for tp, ts in remaining.items():
            ep = md.leader_endpoint(tp)
            if ep is not None:
                by_ep.setdefault(ep, {}).setdefault(tp.topic, []).append(
                    {"partition": tp.partition, "timestamp": ts})
        if not by_ep:
            md.stale = True
            time.sleep(min(retry_backoff, max(0.0, left)))
            continue
        for ep, topics in by_ep.items():
            body = {"isolation_level": isolation_level,
                    "topics": [{"name": t, "partitions": p} for t, p in topics.items()]}
            try:
                resp = client.request(ep, ApiKey.LIST_OFFSETS, body,
                                      timeout_ms=int(max(0.05, left) * 1000))
            except QnodeError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
                md.stale = True
                continue
            for t in resp.body.get("topics") or []:
                for p in t.get("partitions") or []:
                    tp = TopicPartition(t["name"], p["partition"])
                    code = p.get("error", 0)
                    if code:
                        err = error_for(code, p.get("message"))
                        if not err.retriable:
                            raise err
                        last_error = err
                        md.stale = True
                        continue
                    result[tp] = (p.get("offset", -1), p.get("timestamp", -1))
                    remaining.pop(tp, None)
        if remaining:
            time.sleep(min(retry_backoff, max(0.0, deadline - time.monotonic())))
    return result
