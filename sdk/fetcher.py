"""The consumer's fetch pipeline: Fetch requests out, whole batches in, records to the app.

At most one Fetch is in flight per leader worker, and it is sent *before* `poll()` returns, so
the node gathers the next data while the application processes the last (pipelining). A
partition may have up to `_MAX_BUFFERED` fetched responses waiting (the next fetch starts at
the end of the data already buffered, not at the application's position). Batches are
decoded one at a time, only when the application asks for more records; records below the
position (a batch that starts before it) are skipped, as are control batches and — under
read_committed — batches of aborted transactions.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qnode.sdk.connection import InFlight, NetworkClient
from qnode.sdk.errors import CorruptRecordError, QnodeError, error_for
from qnode.sdk.metadata import Metadata
from qnode.sdk.record_reader import BatchDecoder
from qnode.sdk.subscription import PartitionState, SubscriptionState
from qnode.sdk.types import Record, TopicPartition
from qnode.storage import errors as storage_errors
from qnode.storage.batch_builder import ControlType
from qnode.storage.batch_reader import Batch, parse_control_record
from qnode.storage.compression import decompress
from qnode.storage.record_batch import (
    COMPRESSION_MASK,
    HEADER_SIZE,
    TIMESTAMP_TYPE_MASK,
    BatchHeader,
    check_crc,
    iter_batches,
)
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import as_buffer

_MAX_BUFFERED = 2  # fetched responses waiting per partition (one being read, one ahead)

_REFRESH_ON = frozenset({
    ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.LEADER_NOT_AVAILABLE, ErrorCode.FENCED_LEADER_EPOCH,
    ErrorCode.UNKNOWN_LEADER_EPOCH, ErrorCode.KAFKA_STORAGE_ERROR,
})


@dataclass(slots=True)
class FetchConfig:
    min_bytes: int
    max_wait_ms: int
    max_bytes: int
    max_partition_bytes: int
    isolation_level: int  # 0 read_uncommitted, 1 read_committed
    check_crcs: bool
    retry_backoff_ms: int
    doorbell: str | None = None  # NetworkClient.enable_doorbell(): named in every Fetch


class CompletedFetch:
    """One partition's data from one Fetch response, read batch by batch."""

    __slots__ = ("tp", "epoch", "data", "headers", "decoder", "batch_end", "aborted",
                 "aborted_pids", "check_crcs", "done")

    def __init__(self, tp: TopicPartition, epoch: int, data: Any,
                 aborted: list[list[int]] | None, check_crcs: bool,
                 headers: list[BatchHeader] | None = None) -> None:
        self.tp = tp
        self.epoch = epoch
        self.data = data
        self.headers: Iterator[BatchHeader] = iter(headers) if headers is not None \
            else iter_batches(data, allow_partial_tail=True)
        self.decoder: BatchDecoder | None = None  # the batch being handed out
        self.batch_end = 0  # its next offset
        self.aborted = deque(sorted(aborted, key=lambda a: a[1])) if aborted else None
        self.aborted_pids: set[int] = set()
        self.check_crcs = check_crcs
        self.done = False

    def take(self, out: list[Record], limit: int, st: PartitionState) -> None:
        """Append up to `limit` records at or past `st.position` to `out`; advance it."""
        position = st.position
        assert position is not None
        while limit > 0:
            decoder = self.decoder
            if decoder is not None:
                before = len(out)
                try:
                    decoder.take(out, limit)
                except storage_errors.StorageError as exc:
                    st.position = position
                    raise self._corrupt(decoder.base_offset, exc) from None
                if len(out) > before:
                    limit -= len(out) - before
                    position = out[-1].offset + 1
                if decoder.done:
                    # Past the batch's last offset, even when compaction removed it.
                    self.decoder = None
                    position = max(position, self.batch_end)
                continue
            hdr = next(self.headers, None)
            if hdr is None:
                self.done = True
                break
            next_offset = hdr.base_offset + hdr.last_offset_delta + 1
            if next_offset <= position:
                continue
            if hdr.attributes & 0x20:  # control batch: never returned; ends a transaction
                self._on_control(hdr)
                position = next_offset
                continue
            if self.aborted is not None and hdr.attributes & 0x10 and self._is_aborted(hdr):
                position = next_offset
                continue
            try:
                self.decoder = self._decoder(hdr, position)
            except storage_errors.StorageError as exc:
                st.position = position
                raise self._corrupt(hdr.base_offset, exc) from None
            self.batch_end = next_offset
        st.position = position

    def _corrupt(self, base_offset: int, exc: Exception) -> CorruptRecordError:
        return CorruptRecordError(
            f"CORRUPT_MESSAGE: {self.tp.topic}-{self.tp.partition} batch at offset "
            f"{base_offset}: {exc}", retriable=False)

    def _decoder(self, hdr: BatchHeader, position: int) -> BatchDecoder:
        """The batch's records at or past `position` (CRC checked first, if asked)."""
        data = self.data
        if self.check_crcs:
            check_crc(data, hdr)
        section = data[hdr.position + HEADER_SIZE:hdr.end]
        if hdr.attributes & COMPRESSION_MASK:
            section = decompress(hdr.attributes & COMPRESSION_MASK, section)
        elif section.__class__ is not bytes:
            section = bytes(section)
        append_time = hdr.max_timestamp if hdr.attributes & TIMESTAMP_TYPE_MASK else None
        return BatchDecoder(section, hdr.record_count, hdr.base_offset, hdr.base_timestamp,
                            self.tp.topic, self.tp.partition, position, append_time)

    def _is_aborted(self, hdr: BatchHeader) -> bool:
        aborted = self.aborted
        assert aborted is not None
        last = hdr.base_offset + hdr.last_offset_delta
        while aborted and aborted[0][1] <= last:
            self.aborted_pids.add(aborted.popleft()[0])
        return hdr.producer_id in self.aborted_pids

    def _on_control(self, hdr: BatchHeader) -> None:
        if not self.aborted_pids:
            return
        try:
            recs = Batch.from_header(self.data, hdr).record_tuples(self.check_crcs)
            if recs and parse_control_record(recs[0][2], recs[0][3]).type == ControlType.ABORT:
                self.aborted_pids.discard(hdr.producer_id)
        except storage_errors.StorageError:
            pass


class Fetcher:
    """Sends fetches for the assigned partitions and turns answers into records."""

    def __init__(self, client: NetworkClient, metadata: Metadata, subs: SubscriptionState,
                 config: FetchConfig) -> None:
        self.client = client
        self.metadata = metadata
        self.subs = subs
        self.cfg = config
        self.completed: deque[CompletedFetch] = deque()
        self.buffered: dict[TopicPartition, int] = {}
        self.in_flight: set[str] = set()
        self.fetching: set[TopicPartition] = set()
        self.errors: list[QnodeError] = []
        self.out_of_range: list[TopicPartition] = []

    # ------------------------------------------------------------------ requests
    def send_fetches(self) -> int:
        """Send a Fetch to every leader with fetchable partitions and none in flight."""
        now = time.monotonic()
        by_endpoint: dict[str, list[tuple[TopicPartition, int, int]]] = {}
        for tp, st in self.subs.assignment.items():
            if st.paused or st.position is None or tp in self.fetching:
                continue
            if self.buffered.get(tp, 0) >= _MAX_BUFFERED or st.retry_at > now:
                continue
            ep = self.metadata.leader_endpoint(tp)
            if ep is None:
                self.metadata.stale = True
                continue
            if ep in self.in_flight:
                continue
            offset = st.next_fetch_offset if st.next_fetch_offset is not None else st.position
            by_endpoint.setdefault(ep, []).append((tp, offset, st.fetch_epoch))
        for ep, parts in by_endpoint.items():
            topics: dict[str, list[dict[str, int]]] = {}
            for tp, offset, _ in parts:
                topics.setdefault(tp.topic, []).append({
                    "partition": tp.partition, "fetch_offset": offset,
                    "partition_max_bytes": self.cfg.max_partition_bytes,
                    "current_leader_epoch": -1})
                self.fetching.add(tp)
            body = {"replica_id": -1, "max_wait_ms": self.cfg.max_wait_ms,
                    "min_bytes": self.cfg.min_bytes, "max_bytes": self.cfg.max_bytes,
                    "isolation_level": self.cfg.isolation_level,
                    "topics": [{"name": t, "partitions": p} for t, p in topics.items()]}
            if self.cfg.doorbell is not None:
                body["doorbell"] = self.cfg.doorbell
            self.in_flight.add(ep)
            self.client.send(ep, ApiKey.FETCH, body, callback=self._on_fetch, context=parts,
                             timeout_ms=self.client.request_timeout_ms + self.cfg.max_wait_ms)
        return len(by_endpoint)

    def _on_fetch(self, req: InFlight) -> None:
        self.in_flight.discard(req.endpoint)
        parts: list[tuple[TopicPartition, int, int]] = req.context
        for tp, _, _ in parts:
            self.fetching.discard(tp)
        now = time.monotonic()
        backoff = self.cfg.retry_backoff_ms / 1000.0
        if req.error is not None:
            self.metadata.stale = True
            for tp, _, _ in parts:
                st = self.subs.assignment.get(tp)
                if st is not None:
                    st.retry_at = now + backoff
            if not req.error.retriable:
                self.errors.append(req.error)
            return
        resp = req.response
        assert resp is not None
        # Keyed by plain tuples: TopicPartition hashes in Python, and this runs per answer.
        asked = {(tp.topic, tp.partition): part for part in parts for tp in (part[0],)}
        frames = resp.data
        for t in resp.body.get("topics") or []:
            name = t["name"]
            for p in t.get("partitions") or []:
                part = asked.get((name, p["partition"]))
                if part is None:
                    continue
                tp, offset, epoch = part
                st = self.subs.assignment.get(tp)
                if st is None or st.fetch_epoch != epoch:
                    continue  # seeked or reassigned while the fetch was out: stale data
                code = p.get("error", 0)
                if code:
                    self._partition_error(tp, st, code, p.get("message"), now + backoff)
                    continue
                st.high_watermark = p.get("high_watermark", st.high_watermark)
                st.last_stable_offset = p.get("last_stable_offset", st.last_stable_offset)
                st.log_start_offset = p.get("log_start_offset", st.log_start_offset)
                idx = p.get("frames") or []
                if not idx:
                    continue
                if len(idx) == 1:
                    data: Any = as_buffer(frames[idx[0]])
                else:
                    data = b"".join(as_buffer(frames[k]) for k in idx)
                headers = list(iter_batches(data, allow_partial_tail=True))
                if not headers:
                    continue
                last = headers[-1]
                end = last.base_offset + last.last_offset_delta + 1
                if end <= offset:
                    continue
                st.next_fetch_offset = end
                self.completed.append(CompletedFetch(
                    tp, epoch, data, p.get("aborted_transactions"), self.cfg.check_crcs,
                    headers))
                self.buffered[tp] = self.buffered.get(tp, 0) + 1

    def _partition_error(self, tp: TopicPartition, st: PartitionState, code: int,
                         message: str | None, retry_at: float) -> None:
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            self.out_of_range.append(tp)
        elif code in _REFRESH_ON or ErrorCode(code).retriable:
            self.metadata.stale = True
            st.retry_at = retry_at
        else:
            self.errors.append(error_for(code, f"{tp.topic}-{tp.partition}: {message or ''}"))

    # ------------------------------------------------------------------ records
    def collect(self, max_records: int) -> list[Record]:
        """Up to `max_records` records from the buffered fetches, positions advanced."""
        if not self.completed:
            return []
        # The cyclic GC is paused while the records are made (as the stdlib's timeit does,
        # restored as found): they are new, acyclic and all handed to the caller, so a
        # collection in between finds nothing to free, yet moves each one through the older
        # generations and makes full collections frequent -- at 10,000 records a poll that
        # was ~40 % of the consumer's CPU. Paused, the next young collection looks at each
        # record once, and most are gone before an older one runs.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._collect(max_records)
        finally:
            if paused:
                gc.enable()

    def _collect(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        completed = self.completed
        assignment = self.subs.assignment
        skipped: list[CompletedFetch] = []
        while completed and len(out) < max_records:
            cf = completed[0]
            st = assignment.get(cf.tp)
            if st is None or st.fetch_epoch != cf.epoch:
                completed.popleft()
                self._release(cf.tp)
                continue
            if st.paused:
                skipped.append(completed.popleft())  # kept for resume(), not returned now
                continue
            cf.take(out, max_records - len(out), st)
            if cf.done:
                completed.popleft()
                self._release(cf.tp)
        if skipped:
            completed.extendleft(reversed(skipped))
        return out

    def _release(self, tp: TopicPartition) -> None:
        n = self.buffered.get(tp, 0) - 1
        if n > 0:
            self.buffered[tp] = n
        else:
            self.buffered.pop(tp, None)

    def drop(self, tp: TopicPartition) -> None:
        """Forget buffered data of a partition (seek, reset, unassign)."""
        keep = deque(cf for cf in self.completed if cf.tp != tp)
        if len(keep) != len(self.completed):
            self.completed = keep
            self.buffered.pop(tp, None)
