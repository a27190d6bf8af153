"""Produce, Fetch, ListOffsets and DeleteRecords on the replicas of one worker.

`PartitionServer` answers decoded request bodies with response bodies (and data frames); it
does no socket work and owns no log: the worker loop hands it requests, `ReplicaSet` holds
the replicas. Hot path: produce requests drained in one loop turn are appended together, one
`Log.append_many` write per partition (validate + stamp + append, no per-record work here),
then one shared-memory row update; a fetch returns the `Log.read` memoryview slices of the
mapped segments themselves as data frames.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from qnode.node.replica_set import (
    PartitionKey,
    Replica,
    ReplicaSet,
    error_entry,
    storage_error_code,
)
from qnode.storage import producer_state
from qnode.storage.record_batch import (
    LENGTH_OFFSET,
    LOG_OVERHEAD,
    PRODUCER_ID_OFFSET,
    TRANSACTIONAL_MASK,
    check_client_batch,
    iter_batches,
)
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

EARLIEST = -2
LATEST = -1
READ_COMMITTED = 1


@dataclass(slots=True)
class FetchResult:
    body: dict[str, Any]
    frames: list[Any] = field(default_factory=list)
    bytes: int = 0
    error: bool = False  # some partition answered with an error: do not park


_NO_APPEND = {"base_offset": -1, "log_append_time": -1, "log_start_offset": -1}
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_err = error_entry


def _may_be_idempotent(buf: Any) -> bool:
    """False only for the common case: one batch without a producer id (no state to check)."""
    n = len(buf)
    if n < PRODUCER_ID_OFFSET + 8:
        return False  # not even a header: the append refuses it
    return _I64(buf, PRODUCER_ID_OFFSET)[0] >= 0 or _I32(buf, LENGTH_OFFSET)[0] + LOG_OVERHEAD < n


def _refused_from_client(headers: Sequence[Any]) -> tuple[ErrorCode, str] | None:
    """Why a client may not append these batches, or None; a control batch raises
    InvalidRecordError (check_client_batch). Control and transactional batches carry a
    producer id, so they always reach the idempotent path that walks the headers."""
    for h in headers:
        check_client_batch(h)
        if h.attributes & TRANSACTIONAL_MASK:
            # Kafka (KIP-890) answers this when the partition is not in the producer's
            # ongoing transaction; with no transaction coordinator yet, it never is
            return (ErrorCode.INVALID_TXN_STATE, f"batch at position {h.position} is "
                    "transactional, and transactions are not available in this qnode version")
    return None


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
    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas
        self._lookup = replicas.lookup

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
        served = self.replicas.replicas.get  # the common case, without a lookup call
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
                    key = (name, pid)
                    r = served(key)
                    if r is None or not r.is_leader:
                        r = self._lookup(name, pid)  # the error entry saying why
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
            self._flush_group(self.replicas.replicas[key], items)
        return out

    def _flush_group(self, r: Replica, items: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        """Append queued batches of one partition in one write; fill in their entries."""
        if not items:
            return
        lg = r.log
        try:
            # append_many even for one batch: it writes with pwritev, which fills new page-cache
            # pages without zeroing them first as a fault through the mapping does (the
            # prebuilt bench on fresh VM memory: the zeroing was half the worker's CPU)
            results: list[Any] = lg.append_many([(buf, r.leader_epoch) for buf, _ in items])
        except Exception as exc:  # the whole group failed (disk): nothing was written
            results = [exc] * len(items)
        for (_, entry), res in zip(items, results, strict=True):
            self._fill(r, entry, res)
        self.replicas.appended(r)

    def _append_checked(self, r: Replica, buf: Any, entry: dict[str, Any]) -> None:
        """Append a batch of an idempotent producer: a retry is answered with its offsets."""
        lg = r.log
        try:
            psm = lg.producer_state or producer_state.attach(lg)
            headers = list(iter_batches(buf))
            refused = _refused_from_client(headers)
            if refused is not None:
                entry.update(_err(entry["partition"], *refused, **_NO_APPEND))
                return
            dup = psm.check_batches(iter(headers))
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
        self.replicas.appended(r)

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
        else:  # the hot path: plain stores, no keyword dict
            entry["error"] = 0
            entry["base_offset"] = res.base_offset
            entry["log_append_time"] = res.log_append_time
            entry["log_start_offset"] = lg.log_start_offset

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
                r = self._lookup(name, pid)  # replicas and consumers both read the leader
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
        self.replicas.appended(r)
        return {"partition": r.partition, "error": 0, "low_watermark": lg.log_start_offset}
