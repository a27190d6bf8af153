"""`Consumer`: reads records from assigned (or, with a group, subscribed) partitions.

Like Kafka's consumer it is used from one thread: `poll()` does the network work (no
background thread without a group), keeping one Fetch in flight per leader worker so data
arrives while the application processes the previous batch of records.

Consumer groups plug in through one seam, `self._coordinator` (None when `group_id` is None):
an object built by `qnode.sdk.group_coordinator.GroupCoordinator(consumer, config)` that
`subscribe`, `poll`, `commit`, `committed` and `close` delegate to. docs/internals.md §4
describes that seam. With `group_id=None` the consumer is fully usable through
`assign`/`seek`, and nothing is committed.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import (
    ConsumerStateError,
    CoordinatorError,
    InvalidConfigError,
    NetworkError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    QnodeError,
    RequestTimeoutError,
    UnknownTopicError,
)
from qnode.sdk.fetcher import FetchConfig, Fetcher
from qnode.sdk.metadata import Metadata
from qnode.sdk.offset_lookup import list_offsets
from qnode.sdk.subscription import EARLIEST, LATEST, SubscriptionState
from qnode.sdk.types import OffsetAndTimestamp, Record, TopicPartition

log = logging.getLogger(__name__)
PartitionsCallback = Callable[[list[TopicPartition]], Any]

_ISOLATION = {"read_uncommitted": 0, "read_committed": 1}
_PIPELINE_ABOVE = 64  # records in one poll() above which the next fetch is sent before it returns


class Consumer:
    """Reads records; one thread at a time (as Kafka's consumer)."""

    def __init__(
        self,
        *topics: str,
        bootstrap: str | Iterable[str] | None = None,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        isolation_level: str = "read_uncommitted",
        group_instance_id: str | None = None,
        session_timeout_ms: int = 45000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300000,
        rebalance_timeout_ms: int | None = None,
        partition_assignment_strategy: Any = None,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 52428800,
        max_partition_fetch_bytes: int = 1048576,
        max_poll_records: int = 500,
        check_crcs: bool = True,
        fetch_doorbell: bool = True,
        request_timeout_ms: int = 30000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 300000,
        default_api_timeout_ms: int = 60000,
        client_id: str | None = None,
    ) -> None:
        if isolation_level not in _ISOLATION:
            raise InvalidConfigError(
                f"isolation_level={isolation_level!r} is not read_uncommitted or read_committed")
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise InvalidConfigError(
                f"auto_offset_reset={auto_offset_reset!r} is not earliest, latest or none")
        if max_poll_records < 1:
            raise InvalidConfigError(f"max_poll_records={max_poll_records} must be >= 1")
        self.client_id = client_id or f"consumer-{uuid.uuid4().hex[:8]}"
        self.group_id = group_id
        self.config: dict[str, Any] = {
            "group_id": group_id, "auto_offset_reset": auto_offset_reset,
            "enable_auto_commit": enable_auto_commit,
            "auto_commit_interval_ms": auto_commit_interval_ms,
            "isolation_level": isolation_level, "group_instance_id": group_instance_id,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms or max_poll_interval_ms,
            "partition_assignment_strategy": partition_assignment_strategy,
            "request_timeout_ms": request_timeout_ms, "retry_backoff_ms": retry_backoff_ms,
            "client_id": self.client_id, "bootstrap": bootstrap,
            "metadata_max_age_ms": metadata_max_age_ms,
        }
        self.max_poll_records = max_poll_records
        self.default_api_timeout = default_api_timeout_ms / 1000.0
        self.retry_backoff = retry_backoff_ms / 1000.0
        self.isolation_level = _ISOLATION[isolation_level]
        self._client = NetworkClient(self.client_id, request_timeout_ms)
        # small answers of a worker on this host come as Unix datagrams (transport/doorbell.py)
        doorbell = self._client.enable_doorbell() if fetch_doorbell else None
        self._metadata = Metadata(bootstrap, retry_backoff_ms, metadata_max_age_ms)
        self._subs = SubscriptionState(auto_offset_reset)
        self._fetcher = Fetcher(self._client, self._metadata, self._subs, FetchConfig(
            min_bytes=fetch_min_bytes, max_wait_ms=fetch_max_wait_ms, max_bytes=fetch_max_bytes,
            max_partition_bytes=max_partition_fetch_bytes,
            isolation_level=self.isolation_level, check_crcs=check_crcs,
            retry_backoff_ms=retry_backoff_ms, doorbell=doorbell))
        self._closed = False
        self._next_auto_commit = time.monotonic() + auto_commit_interval_ms / 1000.0
        self._auto_committed: dict[TopicPartition, int] = {}
        self._coordinator: Any = None
        if group_id is not None:
            self._coordinator = self._make_coordinator()
        if topics:
            self.subscribe(list(topics))

    def _make_coordinator(self) -> Any:
        try:
            from qnode.sdk.group_coordinator import GroupCoordinator  # type: ignore[import]
        except ImportError:
            raise ConsumerStateError(
                "consumer groups are not available in this qnode version: use group_id=None "
                "with assign()/seek()") from None
        return GroupCoordinator(self, self.config)

    # ------------------------------------------------------------------ assignment
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (no group): replaces the current assignment."""
        self._check_open()
        if self._subs.subscription:
            raise ConsumerStateError("assign() after subscribe(): call unsubscribe() first")
        self._set_assignment(list(partitions))

    def assignment(self) -> set[TopicPartition]:
        return set(self._subs.assignment)

    def subscribe(self, topics: list[str] | str | re.Pattern[str],
                  on_assign: PartitionsCallback | None = None,
                  on_revoke: PartitionsCallback | None = None,
                  on_lost: PartitionsCallback | None = None) -> None:
        """Join the group and read the partitions it assigns (needs group_id)."""
        self._check_open()
        if self._coordinator is None:
            raise ConsumerStateError(
                "subscribe() needs a group_id; without a group use assign() and seek()")
        if self._subs.assignment and not self._subs.subscription:
            raise ConsumerStateError("subscribe() after assign(): call unsubscribe() first")
        if isinstance(topics, str):
            topics = [topics]
        self._coordinator.subscribe(topics, on_assign, on_revoke, on_lost)

    def unsubscribe(self) -> None:
        if self._coordinator is not None:
            self._coordinator.unsubscribe()
        self._subs.subscription.clear()
        self._set_assignment([])

    def subscription(self) -> set[str]:
        return set(self._subs.subscription)

    # Group seam: the coordinator calls these to apply what the group decided.
    def _set_assignment(self, partitions: list[TopicPartition]) -> None:
        old = set(self._subs.assignment)
        self._subs.assign(partitions)
        for tp in old - set(partitions):
            self._fetcher.drop(tp)
        topics = {tp.topic for tp in partitions}
        if any(t not in self._metadata.topics for t in topics):
            self._metadata.stale = True

    def _positions(self) -> dict[TopicPartition, int]:
        """Positions of the assigned partitions (what auto-commit commits)."""
        return self._subs.positions()

    # ------------------------------------------------------------------ positions
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read `partition` from `offset` on the next poll()."""
        self._subs.seek(partition, offset)
        self._fetcher.drop(partition)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        for tp in self._targets(partitions):
            self._subs.request_reset(tp, EARLIEST)
            self._fetcher.drop(tp)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        for tp in self._targets(partitions):
            self._subs.request_reset(tp, LATEST)
            self._fetcher.drop(tp)

    def _targets(self, partitions: Iterable[TopicPartition] | None) -> list[TopicPartition]:
        if partitions is None:
            return list(self._subs.assignment)
        tps = list(partitions)
        for tp in tps:
            self._subs.state(tp)  # raises if not assigned
        return tps

    def position(self, partition: TopicPartition, timeout: float | None = None) -> int:
        """Offset of the next record poll() returns for `partition` (resolving resets)."""
        st = self._subs.state(partition)
        if st.position is None:
            self._reset_positions([partition], timeout)
        assert st.position is not None
        return st.position

    def committed(self, partitions: TopicPartition | Iterable[TopicPartition],
                  timeout: float | None = None) -> Any:
        """The group's committed offset(s) (None where nothing is committed)."""
        if self._coordinator is None:
            raise ConsumerStateError("committed() needs a group_id")
        single = isinstance(partitions, TopicPartition)
        tps = [partitions] if single else list(partitions)  # type: ignore[list-item]
        result = self._coordinator.committed(tps, timeout)
        return result.get(partitions) if single else result

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None,
               asynchronous: bool = False) -> None:
        """Commit `offsets` (default: the current positions) for the group."""
        if self._coordinator is None:
            raise ConsumerStateError("commit() needs a group_id (group_id=None commits nothing)")
        self._coordinator.commit(dict(offsets) if offsets is not None else self._positions(),
                                 asynchronous)

    def commit_async(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self.commit(offsets, asynchronous=True)

    def group_metadata(self) -> Any:
        if self._coordinator is None:
            raise ConsumerStateError("group_metadata() needs a group_id")
        return self._coordinator.group_metadata()

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._subs.pause(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._subs.resume(partitions)

    def paused(self) -> set[TopicPartition]:
        return self._subs.paused()

    # ------------------------------------------------------------------ polling
    def poll(self, timeout: float = 1.0, max_records: int | None = None) -> list[Record]:
        """Records from the assigned partitions; waits up to `timeout` s when none is ready."""
        self._check_open()
        limit = max_records or self.max_poll_records
        deadline = time.monotonic() + max(0.0, timeout)
        fetcher = self._fetcher
        client = self._client
        settled = False
        while True:
            if not settled:
                if self._coordinator is not None:
                    self._coordinator.poll(max(0.0, deadline - time.monotonic()))
                    self._maybe_auto_commit_manual()
                self._raise_errors()
                self._handle_out_of_range()
                if self._subs.needs_reset():
                    self._reset_positions(self._subs.needs_reset(), None, deadline)
                self._maybe_refresh_metadata()
            records = fetcher.collect(limit)
            backlog = len(records) >= _PIPELINE_ABOVE or bool(fetcher.completed)
            if not records or backlog:
                # Reading a backlog: ask for the next data before the app gets this, so it
                # arrives while the app works. Caught up (a few records, nothing buffered),
                # the next fetch would only park at the node: send it on the next poll and
                # hand these records over without that delay.
                fetcher.send_fetches()
            if records:
                if backlog:
                    client.poll(0)  # take in whatever already arrived, without waiting
                if self._coordinator is not None:
                    self._coordinator.on_records(records)
                return records
            left = deadline - time.monotonic()
            if left <= 0:
                return records
            client.poll(min(left, self._wait_cap()) * 1000.0)
            # Data that came in with nothing else to handle (no error, no out-of-range
            # partition, no stale metadata, no group) goes straight to the app: the checks
            # above would find nothing, and the end-to-end latency at low rates is this path.
            settled = bool(fetcher.completed) and self._coordinator is None and not (
                fetcher.errors or fetcher.out_of_range or self._metadata.stale)

    def _manual_group(self) -> bool:
        """A group_id with assign() (no subscription): Kafka's "simple consumer group"."""
        return self._coordinator is not None and not self._subs.subscription

    def _maybe_auto_commit_manual(self) -> None:
        # The group seam auto-commits what a subscription owns; a manually assigned consumer
        # commits its positions here (asynchronously, generation -1 / no member id).
        if not (self.config["enable_auto_commit"] and self._manual_group()):
            return
        now = time.monotonic()
        if now < self._next_auto_commit:
            return
        self._next_auto_commit = now + self.config["auto_commit_interval_ms"] / 1000.0
        positions = self._positions()
        if positions and positions != self._auto_committed:
            self._auto_committed = positions
            self._coordinator.commit(positions, True)

    def _wait_cap(self) -> float:
        """How long poll() may sleep in zmq before it must look at its state again."""
        if self._coordinator is not None:
            return 0.1  # let the group code run on time (heartbeats are its own thread)
        if self._metadata.stale or any(st.position is None
                                       for st in self._subs.assignment.values()):
            return self.retry_backoff
        now = time.monotonic()
        backoffs = [st.retry_at - now for st in self._subs.assignment.values()
                    if st.retry_at > now]
        return max(0.001, min(backoffs)) if backoffs else 1.0

    def metrics(self) -> dict[str, Any]:
        """Counters of this consumer's fetch path."""
        return {"fetch_doorbell": self._fetcher.cfg.doorbell is not None,
                "doorbell_answers": self._client.doorbell_answers}

    def __iter__(self) -> Iterator[Record]:
        """Blocking iterator over records, until close()."""
        while not self._closed:
            yield from self.poll(1.0)

    def _raise_errors(self) -> None:
        if self._fetcher.errors:
            err = self._fetcher.errors.pop(0)
            raise err

    def _handle_out_of_range(self) -> None:
        fetcher = self._fetcher
        if not fetcher.out_of_range:
            return
        tps, fetcher.out_of_range = fetcher.out_of_range, []
        target = self._subs.default_reset_target()
        for tp in tps:
            st = self._subs.assignment.get(tp)
            if st is None:
                continue
            if target is None:
                raise OffsetOutOfRangeError(
                    f"OFFSET_OUT_OF_RANGE: {tp.topic}-{tp.partition} position {st.position} is "
                    "outside the log and auto_offset_reset is none; seek() to a valid offset")
            self._subs.request_reset(tp, target)
            fetcher.drop(tp)

    def _maybe_refresh_metadata(self) -> None:
        md = self._metadata
        topics = {tp.topic for tp in self._subs.assignment}
        if not topics:
            return
        missing = any(t not in md.topics for t in topics)
        if missing and time.monotonic() - md.last_attempt < md.retry_backoff:
            return  # asked moments ago: a topic still being created must not cause a storm
        if not (missing or md.refresh_due()):
            return
        try:
            md.fetch(self._client, topics, timeout_ms=self._client.request_timeout_ms)
        except QnodeError as exc:
            if not exc.retriable:
                raise

    # ------------------------------------------------------------------ offsets lookups
    def _reset_positions(self, tps: list[TopicPartition], timeout: float | None,
                         deadline: float | None = None) -> None:
        """Resolve pending resets (or the default strategy) with ListOffsets.

        A manually assigned consumer with a group ("simple consumer group") first resumes
        from the group's committed offsets; the default strategy applies only where there
        is none (Kafka's behaviour). Explicit resets (seek_to_*, out of range) skip that."""
        if deadline is not None:
            timeout = max(0.05, deadline - time.monotonic())
        try:
            tps = self._resume_from_committed(tps, timeout)
        except (RequestTimeoutError, NetworkError, CoordinatorError):
            if deadline is not None:
                return  # poll() keeps trying on its next call
            raise
        if not tps:
            return
        targets: dict[TopicPartition, int] = {}
        for tp in tps:
            st = self._subs.state(tp)
            to = st.reset_to if st.reset_to is not None else self._subs.default_reset_target()
            if to is None:
                raise NoOffsetForPartitionError(
                    f"no position for {tp.topic}-{tp.partition} and auto_offset_reset is none: "
                    "seek() first")
            targets[tp] = to
        if deadline is not None:
            timeout = max(0.05, deadline - time.monotonic())
        try:
            found = self._list_offsets(targets, timeout)
        except (RequestTimeoutError, NetworkError, UnknownTopicError):
            if deadline is not None:
                return  # poll() keeps trying on its next call
            raise
        for tp, (offset, _) in found.items():
            st = self._subs.assignment.get(tp)
            if st is not None and st.position is None and offset >= 0:
                self._subs.seek(tp, offset)

    def _resume_from_committed(self, tps: list[TopicPartition],
                               timeout: float | None) -> list[TopicPartition]:
        """Seek manually assigned partitions with no position and no explicit reset to the
        group's committed offset (OffsetFetch); returns those still without a position."""
        if not self._manual_group():
            return tps  # no group, or the group assignment already applied committed offsets
        lookup = [tp for tp in tps if self._subs.state(tp).reset_to is None]
        if not lookup:
            return tps
        committed = self._coordinator.committed(
            lookup, self.default_api_timeout if timeout is None else timeout)
        for tp, offset in committed.items():
            st = self._subs.assignment.get(tp)
            if offset is not None and st is not None and st.position is None:
                self._subs.seek(tp, offset)
        return [tp for tp in tps if self._subs.state(tp).position is None]

    def _list_offsets(self, targets: Mapping[TopicPartition, int],
                      timeout: float | None = None) -> dict[TopicPartition, tuple[int, int]]:
        """{tp: (offset, timestamp)} for ListOffsets timestamps (-2 earliest, -1 latest)."""
        return list_offsets(self._client, self._metadata, targets, self.isolation_level,
                            self.default_api_timeout if timeout is None else timeout,
                            self.retry_backoff)

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int],
                          timeout: float | None = None
                          ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """Earliest offset whose timestamp is >= the given ms, per partition (None if none)."""
        for tp, ts in timestamps.items():
            if ts < 0:
                raise ValueError(f"timestamp for {tp} must be >= 0, not {ts}")
        found = self._list_offsets(timestamps, timeout)
        return {tp: (OffsetAndTimestamp(*found[tp]) if found[tp][0] >= 0 else None)
                for tp in timestamps}

    def beginning_offsets(self, partitions: Iterable[TopicPartition],
                          timeout: float | None = None) -> dict[TopicPartition, int]:
        found = self._list_offsets({tp: EARLIEST for tp in partitions}, timeout)
        return {tp: off for tp, (off, _) in found.items()}

    def end_offsets(self, partitions: Iterable[TopicPartition],
                    timeout: float | None = None) -> dict[TopicPartition, int]:
        found = self._list_offsets({tp: LATEST for tp in partitions}, timeout)
        return {tp: off for tp, (off, _) in found.items()}

    def partitions_for_topic(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions (fetching metadata); UnknownTopicError if none."""
        self._metadata.fetch(self._client, [topic])
        info = self._metadata.require_topic(topic)
        return [TopicPartition(topic, p.partition) for p in info.partitions]

    def topics(self) -> list[str]:
        self._metadata.fetch(self._client, None)
        return sorted(self._metadata.topics)

    def highwater(self, partition: TopicPartition) -> int:
        """The high watermark last seen in a fetch answer (-1 before any)."""
        return self._subs.state(partition).high_watermark

    # ------------------------------------------------------------------ closing
    def _check_open(self) -> None:
        if self._closed:
            raise ConsumerStateError("consumer is closed")

    def close(self, autocommit: bool = True) -> None:
        if self._closed:
            return
        try:
            if (autocommit and self.config["enable_auto_commit"] and self._manual_group()
                    and self._positions()):
                try:
                    self._coordinator.commit(self._positions(), False)
                except QnodeError as exc:
                    log.warning("auto-commit on close of group %s failed: %s",
                                self.group_id, exc)
            if self._coordinator is not None:
                self._coordinator.close(autocommit)
        finally:
            self._closed = True
            self._client.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Consumer"]
