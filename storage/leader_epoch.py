"""Leader-epoch cache of one partition: which leader epoch began at which offset.

A follower that comes back after a leader change asks the leader "where did my last epoch
end?" (KIP-101, KIP-279) and truncates its log there instead of at its high watermark, which
could lose acknowledged data or keep divergent data. This module keeps the epoch → start
offset entries, answers that question (`end_offset_for`), follows the log when it is
truncated at either end, and persists the entries in Kafka's text checkpoint format in the
partition directory (`leader-epoch-checkpoint`):

    0                 <- format version
    2                 <- number of entries
    0 0               <- "epoch start_offset", epochs and offsets strictly increasing
    3 1200

The file is replaced atomically (write a temp file, rename), so a process crash leaves either
the old or the new checkpoint, never a torn one. A change (the first append of a new epoch,
a truncation) writes the file but does not fsync it: as in Kafka (KAFKA-15046) the fsyncs of
the file and the directory run with the log's next flush (`sync`, a `Log` on_flush hook), off
the produce path. After a power loss the checkpoint may be stale or empty; it is re-derivable
and `attach` re-derives it: an unreadable one is rebuilt from the batch headers, one that
misses the newest epoch of the log too, and one past the log's ends is trimmed to them.
`attach(log)` wires a cache to a `Log` (its hooks keep the two in step) as
`log.leader_epoch_cache`.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qnode.storage.errors import StorageError

if TYPE_CHECKING:  # the log imports nothing from here; attach() only duck-types it
    from qnode.storage.log import AppendResult, Log
    from qnode.storage.record_batch import BatchesInfo

CHECKPOINT_NAME = "leader-epoch-checkpoint"
CHECKPOINT_VERSION = 0
UNDEFINED_EPOCH = -1
UNDEFINED_EPOCH_OFFSET = -1


class LeaderEpochError(StorageError):
    """An assignment that would move epochs or start offsets backwards."""


class CorruptCheckpointError(StorageError):
    """A checkpoint file that cannot be parsed; the message names the file and the fault."""


@dataclass(frozen=True, slots=True)
class EpochEntry:
    """Leader epoch `epoch` wrote its first record at `start_offset`."""

    epoch: int
    start_offset: int


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(path: Path, entries: Iterable[EpochEntry], *, sync: bool = True) -> None:
    """Replace `path` atomically with the text checkpoint of `entries`; durably (fsync of the
    file and its directory) unless sync=False (`sync_checkpoint` later)."""
    items = list(entries)
    lines = [str(CHECKPOINT_VERSION), str(len(items))]
    lines += [f"{e.epoch} {e.start_offset}" for e in items]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        _fsync_path(path.parent)


def sync_checkpoint(path: Path) -> None:
    """fsync a checkpoint written with sync=False, then its directory (the rename)."""
    _fsync_path(path)
    _fsync_path(path.parent)


def read_checkpoint(path: Path) -> list[EpochEntry]:
    """Parse a checkpoint; raise `CorruptCheckpointError` on any malformed or unordered content."""
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(f"{path}: not ASCII text ({exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    try:
        if len(lines) < 2:
            raise ValueError("missing version or count line")
        version = int(lines[0])
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported version {version}, expected {CHECKPOINT_VERSION}")
        count = int(lines[1])
        if count != len(lines) - 2:
            raise ValueError(f"count line says {count} entries, file has {len(lines) - 2}")
        entries = []
        for line in lines[2:]:
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"bad entry line {line!r}")
            entries.append(EpochEntry(int(parts[0]), int(parts[1])))
    except ValueError as exc:
        raise CorruptCheckpointError(f"{path}: {exc}") from None
    for prev, cur in zip(entries, entries[1:], strict=False):
        if cur.epoch <= prev.epoch or cur.start_offset < prev.start_offset:
            raise CorruptCheckpointError(f"{path}: entries out of order: {prev} then {cur}")
    if any(e.epoch < 0 or e.start_offset < 0 for e in entries):
        raise CorruptCheckpointError(f"{path}: negative epoch or offset")
    return entries


class LeaderEpochCache:
    """Epoch → start offset entries of one partition, persisted on every change."""

    def __init__(self, partition_dir: str | os.PathLike[str],
                 entries: Iterable[EpochEntry] = ()) -> None:
        self._dir = Path(partition_dir)
        self._path = self._dir / CHECKPOINT_NAME
        self._entries: list[EpochEntry] = list(entries)
        self._unsynced = 0  # checkpoint writes not fsynced yet

    @classmethod
    def open(cls, partition_dir: str | os.PathLike[str],
             rebuild: Callable[[], Iterable[tuple[int, int]]] | None = None) -> LeaderEpochCache:
        """Load the checkpoint of `partition_dir` (empty when there is none).

        A corrupt checkpoint raises `CorruptCheckpointError`, unless `rebuild` is given: it
        yields (leader_epoch, base_offset) of the log's batches in offset order (every batch
        header carries the epoch it was written in), and the cache is rebuilt from them and
        persisted.
        """
        cache = cls(partition_dir)
        if not cache._path.exists():
            return cache
        try:
            cache._entries = read_checkpoint(cache._path)
        except CorruptCheckpointError:
            if rebuild is None:
                raise
            cache._entries = []
            cache.rebuild_from(rebuild())
        return cache

    def rebuild_from(self, batches: Iterable[tuple[int, int]]) -> None:
        """Replace all entries with those implied by (leader_epoch, base_offset) pairs."""
        entries: list[EpochEntry] = []
        for epoch, offset in batches:
            if epoch < 0:
                continue  # batches written before epochs existed carry -1
            if not entries or epoch > entries[-1].epoch:
                if entries and offset < entries[-1].start_offset:
                    raise LeaderEpochError(f"offset {offset} of epoch {epoch} goes backwards")
                entries.append(EpochEntry(epoch, offset))
        self._entries = entries
        self._flush()

    # -- queries -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    @property
    def earliest_entry(self) -> EpochEntry | None:
        return self._entries[0] if self._entries else None

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch the record at `offset` was written in (-1 if before every entry)."""
        starts = [e.start_offset for e in self._entries]
        i = bisect.bisect_right(starts, offset) - 1
        return self._entries[i].epoch if i >= 0 else UNDEFINED_EPOCH

    def end_offset_for(self, requested_epoch: int, log_end_offset: int) -> tuple[int, int]:
        """KIP-279 answer to OffsetsForLeaderEpoch: (epoch, end offset) for `requested_epoch`.

        The end offset is the start offset of the first epoch above the requested one, or the
        log end offset when the requested epoch is the latest. The epoch returned is the
        largest known epoch ≤ the requested one, so a follower whose epoch this leader never
        had truncates to where the leader's history diverges from its own. Unknown → (-1, -1).
        """
        if requested_epoch == UNDEFINED_EPOCH or not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if requested_epoch == self.latest_epoch:
            return requested_epoch, log_end_offset
        epochs = [e.epoch for e in self._entries]
        hi = bisect.bisect_right(epochs, requested_epoch)
        if hi == len(epochs):
            # Above every epoch we know: we cannot say where it ended.
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        higher = self._entries[hi]
        if hi == 0:
            # Below our earliest epoch (its entries were deleted with old segments).
            return requested_epoch, higher.start_offset
        return self._entries[hi - 1].epoch, higher.start_offset

    # -- updates -------------------------------------------------------------------------

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset`; True when an entry was added.

        Re-assigning the latest epoch is a no-op (its first offset stays). An epoch that
        begins where the latest one began replaces it: that epoch wrote nothing. Epochs or
        offsets going backwards raise `LeaderEpochError`, since the log would then hold
        history the cache cannot describe.
        """
        if epoch < 0 or start_offset < 0:
            raise LeaderEpochError(f"epoch {epoch} / offset {start_offset} must be >= 0")
        if self._entries:
            last = self._entries[-1]
            if epoch == last.epoch:
                if start_offset < last.start_offset:
                    raise LeaderEpochError(
                        f"epoch {epoch} start offset moves back: {last.start_offset} -> "
                        f"{start_offset}")
                return False
            if epoch < last.epoch:
                raise LeaderEpochError(f"epoch goes backwards: latest {last.epoch}, got {epoch}")
            if start_offset < last.start_offset:
                raise LeaderEpochError(
                    f"epoch {epoch} starts at {start_offset}, before epoch {last.epoch} "
                    f"at {last.start_offset}")
            if start_offset == last.start_offset:
                self._entries.pop()
        self._entries.append(EpochEntry(epoch, start_offset))
        self._flush()
        return True

    def truncate_from_end(self, end_offset: int) -> None:
        """The log was truncated to `end_offset`: drop epochs that start at or after it."""
        keep = [e for e in self._entries if e.start_offset < end_offset]
        if len(keep) != len(self._entries):
            self._entries = keep
            self._flush()

    def truncate_from_start(self, start_offset: int) -> None:
        """The log start moved to `start_offset`: drop older epochs, clamp the one spanning it.

        The epoch in force at `start_offset` stays, with its start moved up to the new log
        start, so `end_offset_for` still answers for it.
        """
        starts = [e.start_offset for e in self._entries]
        i = bisect.bisect_right(starts, start_offset) - 1
        if i < 0:
            return
        floor = self._entries[i]
        new = [EpochEntry(floor.epoch, max(floor.start_offset, start_offset))]
        new += self._entries[i + 1:]
        if new != self._entries:
            self._entries = new
            self._flush()

    def clear(self) -> None:
        """Forget every entry (the log was deleted or fully truncated)."""
        self._entries = []
        self._flush()

    @property
    def unsynced(self) -> bool:
        """A checkpoint write awaits its fsync (`sync`)."""
        return self._unsynced > 0

    def _flush(self) -> None:
        """Write the checkpoint; its fsyncs wait for `sync` (the log's next flush)."""
        write_checkpoint(self._path, self._entries, sync=False)
        self._unsynced += 1

    def sync(self) -> None:
        """Make the last checkpoint written durable (a no-op when it is). Runs on the log's
        flush path, possibly in another thread than the writes: a write racing it stays
        counted and is synced next time."""
        pending = self._unsynced
        if not pending:
            return
        try:
            sync_checkpoint(self._path)
        except FileNotFoundError:
            if self._path.parent.exists():
                raise
            # the partition directory is gone (deleted): nothing to make durable
        self._unsynced = max(0, self._unsynced - pending)


def _log_epochs(log: Log) -> Iterator[tuple[int, int]]:
    """(leader epoch, base offset) of every batch of `log`, from headers only."""
    for seg in log.segments:
        for pos, _size, base, _last, _ts in seg.walk(0):
            yield seg.header_at(pos)[2], base


def _last_batch_epoch(log: Log) -> int:
    """Leader epoch of the log's last batch (-1 when empty), via the index: a short walk."""
    for seg in reversed(log.segments):
        if not seg.size:
            continue
        _, pos = seg.index.last_entry()
        last = -1
        for p, _size, _base, _last, _ts in seg.walk(pos):
            last = p
        if last >= 0:
            return seg.header_at(last)[2]
    return UNDEFINED_EPOCH


def attach(log: Log) -> LeaderEpochCache:
    """Load (or rebuild) the cache of `log`, keep it in step with the log, return it.

    The checkpoint is trimmed to the log's current ends; a missing or corrupt one is rebuilt
    from the batch headers. Then every append assigns its epoch (the leader's, or for a
    follower the epochs the leader stamped in the batches), truncations and log-start moves
    trim the entries. The cache is `log.leader_epoch_cache`.
    """
    directory = Path(log.directory)
    if (directory / CHECKPOINT_NAME).exists():
        cache = LeaderEpochCache.open(directory, rebuild=lambda: _log_epochs(log))
    else:
        cache = LeaderEpochCache(directory)
    if log.log_end_offset > log.log_start_offset and \
            _last_batch_epoch(log) > cache.latest_epoch:
        # No checkpoint, or one that missed the newest epoch (its write failed): rebuild.
        cache.rebuild_from(_log_epochs(log))
    cache.truncate_from_end(log.log_end_offset)
    cache.truncate_from_start(log.log_start_offset)

    def on_append(result: AppendResult, info: BatchesInfo, leader_epoch: int) -> None:
        # `info` holds the headers as they came in. A follower's batches keep the leader's
        # offsets and the epochs it stamped; a producer's carry offset 0 and epoch -1, and
        # the leader stamps `leader_epoch` into them.
        first, last = info.batches[0], info.batches[-1]
        replicated = first.base_offset == result.base_offset and \
            last.last_offset == result.last_offset and first.leader_epoch >= 0
        try:
            if not replicated:
                if leader_epoch > cache.latest_epoch:
                    cache.assign(leader_epoch, result.base_offset)
                return
            for h in info.batches:
                if h.leader_epoch > cache.latest_epoch:
                    cache.assign(h.leader_epoch, h.base_offset)
        except OSError:
            # The append is written and the entry is in memory; the file catches up on the
            # next write, and `attach` rebuilds a checkpoint that missed the newest epoch.
            pass

    log.hooks.on_append.append(on_append)
    log.hooks.on_flush.append(cache.sync)
    log.hooks.on_truncate.append(cache.truncate_from_end)
    log.hooks.on_log_start.append(cache.truncate_from_start)
    log.leader_epoch_cache = cache
    return cache
