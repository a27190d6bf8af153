"""The partition replicas of one worker and the requests served on them.

`PartitionServer` holds the open logs (through the storage `LogManager`), reconciles them with
the metadata placement, and answers Produce, Fetch, ListOffsets and DeleteRecords bodies. It
does no socket work: the worker loop hands it decoded requests and sends what it returns.
Hot path: a produce is validate + stamp + append inside `Log.append` on the data frame's
buffer (no per-record work here), then one shared-memory row update; a fetch returns the
`Log.read` memoryview slices themselves as data frames.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from qnode.node.metadata_follower import MetadataFollower, Placement
from qnode.node.shm_table import ShmTable
from qnode.storage import errors as serr
from qnode.storage import leader_epoch, producer_state
from qnode.storage.log_config import LogConfig
from qnode.storage.log_manager import LogManager
from qnode.storage.producer_snapshot import list_snapshots
from qnode.storage.producer_state import InvalidProducerEpochError, OutOfOrderSequenceError
from qnode.storage.record_batch import LENGTH_OFFSET, LOG_OVERHEAD, PRODUCER_ID_OFFSET, iter_batches
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
EARLIEST = -2
LATEST = -1
READ_COMMITTED = 1

# Storage errors → wire errors (the first match in MRO order wins).
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
    for kind, code in _STORAGE_ERRORS:
        if isinstance(exc, kind):
            return code
    return ErrorCode.UNKNOWN_SERVER_ERROR


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


@dataclass(slots=True)
class FetchResult:
    body: dict[str, Any]
    frames: list[Any] = field(default_factory=list)
    bytes: int = 0
    error: bool = False  # some partition answered with an error: do not park


_NO_APPEND = {"base_offset": -1, "log_append_time": -1, "log_start_offset": -1}


def _err(partition: int, code: ErrorCode, message: str | None = None, **extra: Any) -> dict:
    entry: dict[str, Any] = {"partition": partition, "error": int(code), **extra}
    if message:
        entry["message"] = message
    return entry


_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from


def _may_be_idempotent(buf: Any) -> bool:
    """False only for the common case: one batch without a producer id (no state to check)."""
    n = len(buf)
    if n < PRODUCER_ID_OFFSET + 8:
        return False  # not even a header: the append refuses it
    return _I64(buf, PRODUCER_ID_OFFSET)[0] >= 0 or _I32(buf, LENGTH_OFFSET)[0] + LOG_OVERHEAD < n


def _every_partition(body: dict[str, Any], code: ErrorCode, message: str) -> dict[str, Any]:
    """A produce answer refusing every partition of `body` with the same error."""
    return {
        "topics": [
            {
                "name": t["name"],
                "partitions": [
                    _err(p["partition"], code, message, **_NO_APPEND) for p in t["partitions"]
                ],
            }
            for t in body["topics"]
        ]
    }


def _frame_buffer(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


class PartitionServer:
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
        self.dirty: set[PartitionKey] = set()  # appended to since the waiters last looked

    # -- placement -------------------------------------------------------------------------

    def log_config(self, placement: Placement) -> LogConfig:
        return LogConfig.from_topic_config({**self.topic_defaults, **placement.configs})

    def reconcile(self) -> None:
        """Open, re-configure and delete logs so they match the metadata placement."""
        owned = self.follower.owned()
        for key, replica in list(self.replicas.items()):
            want = owned.get(key)
            if want is None or want.topic_id != replica.topic_id:
                self._remove(key, delete=True)
        for key in list(self.failed):
            if key not in owned:
                del self.failed[key]
        for key, want in owned.items():
            replica = self.replicas.get(key)
            if replica is None:
                self._add(want)
            else:
                self._update(replica, want)

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

    def _lookup(self, topic: str, partition: int, leader: bool = True) -> Replica | dict:
        """The replica, or the error entry explaining why it is not served here."""
        r = self.replicas.get((topic, partition))
        if r is not None and (r.is_leader or not leader):
            return r
        if r is not None:
            return _err(
                partition,
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"node {self.node_id} does not lead {topic}-{partition}",
            )
        failed = self.failed.get((topic, partition))
        if failed is not None:
            return _err(partition, ErrorCode.KAFKA_STORAGE_ERROR, failed)
        code = self.follower.missing_error(topic, partition)
        if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            return _err(partition, code, f"unknown topic or partition {topic}-{partition}")
        return _err(partition, code, f"{topic}-{partition} is not served by this worker")

    # -- produce ---------------------------------------------------------------------------

    def produce(self, body: dict[str, Any], data: Sequence[Any]) -> dict[str, Any]:
        return self.produce_many([(body, data)])[0]

    def produce_many(
        self, requests: Sequence[tuple[dict[str, Any], Sequence[Any]]]
    ) -> list[dict[str, Any]]:
        """Answer several Produce bodies at once: the batches each partition receives from all
        of them go to its log in one group write (`Log.append_many`), in request order."""
        out = []
        groups: dict[PartitionKey, list[tuple[Any, dict[str, Any]]]] = {}
        for body, data in requests:
            nframes = len(data)
            acks = body["acks"]
            if acks not in (-1, 0, 1):
                out.append(
                    _every_partition(
                        body,
                        ErrorCode.INVALID_REQUIRED_ACKS,
                        f"acks must be -1 (all), 0 or 1, not {acks}",
                    )
                )
                continue
            topics_out = []
            for t in body["topics"]:
                name = t["name"]
                parts_out = []
                for p in t["partitions"]:
                    pid = p["partition"]
                    r = self._lookup(name, pid)
                    if type(r) is dict:
                        r.update(_NO_APPEND)
                        parts_out.append(r)
                        continue
                    if acks == -1 and r.isr_size < r.log.config.min_insync_replicas:
                        msg = (
                            f"{name}-{pid} has {r.isr_size} in-sync replica(s), "
                            f"min.insync.replicas is {r.log.config.min_insync_replicas}"
                        )
                        parts_out.append(
                            _err(pid, ErrorCode.NOT_ENOUGH_REPLICAS, msg, **_NO_APPEND)
                        )
                        continue
                    k = p["frame"]
                    if not 0 <= k < nframes:
                        msg = f"frame {k} missing: the request has {nframes}"
                        parts_out.append(_err(pid, ErrorCode.INVALID_REQUEST, msg, **_NO_APPEND))
                        continue
                    entry = {"partition": pid}
                    parts_out.append(entry)
                    buf = _frame_buffer(data[k])
                    key = (name, pid)
                    if _may_be_idempotent(buf):
                        # checked against the producer state, which must include every
                        # earlier batch: write what is queued for the partition first
                        self._flush_group(r, groups.pop(key, ()))
                        self._append_checked(r, buf, entry)
                    else:
                        groups.setdefault(key, []).append((buf, entry))
                topics_out.append({"name": name, "partitions": parts_out})
            out.append({"topics": topics_out})
        for key, items in groups.items():
            self._flush_group(self.replicas[key], items)
        return out

    def _flush_group(self, r: Replica, items: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        """Append queued batches of one partition in one write; fill in their entries."""
        if not items:
            return
        lg = r.log
        try:
            if len(items) == 1:
                results: list[Any] = [lg.append(items[0][0], r.leader_epoch)]
            else:
                results = lg.append_many([(buf, r.leader_epoch) for buf, _ in items])
        except Exception as exc:  # the whole group failed (disk): nothing was written
            results = [exc] * len(items)
        for (_, entry), res in zip(items, results, strict=True):
            self._fill(r, entry, res)
        self._appended(r)

    def _append_checked(self, r: Replica, buf: Any, entry: dict[str, Any]) -> None:
        """Append a batch of an idempotent producer: a retry is answered with its offsets."""
        lg = r.log
        try:
            psm = lg.producer_state or producer_state.attach(lg)
            dup = psm.check_batches(iter_batches(buf))
            if dup is not None:
                entry.update(
                    error=0,
                    base_offset=dup.first_offset,
                    log_append_time=-1,
                    log_start_offset=lg.log_start_offset,
                )
                return
            res: Any = lg.append(buf, r.leader_epoch)
        except Exception as exc:
            res = exc
        self._fill(r, entry, res)
        self._appended(r)

    def _fill(self, r: Replica, entry: dict[str, Any], res: Any) -> None:
        lg = r.log
        if isinstance(res, Exception):
            code = storage_error_code(res)
            if code == ErrorCode.UNKNOWN_SERVER_ERROR:
                log.error("append to %s-%d failed: %r", r.topic, r.partition, res)
            entry.update(
                error=int(code),
                message=str(res),
                base_offset=-1,
                log_append_time=-1,
                log_start_offset=lg.log_start_offset,
            )
        else:
            entry.update(
                error=0,
                base_offset=res.base_offset,
                log_append_time=res.log_append_time,
                log_start_offset=lg.log_start_offset,
            )

    def _appended(self, r: Replica) -> None:
        lg = r.log
        if r.sole_replica:
            lg.high_watermark = lg.log_end_offset
        self.publish(r)
        self.dirty.add((r.topic, r.partition))

    # -- fetch -----------------------------------------------------------------------------

    def fetch(self, body: dict[str, Any]) -> FetchResult:
        """Read what the fetch may see now; the caller parks it if too little came back."""
        out = FetchResult({"topics": []})
        frames = out.frames
        remaining = max(body["max_bytes"], 1)
        consumer = body["replica_id"] < 0
        committed = body["isolation_level"] == READ_COMMITTED
        for t in body["topics"]:
            name = t["name"]
            parts_out = []
            for p in t["partitions"]:
                pid = p["partition"]
                r = self._lookup(name, pid, leader=consumer)
                if type(r) is dict:
                    r.update(
                        high_watermark=-1,
                        last_stable_offset=-1,
                        log_start_offset=-1,
                        aborted_transactions=None,
                        frames=[],
                    )
                    parts_out.append(r)
                    out.error = True
                    continue
                entry = self._read(r, p, remaining, consumer, committed, frames, out)
                parts_out.append(entry)
                remaining = max(body["max_bytes"] - out.bytes, 0)
            out.body["topics"].append({"name": name, "partitions": parts_out})
        return out

    def _read(
        self,
        r: Replica,
        p: dict[str, Any],
        remaining: int,
        consumer: bool,
        committed: bool,
        frames: list[Any],
        out: FetchResult,
    ) -> dict[str, Any]:
        lg = r.log
        hw = lg.high_watermark
        lso = hw  # no transactions yet (LSO = HW)
        start = lg.log_start_offset
        entry: dict[str, Any] = {
            "partition": r.partition,
            "error": 0,
            "high_watermark": hw,
            "last_stable_offset": lso,
            "log_start_offset": start,
            "aborted_transactions": None,
            "frames": [],
        }
        epoch = p["current_leader_epoch"]
        if epoch >= 0 and epoch != r.leader_epoch:
            code = (
                ErrorCode.FENCED_LEADER_EPOCH
                if epoch < r.leader_epoch
                else ErrorCode.UNKNOWN_LEADER_EPOCH
            )
            entry.update(error=int(code), message=f"leader epoch is {r.leader_epoch}")
            out.error = True
            return entry
        offset = p["fetch_offset"]
        leo = lg.log_end_offset
        if offset < start or offset > leo:
            entry.update(
                error=int(ErrorCode.OFFSET_OUT_OF_RANGE),
                message=f"offset {offset} outside [{start}, {leo}]",
            )
            out.error = True
            return entry
        limit = (lso if committed else hw) if consumer else None
        if limit is not None and offset >= limit:
            return entry
        max_bytes = min(p["partition_max_bytes"], remaining)
        first = not out.bytes  # its first batch is returned whole past the limits (KIP-74)
        if max_bytes <= 0 and not first:
            return entry
        try:
            data = lg.read(offset, max(max_bytes, 1), limit, min_one_batch=first)
        except Exception as exc:
            entry.update(error=int(storage_error_code(exc)), message=str(exc))
            out.error = True
            return entry
        idx = entry["frames"]
        for sl in data.slices:
            idx.append(len(frames))
            frames.append(sl)
            out.bytes += len(sl)
        return entry

    # -- list offsets / delete records -----------------------------------------------------

    def list_offsets(self, body: dict[str, Any]) -> dict[str, Any]:
        committed = body["isolation_level"] == READ_COMMITTED
        topics_out = []
        for t in body["topics"]:
            parts_out = []
            for p in t["partitions"]:
                pid = p["partition"]
                r = self._lookup(t["name"], pid)
                if type(r) is dict:
                    r.update(timestamp=-1, offset=-1, leader_epoch=-1)
                    parts_out.append(r)
                    continue
                parts_out.append(self._list_offset(r, p["timestamp"], committed))
            topics_out.append({"name": t["name"], "partitions": parts_out})
        return {"topics": topics_out}

    def _list_offset(self, r: Replica, ts: int, committed: bool) -> dict[str, Any]:
        lg = r.log
        entry = {
            "partition": r.partition,
            "error": 0,
            "timestamp": -1,
            "offset": -1,
            "leader_epoch": r.leader_epoch,
        }
        if ts == EARLIEST:
            entry["offset"] = lg.log_start_offset
        elif ts == LATEST:
            hw = lg.high_watermark
            entry["offset"] = hw  # read_committed stops at the LSO, which is the HW here
        elif ts < 0:
            entry.update(error=int(ErrorCode.INVALID_REQUEST), message=f"bad timestamp {ts}")
        else:
            try:
                found = lg.offset_for_timestamp(ts)
            except Exception as exc:
                entry.update(error=int(storage_error_code(exc)), message=str(exc))
                return entry
            if found is not None and 0 <= found.offset < lg.high_watermark:
                entry.update(offset=found.offset, timestamp=found.timestamp)
                if found.leader_epoch >= 0:
                    entry["leader_epoch"] = found.leader_epoch
        return entry

    def delete_records(self, body: dict[str, Any]) -> dict[str, Any]:
        topics_out = []
        for t in body["topics"]:
            parts_out = []
            for p in t["partitions"]:
                pid = p["partition"]
                r = self._lookup(t["name"], pid)
                if type(r) is dict:
                    r["low_watermark"] = -1
                    parts_out.append(r)
                    continue
                parts_out.append(self._delete_before(r, p["offset"]))
            topics_out.append({"name": t["name"], "partitions": parts_out})
        return {"topics": topics_out}

    def _delete_before(self, r: Replica, offset: int) -> dict[str, Any]:
        lg = r.log
        hw = lg.high_watermark
        if offset == -1:
            offset = hw
        if offset < 0 or offset > hw:
            return _err(
                r.partition,
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {offset} outside [0, {hw}]",
                low_watermark=lg.log_start_offset,
            )
        try:
            if offset > lg.log_start_offset:
                lg.delete_records_before(offset)
        except Exception as exc:
            return _err(
                r.partition, storage_error_code(exc), str(exc), low_watermark=lg.log_start_offset
            )
        self.publish(r)
        self.dirty.add((r.topic, r.partition))
        return {"partition": r.partition, "error": 0, "low_watermark": lg.log_start_offset}

    # -- housekeeping ----------------------------------------------------------------------

    def tick(self) -> None:
        """Flush/retention/cleaning on the storage schedule; republish what moved."""
        before = {
            k: (r.log.log_start_offset, r.log.segment_generation) for k, r in self.replicas.items()
        }
        report = self.logs.tick(int(time.time() * 1000))
        for key, exc in report.errors.items():
            # the storage engine took this log offline (I/O fault): stop serving it
            if key in self.replicas:
                self._remove(key, delete=False)
                self.failed[key] = f"log {key[0]}-{key[1]} offline: {exc}"
        for k, r in self.replicas.items():
            if before[k] != (r.log.log_start_offset, r.log.segment_generation):
                self.publish(r)

    def close(self) -> None:
        """Flush every log and write the checkpoints (clean shutdown)."""
        self.logs.close()
        for key in list(self.replicas):
            self.shm.free(*key)
        self.replicas.clear()
