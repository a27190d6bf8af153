"""The partition replicas a worker hosts: their logs, their metadata, their shm rows.

`ReplicaSet` opens, re-configures and deletes logs (through the storage `LogManager`) so they
match what the metadata places on this worker (`reconcile`, after every metadata answer),
publishes each replica's offsets in the worker's shared-memory table after every change, says
why a partition is not served here (`lookup`), and drives the storage schedule (`tick`). It
answers no request: `PartitionServer` does, on top of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnode.node.metadata_follower import MetadataFollower, Placement
from qnode.node.shm_table import ShmTable
from qnode.storage import errors as serr
from qnode.storage import leader_epoch, producer_state
from qnode.storage.log_config import LogConfig
from qnode.storage.log_manager import LogManager
from qnode.storage.producer_snapshot import list_snapshots
from qnode.storage.producer_state import InvalidProducerEpochError, OutOfOrderSequenceError
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]

# Storage errors → wire errors (the first match wins: subclasses first).
_STORAGE_ERRORS: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (serr.CorruptRecordError, ErrorCode.CORRUPT_MESSAGE),
    (OutOfOrderSequenceError, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),
    (InvalidProducerEpochError, ErrorCode.INVALID_PRODUCER_EPOCH),
    (serr.RecordTooLargeError, ErrorCode.MESSAGE_TOO_LARGE),
    (serr.InvalidRecordError, ErrorCode.INVALID_RECORD),
    (serr.OffsetOutOfRangeError, ErrorCode.OFFSET_OUT_OF_RANGE),
    (serr.LogClosedError, ErrorCode.NOT_LEADER_OR_FOLLOWER),
    (serr.DiskFullError, ErrorCode.KAFKA_STORAGE_ERROR),
    (serr.StorageError, ErrorCode.KAFKA_STORAGE_ERROR),
)


def storage_error_code(exc: Exception) -> ErrorCode:
    """The wire error for a storage exception (UNKNOWN_SERVER_ERROR for anything else)."""
    for kind, code in _STORAGE_ERRORS:
        if isinstance(exc, kind):
            return code
    return ErrorCode.UNKNOWN_SERVER_ERROR


def error_entry(
    partition: int, code: ErrorCode, message: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A per-partition response entry carrying an error."""
    entry: dict[str, Any] = {"partition": partition, "error": int(code), **extra}
    if message:
        entry["message"] = message
    return entry


@dataclass(eq=False, slots=True)
class Replica:
    topic: str
    partition: int
    topic_id: str
    log: Any  # storage.log.Log
    slot: int  # row in the shm table
    leader_epoch: int
    is_leader: bool
    sole_replica: bool  # ISR is just this node: HW follows LEO at once
    config_version: int
    isr_size: int = 1


class ReplicaSet:
    def __init__(
        self,
        node_id: int,
        log_manager: LogManager,
        shm: ShmTable,
        follower: MetadataFollower,
        topic_defaults: dict[str, str],
    ) -> None:
        self.node_id = node_id
        self.logs = log_manager
        self.shm = shm
        self.follower = follower
        self.topic_defaults = dict(topic_defaults)
        self.replicas: dict[PartitionKey, Replica] = {}
        self.failed: dict[PartitionKey, str] = {}  # placed here but the log would not open
        # placed here, log not opened yet (`open_pending` opens them a slice at a time, so a
        # worker with many partitions serves the open ones and hears SIGTERM meanwhile)
        self.pending: dict[PartitionKey, Placement] = {}
        self.asked: set[PartitionKey] = set()  # pending ones clients asked for: opened first
        self.dirty: set[PartitionKey] = set()  # changed since the fetch waiters looked

    # -- placement -------------------------------------------------------------------------

    def log_config(self, placement: Placement) -> LogConfig:
        return LogConfig.from_topic_config({**self.topic_defaults, **placement.configs})

    def reconcile(self) -> None:
        """Re-configure and delete logs so they match the metadata placement; the logs to open
        are queued in `pending` (opened by `open_pending`, or all at once by `open_all`)."""
        owned = self.follower.owned()
        for key, replica in list(self.replicas.items()):
            want = owned.get(key)
            if want is None or want.topic_id != replica.topic_id:
                self._remove(key, delete=True)
        for key in list(self.failed):
            if key not in owned:
                del self.failed[key]
        for key in list(self.pending):
            if key not in owned:
                del self.pending[key]
        for key, want in owned.items():
            replica = self.replicas.get(key)
            if replica is None:
                self.pending[key] = want  # a log that would not open is tried again too
            else:
                self._update(replica, want)

    def open_pending(self, budget_s: float, stop: Callable[[], bool] = lambda: False) -> int:
        """Open pending logs for about `budget_s` (at least one), stopping early when `stop()`
        says so; returns how many were opened."""
        deadline = time.monotonic() + budget_s
        opened = 0
        while self.pending and not stop():
            key = self.asked.pop() if self.asked else next(iter(self.pending))
            want = self.pending.pop(key, None)
            if want is None:
                continue  # asked for, then no longer placed here
            self._add(want)
            opened += 1
            if time.monotonic() >= deadline:
                break
        return opened

    def open_all(self) -> None:
        """Open every pending log now (tests and tools that need no serving meanwhile)."""
        while self.pending:
            self.open_pending(3600.0)

    def _add(self, want: Placement) -> None:
        key = want.key
        try:
            config = self.log_config(want)
            lg = self.logs.open_log(want.topic, want.partition, config)
            if lg.leader_epoch_cache is None:
                leader_epoch.attach(lg)
            if lg.producer_state is None and list_snapshots(Path(lg.directory)):
                # idempotent producers wrote here before: load their state now. Otherwise it
                # is loaded by the first idempotent batch (appends without it skip a hook)
                producer_state.attach(lg)
        except Exception as exc:  # a log that will not open must not stop the others
            log.error("cannot open log %s-%d: %s", want.topic, want.partition, exc)
            self.failed[key] = f"log {want.topic}-{want.partition} unavailable: {exc}"
            return
        self.failed.pop(key, None)
        replica = Replica(
            want.topic,
            want.partition,
            want.topic_id,
            lg,
            self.shm.allocate(*key),
            want.leader_epoch,
            want.leader == self.node_id,
            set(want.isr) <= {self.node_id},
            want.config_version,
        )
        replica.isr_size = len(want.isr)
        self.replicas[key] = replica
        if replica.sole_replica and replica.is_leader:
            lg.high_watermark = lg.log_end_offset
        self.publish(replica)

    def _update(self, replica: Replica, want: Placement) -> None:
        replica.leader_epoch = want.leader_epoch
        replica.is_leader = want.leader == self.node_id
        replica.sole_replica = set(want.isr) <= {self.node_id}
        replica.isr_size = len(want.isr)
        if want.config_version != replica.config_version:
            replica.config_version = want.config_version
            try:
                replica.log.update_config(self.log_config(want))
            except Exception as exc:
                log.error("cannot apply config to %s-%d: %s", *want.key, exc)
        self.publish(replica)

    def _remove(self, key: PartitionKey, delete: bool) -> None:
        self.replicas.pop(key)
        self.shm.free(*key)
        self.dirty.add(key)  # parked fetches on it must be answered (now with an error)
        try:
            if delete:
                self.logs.delete_log(*key)
            else:
                self.logs.close_log(*key)
        except Exception as exc:
            log.error("cannot remove log %s-%d: %s", *key, exc)

    def publish(self, r: Replica) -> None:
        """Write the replica's state to its shm row (after every change)."""
        lg = r.log
        hw = lg.high_watermark
        lso = hw  # no transactions yet: everything below the HW is stable
        self.shm.update(
            r.slot,
            lg.log_end_offset,
            hw,
            lso,
            lg.log_start_offset,
            r.leader_epoch,
            lg.active_segment_base,
            lg.segment_generation,
        )

    def lookup(self, topic: str, partition: int, leader: bool = True) -> Replica | dict:
        """The replica, or the error entry explaining why it is not served here."""
        r = self.replicas.get((topic, partition))
        if r is not None and (r.is_leader or not leader):
            return r
        if r is not None:
            return error_entry(
                partition,
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"node {self.node_id} does not lead {topic}-{partition}",
            )
        failed = self.failed.get((topic, partition))
        if failed is not None:
            return error_entry(partition, ErrorCode.KAFKA_STORAGE_ERROR, failed)
        if (topic, partition) in self.pending:
            self.asked.add((topic, partition))
            return error_entry(
                partition,
                ErrorCode.NOT_LEADER_OR_FOLLOWER,  # retriable: the client asks again shortly
                f"{topic}-{partition} is being opened on node {self.node_id}",
            )
        code = self.follower.missing_error(topic, partition)
        if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            return error_entry(partition, code, f"unknown topic or partition {topic}-{partition}")
        return error_entry(partition, code, f"{topic}-{partition} is not served by this worker")

    def appended(self, r: Replica) -> None:
        """After the log of `r` changed: move the HW (sole replica), publish, wake fetches."""
        lg = r.log
        if r.sole_replica:
            lg.high_watermark = lg.log_end_offset
        self.publish(r)
        self.dirty.add((r.topic, r.partition))

    def tick(self, max_logs: int | None = None) -> None:
        """Flush/retention/cleaning on the storage schedule (`max_logs` logs looked at per
        call, LogManager.tick); republish what moved. Only retention (log start, segments)
        and the cleaner (segments) change a log's published state in a tick; appends,
        truncation and delete-records publish as they happen."""
        report = self.logs.tick(int(time.time() * 1000), max_logs)
        for key, exc in report.errors.items():
            # the storage engine took this log offline (I/O fault): stop serving it
            if key in self.replicas:
                self._remove(key, delete=False)
                self.failed[key] = f"log {key[0]}-{key[1]} offline: {exc}"
        for key in {*report.deleted_segments, *report.cleaned}:
            r = self.replicas.get(key)
            if r is not None:
                self.publish(r)

    def tick_slices(self, max_logs: int) -> int:
        """Ticks of `max_logs` one pass over every log takes (the worker ticks that much
        more often)."""
        return self.logs.sweep_slices(max_logs)

    def close(self) -> None:
        """Flush every log and write the checkpoints (clean shutdown)."""
        self.pending.clear()
        self.asked.clear()
        try:
            self.logs.close()
        finally:
            for key in list(self.replicas):
                self.shm.free(*key)
            self.replicas.clear()
