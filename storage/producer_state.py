"""Idempotent-producer state of one partition: PID → epoch, recent batch sequences, open txn.

The leader checks every batch of an idempotent producer against this state before it is
appended (`check`), then records it with its assigned offsets (`update`):

- a batch whose (first seq, last seq) matches one of the producer's last 5 batches is a
  retry: it is not appended again, the caller answers with the original offsets;
- a sequence that does not follow the last one is `OutOfOrderSequenceError` (a gap);
- an epoch below the producer's current one is `InvalidProducerEpochError` (a fenced zombie);
  a higher epoch must restart its sequence at 0.

Sequences are int32 and wrap from 2**31-1 to 0. Followers and log recovery rebuild the same
state without checks through `update_from_batch`, in log order.

The state is snapshotted to `<20-digit offset>.snapshot` files (format in
`producer_snapshot.py`) so that opening a log replays only the batches past the newest one.

`attach(log)` loads the state of a `Log` (snapshot + replay of the batches after it), keeps
it in step through the log's hooks and snapshots on every roll; the leader's produce path
calls `log.producer_state.check_batches(headers)` before `log.append`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qnode.storage.batch_reader import Batch
from qnode.storage.errors import StorageError
from qnode.storage.producer_snapshot import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    BatchEntry,
    CorruptSnapshotError,
    ProducerEntry,
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
    snapshot_path,
)
from qnode.storage.record_batch import BatchHeader, iter_batches

if TYPE_CHECKING:  # the log imports nothing from here; attach() only duck-types it
    from qnode.storage.log import AppendResult, Log
    from qnode.storage.record_batch import BatchesInfo

INT32_MAX = 2**31 - 1
CONTROL_ABORT = 0
CONTROL_COMMIT = 1


class ProducerStateError(StorageError):
    """Base of the idempotence errors a produce can get."""


class OutOfOrderSequenceError(ProducerStateError):
    """The batch's first sequence does not follow the producer's last one (wire: 45)."""


class InvalidProducerEpochError(ProducerStateError):
    """The batch's producer epoch is older than the current one: a fenced producer (wire: 47)."""


@dataclass(frozen=True, slots=True)
class BatchMeta:
    """What producer state needs from one batch header, with the offsets it has in the log."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    first_offset: int
    last_offset: int
    max_timestamp: int
    is_transactional: bool = False
    control_type: int | None = None  # CONTROL_ABORT / CONTROL_COMMIT for control batches
    coordinator_epoch: int = -1

    @classmethod
    def from_header(cls, hdr: BatchHeader, buf: bytes | bytearray | memoryview | None = None,
                    coordinator_epoch: int = -1) -> BatchMeta:
        """From a `record_batch.BatchHeader`; a control batch needs `buf` to read its type."""
        control = None
        if hdr.is_control:
            if buf is None:
                raise ValueError("a control batch needs its bytes to read the marker type")
            control, coordinator_epoch = control_record_of(buf, hdr)
        return cls(hdr.producer_id, hdr.producer_epoch, hdr.base_sequence, hdr.base_offset,
                   hdr.last_offset, hdr.max_timestamp, hdr.is_transactional, control,
                   coordinator_epoch)

    @property
    def last_sequence(self) -> int:
        # Offsets, not record counts: compaction keeps a batch's offset span and sequences.
        return add_sequence(self.base_sequence, self.last_offset - self.first_offset)

    @property
    def is_idempotent(self) -> bool:
        return self.producer_id != NO_PRODUCER_ID


@dataclass(frozen=True, slots=True)
class DuplicateBatch:
    """A retried batch already in the log: answer with these offsets, do not append."""

    first_offset: int
    last_offset: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class CompletedTxn:
    """A transaction closed by a control batch (feeds the aborted-txn index and the LSO)."""

    producer_id: int
    first_offset: int
    last_offset: int
    is_aborted: bool


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `load` did: the snapshot used (offset or None) and snapshots discarded as corrupt."""

    snapshot_offset: int | None
    discarded: tuple[str, ...]


def control_record_of(buf: bytes | bytearray | memoryview,
                      hdr: BatchHeader) -> tuple[int, int]:
    """(marker type CONTROL_ABORT / CONTROL_COMMIT, coordinator epoch) of a control batch."""
    rec = Batch.from_header(buf, hdr).control_record()
    return int(rec.type), rec.coordinator_epoch


def add_sequence(seq: int, delta: int) -> int:
    """`seq + delta` in the int32 sequence space that wraps from INT32_MAX to 0."""
    return (seq + delta) % (INT32_MAX + 1)


def in_sequence(last_seq: int, next_seq: int) -> bool:
    return next_seq == last_seq + 1 or (next_seq == 0 and last_seq == INT32_MAX)


class ProducerStateManager:
    """Producer state of one partition log, with its snapshots in `partition_dir`."""

    def __init__(self, partition_dir: str | os.PathLike[str],
                 producer_id_expiration_ms: int = 86_400_000) -> None:
        self._dir = Path(partition_dir)
        self._expiration_ms = producer_id_expiration_ms
        self._producers: dict[int, ProducerEntry] = {}
        self.map_end_offset = 0  # the state reflects every batch below this offset
        self.last_load: LoadReport | None = None

    # -- queries -------------------------------------------------------------------------

    @property
    def producers(self) -> dict[int, ProducerEntry]:
        return self._producers

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def first_unstable_offset(self) -> int | None:
        """First offset of the oldest open transaction (the LSO bound), or None."""
        opens = [p.current_txn_first_offset for p in self._producers.values()
                 if p.current_txn_first_offset >= 0]
        return min(opens) if opens else None

    # -- leader path ---------------------------------------------------------------------

    def check(self, batch: BatchMeta) -> DuplicateBatch | None:
        """Validate a batch a client produced, without changing state.

        Returns the original batch when it is a retry of one of the last five; raises
        `InvalidProducerEpochError` or `OutOfOrderSequenceError`; None means append it.
        The offsets of `batch` are not looked at.
        """
        if not batch.is_idempotent:
            return None
        entry = self._producers.get(batch.producer_id)
        if entry is None:
            # Unknown producer (new, or its state expired/was deleted with old segments):
            # accept any sequence, as Kafka does since KIP-360.
            return None
        if batch.producer_epoch < entry.epoch:
            raise InvalidProducerEpochError(
                f"producer {batch.producer_id} epoch {batch.producer_epoch} is older than "
                f"the current epoch {entry.epoch}")
        if batch.control_type is not None:
            return None  # markers come from the coordinator; they carry no sequence
        if batch.producer_epoch == entry.epoch:
            last = batch.last_sequence
            for b in entry.batches:
                if b.first_seq == batch.base_sequence and b.last_seq == last:
                    return DuplicateBatch(b.first_offset, b.last_offset, b.timestamp)
            # With no batch remembered in this epoch (a marker bumped it), the next must be 0.
            if not in_sequence(entry.last_seq, batch.base_sequence):
                raise OutOfOrderSequenceError(
                    f"producer {batch.producer_id} epoch {batch.producer_epoch}: sequence "
                    f"{batch.base_sequence} does not follow {entry.last_seq}")
        elif batch.base_sequence != 0 and entry.epoch != NO_PRODUCER_EPOCH:
            raise OutOfOrderSequenceError(
                f"producer {batch.producer_id} bumped epoch {entry.epoch} -> "
                f"{batch.producer_epoch} must restart at sequence 0, got {batch.base_sequence}")
        return None

    def check_batches(self, headers: Iterable[BatchHeader]) -> DuplicateBatch | None:
        """`check` the batches of one produce request, in order, before `Log.append`.

        Several batches of one producer in one request must follow each other. A retried
        request is a duplicate only when it is that single batch (the client sends one batch
        per partition per request); a duplicate among others is out of order.
        """
        hdrs = [h for h in headers if h.producer_id >= 0 and not h.is_control]
        pending: dict[int, tuple[int, int]] = {}  # pid -> (epoch, last seq) of earlier ones
        for h in hdrs:
            meta = BatchMeta.from_header(h)
            prev = pending.get(h.producer_id)
            if prev is not None:
                if h.producer_epoch != prev[0] or not in_sequence(prev[1], h.base_sequence):
                    raise OutOfOrderSequenceError(
                        f"producer {h.producer_id}: batch sequence {h.base_sequence} does not "
                        f"follow {prev[1]} in the same request")
            else:
                dup = self.check(meta)
                if dup is not None:
                    if len(hdrs) == 1:
                        return dup
                    raise OutOfOrderSequenceError(
                        f"producer {h.producer_id}: retried batch {h.base_sequence} sent "
                        f"with others")
            pending[h.producer_id] = (h.producer_epoch, meta.last_sequence)
        return None

    def check_and_update(self, batch: BatchMeta) -> DuplicateBatch | None:
        """`check`, then `update` when the batch is new; its offsets must be the final ones."""
        dup = self.check(batch)
        if dup is None:
            self.update(batch)
        return dup

    def update(self, batch: BatchMeta) -> CompletedTxn | None:
        """Record a batch appended at its offsets; returns the txn a control batch closes."""
        if batch.last_offset >= self.map_end_offset:
            self.map_end_offset = batch.last_offset + 1
        if not batch.is_idempotent:
            return None
        entry = self._producers.get(batch.producer_id)
        if entry is None:
            entry = self._producers[batch.producer_id] = ProducerEntry(batch.producer_id)
        if batch.producer_epoch > entry.epoch:
            entry.epoch = batch.producer_epoch
            entry.batches.clear()  # a new epoch restarts the sequence space
        if batch.control_type is not None:
            completed = None
            if entry.current_txn_first_offset >= 0:
                completed = CompletedTxn(batch.producer_id, entry.current_txn_first_offset,
                                         batch.last_offset,
                                         batch.control_type == CONTROL_ABORT)
            entry.current_txn_first_offset = -1
            entry.coordinator_epoch = batch.coordinator_epoch
            return completed
        if batch.is_transactional and entry.current_txn_first_offset < 0:
            entry.current_txn_first_offset = batch.first_offset
        entry.batches.append(BatchEntry(batch.base_sequence, batch.last_sequence,
                                        batch.first_offset, batch.last_offset,
                                        batch.max_timestamp))
        return None

    def update_from_batch(self, batch: BatchMeta) -> CompletedTxn | None:
        """Replay a batch already in the log (recovery, follower), with no sequence checks."""
        return self.update(batch)

    # -- expiry and truncation ------------------------------------------------------------

    def remove_expired_producers(self, now_ms: int) -> list[int]:
        """Forget producers idle for `producer.id.expiration.ms` with no open transaction."""
        expired = [pid for pid, p in self._producers.items()
                   if p.current_txn_first_offset < 0
                   and now_ms - p.last_timestamp >= self._expiration_ms]
        for pid in expired:
            del self._producers[pid]
        return expired

    def truncate_head(self, log_start_offset: int) -> None:
        """Old segments were deleted: forget producers whose last batch is gone, and snapshots.

        A producer with an open transaction is kept: its markers are still to come.
        """
        gone = [pid for pid, p in self._producers.items()
                if p.last_offset < log_start_offset and p.current_txn_first_offset < 0]
        for pid in gone:
            del self._producers[pid]
        for offset, path in list_snapshots(self._dir):
            if offset < log_start_offset:
                path.unlink(missing_ok=True)
        if self.map_end_offset < log_start_offset:
            self.map_end_offset = log_start_offset

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """The whole log was replaced (follower truncated to empty): reset state, drop snapshots."""
        self._producers.clear()
        for _, path in list_snapshots(self._dir):
            path.unlink(missing_ok=True)
        self.map_end_offset = offset

    # -- snapshots -----------------------------------------------------------------------

    def take_snapshot(self) -> Path:
        """Write the state at `map_end_offset` atomically (tmp, fsync, rename)."""
        data = encode_snapshot(self.map_end_offset, list(self._producers.values()))
        path = snapshot_path(self._dir, self.map_end_offset)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def load(self, log_start_offset: int, log_end_offset: int) -> LoadReport:
        """Load the newest valid snapshot within [log start, log end]; drop the others above.

        After this the owner replays the log's batches from `map_end_offset` up to the log
        end through `update_from_batch`. Snapshots past the log end (the log was truncated)
        or corrupt ones are deleted; with none usable the state starts empty at log start.
        """
        self._producers = {}
        self.map_end_offset = log_start_offset
        discarded: list[str] = []
        for offset, path in reversed(list_snapshots(self._dir)):
            if offset > log_end_offset:
                path.unlink(missing_ok=True)
                continue
            if offset < log_start_offset:
                break
            try:
                map_end, producers = decode_snapshot(path.read_bytes())
                if map_end != offset:
                    raise CorruptSnapshotError(f"snapshot says offset {map_end}, name {offset}")
            except (CorruptSnapshotError, OSError) as exc:
                discarded.append(f"{path.name}: {exc}")
                path.unlink(missing_ok=True)
                continue
            self._producers = {p.producer_id: p for p in producers
                               if p.last_offset >= log_start_offset
                               or p.current_txn_first_offset >= 0}
            self.map_end_offset = map_end
            return LoadReport(map_end, tuple(discarded))
        return LoadReport(None, tuple(discarded))

    def truncate_and_reload(self, log_start_offset: int, log_end_offset: int) -> LoadReport:
        """The log was truncated: reload from the newest snapshot not past the new log end."""
        return self.load(log_start_offset, log_end_offset)

    def retain_newest_snapshots(self, keep: int = 2) -> None:
        """Delete all but the newest `keep` snapshots (older ones only slow nothing down)."""
        snaps = list_snapshots(self._dir)
        for _, path in snaps[:max(0, len(snaps) - keep)]:
            path.unlink(missing_ok=True)


def replay(psm: ProducerStateManager, log: Log, upto: int | None = None) -> int:
    """Feed `psm` the log's batches from its `map_end_offset` to `upto` (the log end)."""
    end = log.log_end_offset if upto is None else upto
    offset = max(psm.map_end_offset, log.log_start_offset)
    batches = 0
    while offset < end:
        data = log.read(offset, 1 << 20, max_offset=end)
        start = offset
        for sl in data.slices:
            for h in iter_batches(sl):
                if h.last_offset < offset:
                    continue  # the read starts at the batch holding `offset`
                if h.producer_id >= 0:
                    psm.update_from_batch(BatchMeta.from_header(h, sl))
                else:
                    psm.map_end_offset = max(psm.map_end_offset, h.next_offset)
                offset = h.next_offset
                batches += 1
        if offset == start:
            break  # nothing more below `end` (an empty tail)
    psm.map_end_offset = max(psm.map_end_offset, end)
    return batches


def attach(log: Log, producer_id_expiration_ms: int = 86_400_000,
           keep_snapshots: int = 2) -> ProducerStateManager:
    """Load the producer state of `log` (newest good snapshot + replay), keep it in step.

    After this, appends update the state (the leader checks first with `check_batches`),
    truncation reloads it, a log-start move forgets producers whose batches are gone, and a
    snapshot is written whenever the log rolls a segment (expired producers are dropped
    then too) and when it closes cleanly (so a clean restart replays nothing). The state is
    `log.producer_state`; `last_load` says what loading found.
    """
    psm = ProducerStateManager(log.directory, producer_id_expiration_ms)
    psm.last_load = psm.load(log.log_start_offset, log.log_end_offset)
    replay(psm, log)
    active_base = [log.active_segment.base_offset]
    generation = [log.segment_generation]  # cheap to compare on every append

    def on_append(result: AppendResult, info: BatchesInfo, leader_epoch: int) -> None:
        batches = info.batches
        first, last = batches[0], batches[-1]
        own_offsets = first.base_offset == result.base_offset and \
            last.base_offset + last.last_offset_delta == result.last_offset
        offset = result.base_offset
        for h in batches:
            base = h.base_offset if own_offsets else offset
            offset = base + h.last_offset_delta + 1
            if h.producer_id < 0:
                continue
            control, coordinator_epoch = None, -1
            if h.is_control:  # the marker type is in the record: read the stored batch
                stored = log.read(base, h.size, max_offset=offset).slices[0]
                control, coordinator_epoch = control_record_of(stored,
                                                               next(iter_batches(stored)))
            psm.update(BatchMeta(h.producer_id, h.producer_epoch, h.base_sequence, base,
                                 offset - 1, h.max_timestamp, h.is_transactional, control,
                                 coordinator_epoch))
        if result.last_offset >= psm.map_end_offset:
            psm.map_end_offset = result.last_offset + 1
        if log.segment_generation != generation[0]:  # a roll (or a truncation) since
            generation[0] = log.segment_generation
            if log.active_segment_base == active_base[0]:
                return
            active_base[0] = log.active_segment_base
            psm.remove_expired_producers(time.time_ns() // 1_000_000)
            try:
                psm.take_snapshot()
                psm.retain_newest_snapshots(keep_snapshots)
            except OSError:
                pass  # the append is written; without this snapshot, opening replays more

    def on_truncate(new_end: int) -> None:
        psm.last_load = psm.truncate_and_reload(log.log_start_offset, new_end)
        replay(psm, log, new_end)
        active_base[0] = log.active_segment.base_offset

    def on_close() -> None:
        # a clean close snapshots the state at the log end: the next open replays nothing
        psm.take_snapshot()
        psm.retain_newest_snapshots(keep_snapshots)

    log.hooks.on_append.append(on_append)
    log.hooks.on_truncate.append(on_truncate)
    log.hooks.on_log_start.append(psm.truncate_head)
    log.hooks.on_close.append(on_close)
    log.producer_state = psm
    return psm
