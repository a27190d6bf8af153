"""Log compaction (cleanup.policy=compact and compact,delete): keep the latest record per key.

One round over a partition log, as Kafka's cleaner does it:

1. Cleanable range: from the first dirty offset (persisted in `cleaner-offset-checkpoint` in
   the partition directory; the log start when missing) up to the first segment that must
   not be touched: the active segment, a segment younger than `min.compaction.lag.ms`, or
   one reaching past the high watermark or the first open transaction (nothing a leader
   change could truncate, or an abort could void, ever supersedes committed data). A log is
   due when its dirty ratio reaches `min.cleanable.dirty.ratio`, or its oldest dirty
   segment waited `max.compaction.lag.ms`.
2. Offset map: key hash → latest offset over the dirty part (`OffsetMap`, fixed memory
   from `log.cleaner.dedupe.buffer.size`). When it fills, this round stops there: the prefix
   is cleaned now, the rest in the next round.
3. Rewrite every closed segment from the log start to the end of the map, in groups of
   consecutive segments whose total size fits `segment.bytes` (so small cleaned segments
   merge). A record is kept when no later offset for its key is in the map, it has a key
   (null keys are invalid in a compacted topic: dropped and counted), and it is not a
   tombstone old enough to drop: its segment's largest timestamp is older than
   `delete.retention.ms`, and this round's map covers it (so every older value of its key
   goes in the same round, in an earlier or the same swap). Kept records keep their offsets,
   timestamps and batches' producer fields (`batch_filter`).
   Transactions are settled by their producers' markers (`scan_transactions`): aborted
   batches are dropped whole, committed ones compete like any other, and a batch whose
   marker is not written yet is kept and hides nothing. A batch emptied of records survives
   as an empty batch when it is the last one of a live producer, or the last of its group
   (so the cleaned segment ends where the old run did: recovery relies on it).
   Control batches (COMMIT/ABORT markers) are kept whole while needed, and removed, as
   Kafka does, once no data batch of their transaction is left before them in the log
   (the scan at the start of the clean sees it; so a marker goes one clean after its
   aborted data) and their segment is past the delete horizon (`delete.retention.ms`, as
   for tombstones), unless it is the last batch of a live producer (its state needs it).
   A removed marker that ended its group leaves a producer-less empty batch in its place.
4. Each group's output is written as a `.cleaned` segment and handed to
   `Log.replace_segments`, which seals and fsyncs it and swaps it in atomically
   (`.cleaned` → `.swap`, the log file's rename commits; old segments deleted; `.swap` →
   final). A crash anywhere leaves a valid log: `Log.open` (storage/recovery.py) deletes
   `.cleaned` leftovers and finishes a committed `.swap`.

The cleaner reads closed segments only, so the owner may keep appending to the active one.
Run it from the thread that owns the log (LogManager.tick) or hold off other writers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from qnode.storage.batch_filter import (
    RawRecord,
    empty_batch,
    placeholder_batch,
    rebuild_batch,
    records_section,
    walk_records,
)
from qnode.storage.cleaner_scope import (
    CleanableRange,
    TxnOutcomes,
    cleanable_range,
    read_first_dirty,
    scan_transactions,
    stable_bound,
    write_first_dirty,
)
from qnode.storage.errors import (
    CorruptRecordError,
    DiskFullError,
    InvalidRecordError,
    StorageError,
)
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.offset_map import OffsetMap, key_hash
from qnode.storage.record_batch import BatchHeader, check_crc, iter_batches
from qnode.storage.segment import CLEANED, SEGMENT_SUFFIXES, Segment, segment_path

MAX_GROUP_OFFSET_SPAN = 2**31 - 1  # relative offsets in the cleaned segment's index


class CleanerError(StorageError):
    """A clean that cannot proceed (e.g. the dedupe buffer cannot hold one batch's keys)."""


@dataclass(frozen=True)
class CleanerConfig:
    """Node-level cleaner settings (Kafka's log.cleaner.* names)."""

    dedupe_buffer_size: int = 128 * 1024 * 1024  # log.cleaner.dedupe.buffer.size
    io_buffer_load_factor: float = 0.9  # log.cleaner.io.buffer.load.factor
    io_buffer_size: int = 1024 * 1024  # bytes written per append to the cleaned segment
    max_rounds: int = 64  # rounds per clean() call when the map keeps filling


@dataclass
class CleanerStats:
    """What one `clean` call did."""

    rounds: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records_read: int = 0
    records_kept: int = 0
    records_superseded: int = 0
    tombstones_dropped: int = 0
    markers_dropped: int = 0
    null_keys_dropped: int = 0
    aborted_records_dropped: int = 0
    batches_copied: int = 0
    batches_rewritten: int = 0
    batches_dropped: int = 0
    empty_batches_kept: int = 0
    segments_read: int = 0
    segments_written: int = 0
    map_entries: int = 0
    first_dirty_before: int = 0
    first_dirty_after: int = 0
    duration_s: float = 0.0
    swaps: list[tuple[int, list[int]]] = field(default_factory=list)

    @property
    def records_dropped(self) -> int:
        return (self.records_superseded + self.tombstones_dropped + self.null_keys_dropped
                + self.aborted_records_dropped)

    def summary(self) -> str:
        mb = 1024 * 1024
        return (f"cleaned {self.segments_read} segments into {self.segments_written} in "
                f"{self.rounds} round(s), {self.duration_s:.3f}s: read "
                f"{self.bytes_read / mb:.1f} MiB, wrote {self.bytes_written / mb:.1f} MiB, kept "
                f"{self.records_kept} records, dropped {self.records_superseded} superseded, "
                f"{self.tombstones_dropped} tombstones, {self.null_keys_dropped} null keys, "
                f"{self.aborted_records_dropped} aborted, {self.markers_dropped} markers")


def _decode(buf: memoryview, hdr: BatchHeader) -> tuple[bytes, list[RawRecord]]:
    check_crc(buf, hdr)  # never launder a damaged batch into a fresh CRC
    data = records_section(buf, hdr)
    return data, walk_records(data, hdr.record_count)


class Cleaner:
    """Compacts partition logs; one instance per owner, reusing one offset map."""

    def __init__(self, config: CleanerConfig | None = None) -> None:
        self.config = config or CleanerConfig()
        self._map: OffsetMap | None = None
        self.last_stats: dict[str, CleanerStats] = {}  # by log directory
        self.uncleanable: dict[str, str] = {}  # log directory -> why it is skipped

    def __call__(self, log: Log, now_ms: int) -> bool:
        """The `LogManager.cleaners` hook: clean `log` if it is dirty enough; True if it did.

        A log whose clean fails on its data (a corrupt batch, a batch with more keys than the
        dedupe buffer holds) is marked uncleanable and skipped from then on, but stays
        online: the cleaner never takes a serving log down. A full disk skips this round.
        """
        if log.directory in self.uncleanable or not self.needs_cleaning(log, now_ms):
            return False
        try:
            stats = self.clean(log, now_ms)
        except (CleanerError, CorruptRecordError, InvalidRecordError) as exc:
            self.uncleanable[log.directory] = str(exc)
            return False
        except DiskFullError:
            return False
        self.last_stats[log.directory] = stats
        return stats.segments_written > 0

    def _offset_map(self) -> OffsetMap:
        if self._map is None:
            self._map = OffsetMap(self.config.dedupe_buffer_size,
                                  self.config.io_buffer_load_factor)
        return self._map

    # -- entry point ---------------------------------------------------------------------

    def clean(self, log: Log, now_ms: int, *, max_offset: int | None = None,
              active_producers: Mapping[int, int] | None = None) -> CleanerStats:
        """Compact the closed segments of `log`; returns what was done.

        `max_offset` bounds the cleanable range; by default the high watermark, lowered to
        the first open transaction when `log.producer_state` knows one. `active_producers`
        maps producer id → last offset of its last batch; by default taken from
        `log.producer_state` (a `ProducerStateManager`) when the owner attached one.
        """
        t0 = time.perf_counter()
        directory = log.directory
        stats = CleanerStats()
        psm = log.producer_state
        if max_offset is None:
            max_offset = stable_bound(log)
        if active_producers is None:
            active_producers = {} if psm is None else \
                {pid: e.last_offset for pid, e in psm.producers.items()}
        segs = log.segments
        rng = cleanable_range(segs, log.log_start_offset, read_first_dirty(directory),
                              log.config, now_ms, max_offset)
        stats.first_dirty_before = stats.first_dirty_after = rng.first_dirty
        txns: TxnOutcomes | None = None
        for _ in range(self.config.max_rounds):
            if rng.first_dirty >= rng.first_uncleanable:
                break
            if txns is None:  # offsets never change, so one scan serves every round
                txns = scan_transactions(segs)
            map_end = self._build_map(segs, rng.first_dirty, rng.first_uncleanable, txns,
                                      stats)
            for group in _group(segs[:-1], map_end, log.config):
                new = self._clean_group(directory, group, log.config, now_ms, map_end,
                                        active_producers, txns, stats)
                if new is None:
                    continue
                try:
                    log.replace_segments(group, [new])
                except BaseException:
                    new.close()
                    _remove_cleaned(directory, new.base_offset)
                    raise
                stats.segments_written += 1
                stats.swaps.append((new.base_offset, [s.base_offset for s in group]))
            write_first_dirty(directory, map_end)
            stats.rounds += 1
            stats.first_dirty_after = map_end
            rng = CleanableRange(map_end, rng.first_uncleanable, 0, 0)
            segs = log.segments
        stats.duration_s = time.perf_counter() - t0
        return stats

    def needs_cleaning(self, log: Log, now_ms: int) -> bool:
        """Compaction is on and the dirty ratio reached `min.cleanable.dirty.ratio`, or the
        oldest dirty segment waited past `max.compaction.lag.ms`."""
        if not log.config.compact_enabled:
            return False
        segs = log.segments
        rng = cleanable_range(segs, log.log_start_offset, read_first_dirty(log.directory),
                              log.config, now_ms, stable_bound(log))
        if rng.dirty_bytes == 0:
            return False
        if rng.dirty_ratio >= log.config.min_cleanable_dirty_ratio:
            return True
        # max.compaction.lag.ms: a dirty record may not wait longer than this to be compacted.
        max_lag = log.config.max_compaction_lag_ms
        if max_lag is not None:
            for seg in segs[:-1]:
                if seg.next_offset > rng.first_dirty and seg.base_offset < rng.first_uncleanable:
                    first_ts = seg.first_batch_ts if seg.first_batch_ts >= 0 \
                        else seg.largest_timestamp()
                    return first_ts <= now_ms - max_lag
        return False

    # -- offset map ----------------------------------------------------------------------

    def _build_map(self, segs: list[Segment], first_dirty: int, first_uncleanable: int,
                   txns: TxnOutcomes, stats: CleanerStats) -> int:
        """Fill the map from first_dirty; return the offset it covers up to (exclusive)."""
        omap = self._offset_map()
        omap.clear()
        end = first_dirty
        for seg in segs[:-1]:
            if seg.next_offset <= first_dirty:
                continue
            if seg.base_offset >= first_uncleanable:
                break
            buf = seg.view(0, seg.size)
            for hdr in iter_batches(buf):
                if hdr.last_offset < first_dirty:
                    continue
                if omap.size + hdr.record_count > omap.max_entries:
                    if omap.size == 0:
                        raise CleanerError(
                            f"log.cleaner.dedupe.buffer.size {self.config.dedupe_buffer_size} "
                            f"cannot hold the {hdr.record_count} keys of the batch at offset "
                            f"{hdr.base_offset}")
                    stats.map_entries = max(stats.map_entries, omap.size)
                    return end
                committed = not hdr.is_transactional or hdr.base_offset in txns.committed
                if not hdr.is_control and committed and hdr.record_count:
                    data, records = _decode(buf, hdr)
                    base = hdr.base_offset
                    put = omap.put
                    for _, _, delta, key, _ in records:
                        if key is not None:
                            put(key_hash(key), base + delta)
                end = hdr.next_offset
            del buf
            end = max(end, seg.next_offset)
        stats.map_entries = max(stats.map_entries, omap.size)
        return end

    # -- rewriting -----------------------------------------------------------------------

    def _clean_group(self, directory: str, group: list[Segment], config: LogConfig,
                     now_ms: int, map_end: int, producers: Mapping[int, int],
                     txns: TxnOutcomes, stats: CleanerStats) -> Segment | None:
        """Write the cleaned copy of `group` as an open `.cleaned` segment; None if empty."""
        omap = self._offset_map()
        base = group[0].base_offset
        _remove_cleaned(directory, base)
        out = Segment.create(directory, base, index_interval_bytes=config.index_interval_bytes,
                             index_max_bytes=config.segment_index_bytes, suffix=CLEANED)
        writer = _ChunkWriter(out, self.config.io_buffer_size)
        last_hdr: BatchHeader | None = None
        last_written = -1
        try:
            for seg in group:
                stats.segments_read += 1
                stats.bytes_read += seg.size
                drop_tombstones = seg.largest_timestamp() + config.delete_retention_ms <= now_ms
                buf = seg.view(0, seg.size)
                for hdr in iter_batches(buf):
                    last_hdr = hdr
                    # A tombstone past the map may still hide an older value the map does not
                    # know to drop yet: it stays until a round's map covers it.
                    kept = _filter(buf, hdr, omap, drop_tombstones and hdr.last_offset < map_end,
                                   drop_tombstones, producers, txns, stats)
                    if kept is not None:
                        writer.add(kept, hdr)
                        last_written = hdr.last_offset
                del buf
            if last_hdr is not None and last_written != last_hdr.last_offset:
                # end where the old run ended
                end = placeholder_batch(last_hdr) if last_hdr.is_control \
                    else empty_batch(last_hdr)
                writer.add(end, last_hdr)
                stats.empty_batches_kept += 1
            writer.flush()
        except BaseException:
            out.close()
            _remove_cleaned(directory, base)
            raise
        if last_hdr is None:
            out.close()
            _remove_cleaned(directory, base)
            return None
        stats.bytes_written += out.size
        return out


def _remove_cleaned(directory: str, base: int) -> None:
    for sfx in SEGMENT_SUFFIXES:
        try:
            os.unlink(segment_path(directory, base, sfx, CLEANED))
        except FileNotFoundError:
            pass


class _ChunkWriter:
    """Buffers output batches and appends them to the cleaned segment in large writes."""

    def __init__(self, seg: Segment, chunk: int) -> None:
        self.seg, self.chunk = seg, chunk
        self.buf = bytearray()
        self.metas: list[tuple[int, int, int, int, int]] = []

    def add(self, data: bytes | memoryview, hdr: BatchHeader) -> None:
        self.metas.append((len(self.buf), len(data), hdr.base_offset, hdr.last_offset,
                           hdr.max_timestamp))
        self.buf += data
        if len(self.buf) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.seg.append(self.buf, self.metas)
            self.buf = bytearray()
            self.metas = []


def _filter(buf: memoryview, hdr: BatchHeader, omap: OffsetMap, drop_tombstones: bool,
            past_horizon: bool, producers: Mapping[int, int], txns: TxnOutcomes,
            stats: CleanerStats) -> bytes | memoryview | None:
    """The batch as it survives cleaning: original bytes, rebuilt bytes, or None."""
    raw = buf[hdr.position: hdr.end]
    live_producer = hdr.producer_id >= 0 and producers.get(hdr.producer_id) == hdr.last_offset
    if hdr.is_control and past_horizon and not live_producer \
            and hdr.base_offset in txns.idle_markers:
        stats.markers_dropped += 1
        stats.batches_dropped += 1
        return None
    if hdr.is_control or (hdr.record_count == 0 and live_producer):
        stats.batches_copied += 1
        return raw
    if hdr.record_count == 0:  # an empty batch a past clean kept for a producer now gone
        stats.batches_dropped += 1
        return None
    if hdr.is_transactional and hdr.base_offset in txns.aborted:
        # Aborted data is invisible to read_committed consumers and must never shadow a
        # committed value; its marker stays, so read_uncommitted readers just see less.
        stats.aborted_records_dropped += hdr.record_count
        if live_producer:
            stats.empty_batches_kept += 1
            return empty_batch(hdr)
        stats.batches_dropped += 1
        return None
    data, records = _decode(buf, hdr)
    stats.records_read += len(records)
    keep: list[RawRecord] = []
    base = hdr.base_offset
    settled = not hdr.is_transactional or base in txns.committed
    for rec in records:
        key = rec[3]
        if key is None:
            stats.null_keys_dropped += 1
            continue
        if omap.get(key_hash(key)) > base + rec[2]:
            stats.records_superseded += 1
            continue
        if rec[4] and drop_tombstones and settled:
            stats.tombstones_dropped += 1
            continue
        keep.append(rec)
    stats.records_kept += len(keep)
    if len(keep) == len(records):
        stats.batches_copied += 1
        return raw
    if not keep:
        if live_producer:
            stats.empty_batches_kept += 1
            return empty_batch(hdr)
        stats.batches_dropped += 1
        return None
    stats.batches_rewritten += 1
    return rebuild_batch(hdr, data, keep)


def _group(closed: list[Segment], map_end: int, config: LogConfig) -> list[list[Segment]]:
    """Consecutive closed segments below map_end, grouped to fit one segment and its index."""
    max_index_entries = config.segment_index_bytes // 12 - 2  # time index entries are 12 bytes
    groups: list[list[Segment]] = []
    cur: list[Segment] = []
    size = 0
    for seg in closed:
        if seg.base_offset >= map_end:
            break
        fits = cur and size + seg.size <= config.segment_bytes \
            and seg.next_offset - 1 - cur[0].base_offset <= MAX_GROUP_OFFSET_SPAN \
            and (size + seg.size) // (config.index_interval_bytes + 1) + 1 <= max_index_entries
        if cur and not fits:
            groups.append(cur)
            cur, size = [], 0
        cur.append(seg)
        size += seg.size
    if cur:
        groups.append(cur)
    return groups
