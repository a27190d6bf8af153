"""Retention: which whole segments to delete from the head of a log.

Kafka's three rules, applied in order, each on the oldest segments only, never the active
one and only below the high watermark: segments wholly below the log start offset
(DeleteRecords moved it); segments whose largest timestamp is older than `retention.ms`;
then as many of the oldest as needed to bring the log under `retention.bytes`.
Deleting advances the log start to the next segment.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnode.storage.log import Log


@dataclass(frozen=True)
class RetentionResult:
    deleted_segments: int
    deleted_bytes: int
    log_start_offset: int


def segments_to_delete(log: Log, now_ms: int) -> int:
    """How many of the oldest closed segments the policy removes now. As in Kafka, only
    segments wholly below the high watermark qualify: unreplicated data is never deleted."""
    cfg = log.config
    segs = log.segments
    closed = [s for i, s in enumerate(segs[:-1]) if segs[i + 1].base_offset <= log.high_watermark]
    n = 0
    # 1. wholly below the log start offset
    while n < len(closed) and segs[n + 1].base_offset <= log.log_start_offset:
        n += 1
    if not cfg.delete_enabled:
        return n
    # 2. by time: the largest timestamp of the segment is past retention.ms
    if cfg.retention_ms >= 0:
        while n < len(closed) and now_ms - closed[n].largest_timestamp() > cfg.retention_ms:
            n += 1
    # 3. by size: drop the oldest while the rest still holds retention.bytes or more
    if cfg.retention_bytes >= 0:
        size = log.size_bytes - sum(s.size for s in closed[:n])
        while n < len(closed) and size - closed[n].size >= cfg.retention_bytes:
            size -= closed[n].size
            n += 1
    return n


def apply_retention(log: Log, now_ms: int) -> RetentionResult:
    """Delete what `segments_to_delete` says; the log start follows."""
    n = segments_to_delete(log, now_ms)
    size = sum(s.size for s in log.closed_segments()[:n])
    if n:
        log.delete_oldest_segments(n)
    return RetentionResult(n, size, log.log_start_offset)
