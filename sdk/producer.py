"""`Producer`: asynchronous, batching, retrying record producer (Kafka's KafkaProducer model).

`send()` does the minimum per record on the caller's thread: pick the partition, encode the
record into its partition's open batch, hand back a three-slot future. A background `Sender`
turns sealed batches into Produce requests. Config keywords keep Kafka's names
(`linger.ms` → `linger_ms`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from qnode.sdk.accumulator import Accumulator
from qnode.sdk.errors import (
    InvalidConfigError,
    ProducerClosedError,
    RecordTooLargeError,
    RequestTimeoutError,
    TransactionError,
    UnknownTopicError,
)
from qnode.sdk.futures import RecordFuture
from qnode.sdk.metadata import Metadata
from qnode.sdk.partitioner import StickyPartitioner, partition_for_key
from qnode.sdk.record_writer import (
    ZERO,
    PrefixCache,
    encode_headers_section,
    encode_record,
    keyless_prefix,
)
from qnode.sdk.sender import Sender, SenderConfig
from qnode.sdk.types import Headers, TopicPartition
from qnode.storage.compression import Compression, UnsupportedCompressionError
from qnode.storage.records import as_bytes

_time_ns = time.time_ns
_RECORD_OVERHEAD = 12  # varint lengths, attributes, deltas, header count of a small record


def parse_acks(acks: int | str) -> int:
    """0, 1 or -1 from 0, 1, "all", -1 and their strings."""
    table = {0: 0, 1: 1, -1: -1, "0": 0, "1": 1, "-1": -1, "all": -1}
    key = acks.strip().lower() if isinstance(acks, str) else acks
    if key not in table:
        raise InvalidConfigError(f"acks={acks!r} is not one of 0, 1, all (-1)")
    return table[key]


def _positive(name: str, value: float, allow_zero: bool = True) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidConfigError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _bad_timestamp(value: object) -> Exception:
    if value.__class__ is not int:
        return TypeError(f"timestamp_ms must be an int (ms since the epoch) or None, "
                         f"not {type(value).__name__}")
    return ValueError(f"timestamp_ms must be >= 0, not {value}")


def _normalize_headers(headers: Headers | Mapping[str, bytes | None] | None) -> Headers | None:
    if not headers:
        return None
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


class Producer:
    """Publishes records to topics. Thread-safe: share one per process."""

    def __init__(
        self,
        bootstrap: str | Iterable[str] | None = None,
        *,
        acks: int | str = 1,
        linger_ms: float = 5,
        batch_size: int = 16384,
        buffer_memory: int = 32 * 1024 * 1024,
        max_block_ms: float = 60000,
        max_in_flight_requests_per_connection: int = 5,
        retries: int = 2147483647,
        retry_backoff_ms: int = 100,
        delivery_timeout_ms: int = 120000,
        request_timeout_ms: int = 30000,
        max_request_size: int = 1048576,
        compression: str | int | None = None,
        compression_type: str | None = None,
        enable_idempotence: bool = False,
        transactional_id: str | None = None,
        client_id: str | None = None,
        metadata_max_age_ms: int = 300000,
        local_requests: bool = True,
    ) -> None:
        if transactional_id is not None:
            raise TransactionError(
                "transactions are not available yet in this qnode version "
                f"(transactional_id={transactional_id!r}); use enable_idempotence for "
                "duplicate-free retries")
        self.acks = parse_acks(acks)
        for name, val in (("linger_ms", linger_ms), ("retries", retries),
                          ("retry_backoff_ms", retry_backoff_ms), ("max_block_ms", max_block_ms)):
            _positive(name, val)
        for name, val in (("batch_size", batch_size), ("buffer_memory", buffer_memory),
                          ("request_timeout_ms", request_timeout_ms),
                          ("delivery_timeout_ms", delivery_timeout_ms),
                          ("max_request_size", max_request_size),
                          ("max_in_flight_requests_per_connection",
                           max_in_flight_requests_per_connection)):
            _positive(name, val, allow_zero=False)
        if enable_idempotence and self.acks != -1:
            raise InvalidConfigError("enable_idempotence requires acks=all (as in Kafka)")
        if enable_idempotence and max_in_flight_requests_per_connection > 5:
            raise InvalidConfigError(
                "enable_idempotence requires max_in_flight_requests_per_connection <= 5")
        try:
            self.compression = Compression.parse(
                compression if compression is not None else compression_type)
            if self.compression == Compression.SNAPPY:
                raise UnsupportedCompressionError("snappy is not supported; use lz4, zstd, gzip")
        except UnsupportedCompressionError as exc:
            raise InvalidConfigError(str(exc)) from None
        self.client_id = client_id or f"producer-{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.max_block = max_block_ms / 1000.0
        self.max_request_size = max_request_size
        self.linger_ms = linger_ms
        self._metadata = Metadata(bootstrap, retry_backoff_ms, metadata_max_age_ms)
        self._sender: Sender
        self._acc = Accumulator(
            batch_size=batch_size, linger_ms=linger_ms, buffer_memory=buffer_memory,
            max_block_ms=max_block_ms, delivery_timeout_ms=delivery_timeout_ms,
            wake=lambda: self._sender.kick())
        self._sender = Sender(self._acc, self._metadata, SenderConfig(
            acks=self.acks, retries=retries, retry_backoff_ms=retry_backoff_ms,
            request_timeout_ms=request_timeout_ms,
            max_in_flight=max_in_flight_requests_per_connection,
            max_request_size=max_request_size, client_id=self.client_id,
            idempotent=enable_idempotence, compression=int(self.compression),
            local_requests=local_requests))
        self._lock = self._acc.lock
        self._sticky = self._acc.sticky
        self._partitioner = StickyPartitioner()
        self._prefixes: PrefixCache = {}
        self._limit = batch_size
        self._linger_zero = linger_ms == 0
        self._closed = False
        self._sender.start()
        self._sender.started_ok.wait()
        if self._sender.fatal is not None:
            self._sender.join()
            raise self._sender.fatal

    # ------------------------------------------------------------------ sending
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None, headers: Headers | None = None,
             timestamp_ms: int | None = None) -> RecordFuture:
        """Queue one record; returns its future (`.result()` → RecordMetadata).

        Blocks only while the topic's metadata is unknown or buffer.memory is full, for at
        most max.block.ms. Errors known up front (unknown topic, record too large, closed
        producer) raise here; errors of delivery fail the future.
        """
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        elif timestamp_ms.__class__ is not int or timestamp_ms < 0:
            # as Kafka's producer: a record's timestamp is never negative (-1 means "none" in
            # a batch header, and the time index orders by it)
            raise _bad_timestamp(timestamp_ms)
        batch = None
        if partition is None and key is None and headers is None \
                and value.__class__ is bytes:
            # The hot path: a keyless record for the topic's current sticky batch.
            vl = len(value)  # type: ignore[arg-type]
            rs = vl + _RECORD_OVERHEAD
            with self._lock:
                batch = self._sticky.get(topic)
                if batch is not None and batch.size + rs <= batch.cap:
                    od = batch.count
                    tsd = timestamp_ms - batch.base_ts
                    if tsd >= 0:
                        k = (tsd, od, vl)
                        prefix = self._prefixes.get(k) or keyless_prefix(self._prefixes, k)
                        parts = batch.parts
                        parts.append(prefix)
                        parts.append(value)  # type: ignore[arg-type]
                        parts.append(ZERO)
                        batch.count = od + 1
                        batch.size += rs
                        if timestamp_ms > batch.max_ts:
                            batch.max_ts = timestamp_ms
                        wake = self._linger_zero and self._acc.sender_waiting
                    else:
                        batch = None
                else:
                    batch = None
        elif partition is None and headers is None and key.__class__ is bytes \
                and value.__class__ is bytes:
            # A keyed record for its partition's open batch (with many partitions, most
            # records of a keyed producer): no checks that the open batch already passed.
            n = self._metadata.partition_counts.get(topic)
            rs = len(value) + len(key) + _RECORD_OVERHEAD  # type: ignore[arg-type]
            if n and rs + 61 <= self.max_request_size:
                with self._lock:
                    batch = self._acc.open.get((topic, partition_for_key(key, n)))
                    if batch is not None and batch.count and batch.size + rs <= batch.cap \
                            and timestamp_ms >= batch.base_ts:
                        od = batch.count
                        batch.parts.append(encode_record(od, timestamp_ms - batch.base_ts,
                                                         key, value))  # type: ignore[arg-type]
                        batch.count = od + 1
                        batch.size += rs
                        if timestamp_ms > batch.max_ts:
                            batch.max_ts = timestamp_ms
                        wake = self._linger_zero and self._acc.sender_waiting
                    else:
                        batch = None
        if batch is not None:  # one of the two fast paths took the record
            if wake:  # outside the lock: the woken sender's first step is to take it
                self._acc.wake()
            return RecordFuture(batch.result, od, timestamp_ms)
        return self._send_slow(topic, value, key, partition, headers, timestamp_ms)

    def _send_slow(self, topic: str, value: Any, key: Any, partition: int | None,
                   headers: Any, timestamp_ms: int) -> RecordFuture:
        if self._closed:
            raise ProducerClosedError("send() on a closed producer")
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, not {topic!r}")
        value = as_bytes(value, "value")
        key = as_bytes(key, "key")
        headers = _normalize_headers(headers)
        n = self._partitions(topic)
        if partition is not None:
            if not isinstance(partition, int) or not 0 <= partition < n:
                raise UnknownTopicError(
                    f"UNKNOWN_TOPIC_OR_PARTITION: partition {partition!r} of {topic!r} does "
                    f"not exist (it has {n})", retriable=False)
        elif key is not None:
            partition = partition_for_key(key, n)
        hp = encode_headers_section(headers)
        rs = _RECORD_OVERHEAD + (len(value) if value is not None else 0) \
            + (len(key) if key is not None else 0) + len(hp)
        if rs + 61 > self.max_request_size:
            raise RecordTooLargeError(
                f"MESSAGE_TOO_LARGE: record of ~{rs} bytes is over max_request_size "
                f"({self.max_request_size})")
        acc = self._acc
        news = self._linger_zero  # linger 0: every record is news for the sender
        with self._lock:
            if partition is None:
                batch = self._sticky.get(topic)
                if batch is not None and not self._fits(batch, rs):
                    acc.seal(batch)  # full (or sealed while we waited): next partition
                    batch = None
                if batch is None:
                    partition = self._next_sticky(topic, n)
                    batch = acc.open.get((topic, partition))
                    if batch is None or not self._fits(batch, rs):
                        batch = acc.new_batch(topic, partition, rs + 61)
                    self._sticky[topic] = batch
                    news = True
            else:
                batch = acc.open.get((topic, partition))
                if batch is None or not self._fits(batch, rs):
                    # news when a batch was sealed, or when the new one is the only one
                    # lingering (else the sender already waits for an earlier deadline):
                    # with many partitions a new batch opens every few records
                    news = news or batch is not None
                    batch = acc.new_batch(topic, partition, rs + 61)
                    news = news or len(acc.lingering) == 1
            assert not batch.sealed
            od = batch.count
            if od == 0:
                batch.base_ts = batch.max_ts = timestamp_ms
            elif timestamp_ms > batch.max_ts:
                batch.max_ts = timestamp_ms
            batch.parts.append(encode_record(od, timestamp_ms - batch.base_ts, key, value, hp))
            batch.count = od + 1
            batch.size += rs
            if batch.size >= self._limit:
                acc.seal(batch)
                news = True
            # a sealed batch, or a new open one (it moves the linger deadline), is news
            wake = news and acc.sender_waiting
        if wake:
            acc.wake()
        return RecordFuture(batch.result, od, timestamp_ms)

    def _fits(self, batch: Any, rs: int) -> bool:
        """Whether a record of ~`rs` bytes goes into this open batch (lock held): within
        its reservation, or once the reservation grew (up to batch.size; may wait for
        buffer.memory, False if the sender sealed the batch meanwhile)."""
        need = batch.size + rs
        return need <= batch.cap or (need <= self._limit and
                                     self._acc.grow(batch, need, block=True))

    def _next_sticky(self, topic: str, n: int) -> int:
        """The next partition round-robin, skipping those without a leader (if any has one)."""
        md = self._metadata
        first = self._partitioner.next_partition(topic, n)
        p = first
        for _ in range(n):
            info = md.partition(topic, p)
            if info is not None and info.leader >= 0 and info.endpoint and not info.error:
                return p
            p = self._partitioner.next_partition(topic, n)
        return first

    def _partitions(self, topic: str) -> int:
        """The topic's partition count, fetching metadata (up to max.block.ms) if needed."""
        md = self._metadata
        n = md.partition_counts.get(topic)
        if n:
            return n
        sender = self._sender
        if sender.fatal is not None:
            raise sender.fatal
        deadline = time.monotonic() + self.max_block
        with sender.meta_cond:
            sender.topics.add(topic)
            version = md.version
        sender.request_metadata(topic)
        with sender.meta_cond:
            while True:
                n = md.partition_counts.get(topic)
                if n:
                    return n
                if md.version > version and topic in md.unknown:
                    raise UnknownTopicError(
                        f"UNKNOWN_TOPIC_OR_PARTITION: topic {topic!r} does not exist",
                        retriable=False)
                if sender.metadata_error is not None and not sender.metadata_error.retriable:
                    raise sender.metadata_error
                if sender.fatal is not None:
                    raise sender.fatal
                if not sender.is_alive():
                    raise ProducerClosedError("producer is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestTimeoutError(
                        f"metadata for topic {topic!r} not available after max.block.ms "
                        f"({self.max_block * 1000:.0f} ms): is the node at "
                        f"{', '.join(md.bootstrap)} running?")
                sender.meta_cond.wait(min(left, 0.1))

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self._partitions(topic))]

    # ------------------------------------------------------------------ flushing, closing
    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered now (ignoring linger.ms); wait until it is answered.

        Waits for the records sent before the call (records other threads send meanwhile
        are sent at once too, but not waited for, so a busy producer cannot stall a flush).
        """
        acc = self._acc
        deadline = None if timeout is None else time.monotonic() + timeout
        with acc.lock:
            acc.flushing += 1
            waiting = [b.result for b in acc.unfinished]
        try:
            self._sender.wake()
            for result in waiting:
                while not result.wait(0.1 if deadline is None
                                      else max(0.0, min(0.1, deadline - time.monotonic()))):
                    if not self._sender.is_alive():
                        return  # closed or failed: nothing will complete any more
                    if deadline is not None and time.monotonic() >= deadline:
                        left = sum(1 for r in waiting if not r.done)
                        raise RequestTimeoutError(
                            f"flush: {left} batches still unacknowledged after {timeout} s")
        finally:
            with acc.lock:
                acc.flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered (up to `timeout` s, forever if None), then stop."""
        if self._closed:
            return
        self._closed = True
        with self._acc.lock:
            self._acc.closed = True
            self._acc.memory_freed.notify_all()
        self._sender.stop(force=timeout == 0)
        self._sender.join(timeout)
        if self._sender.is_alive():
            self._sender.stop(force=True)
            self._sender.join()

    def metrics(self) -> dict[str, Any]:
        out = dict(self._acc.stats())
        # linger.ms=0: sends made by send() itself instead of the sender thread (Sender.kick)
        out["caller_passes"] = self._sender.caller_passes
        # Produce requests sent by datagram to a same-host worker (local_requests)
        network = self._sender.network
        out["local_sends"] = network.local_sends if network is not None else 0
        # requests that waited for datagram ones to be answered, to keep their order
        out["local_deferred"] = network.deferred_sends if network is not None else 0
        return out

    # transactions: API.md names; the coordinator side lands with the transactions issue.
    def init_transactions(self) -> None:
        raise TransactionError("transactions are not available yet (no transactional_id)")

    def begin_transaction(self) -> None:
        raise TransactionError("transactions are not available yet")

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any) -> None:
        raise TransactionError("transactions are not available yet")

    def commit_transaction(self) -> None:
        raise TransactionError("transactions are not available yet")

    def abort_transaction(self) -> None:
        raise TransactionError("transactions are not available yet")

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten producer must not keep its thread spinning
        try:
            if not self._closed:
                self._sender.stop(force=True)
        except Exception:
            pass


__all__ = ["Producer", "parse_acks"]
