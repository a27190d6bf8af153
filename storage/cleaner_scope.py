"""What the log cleaner may touch in a partition log, and how its transactions ended.

- The first dirty offset: below it every record was already compared against a map of
  later keys; persisted per partition in `cleaner-offset-checkpoint` (text: version line,
  offset line; written atomically). Missing or unreadable means the log start: cleaning
  again is only slower, never wrong.
- The cleanable range: from the first dirty offset to the first segment the cleaner must
  not touch (the active one, one younger than `min.compaction.lag.ms`, one reaching past
  the stable bound: the high watermark, or the first offset of an open transaction).
- Transaction outcomes: each transactional batch paired with its producer's next marker,
  and the markers no longer needed: no data batch of their transaction is left before them
  (it was cleaned away, or there never was one), so once past the delete horizon they may
  go (Kafka's rule: a marker outlives its transaction's data, not the other way round).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qnode.storage.batch_builder import ControlType
from qnode.storage.batch_reader import Batch
from qnode.storage.errors import DiskFullError
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.record_batch import iter_batches
from qnode.storage.recovery import fsync_dir
from qnode.storage.segment import Segment

CHECKPOINT_NAME = "cleaner-offset-checkpoint"


@dataclass(frozen=True)
class CleanableRange:
    first_dirty: int  # first offset not yet in any offset map
    first_uncleanable: int  # base of the first segment the cleaner must not touch
    clean_bytes: int  # closed bytes below first_dirty
    dirty_bytes: int  # bytes in [first_dirty, first_uncleanable)

    @property
    def dirty_ratio(self) -> float:
        total = self.clean_bytes + self.dirty_bytes
        return self.dirty_bytes / total if total else 0.0


def read_first_dirty(directory: str | os.PathLike[str]) -> int | None:
    """The persisted first dirty offset of a partition, or None (missing or unreadable)."""
    try:
        lines = (Path(directory) / CHECKPOINT_NAME).read_text().split()
        if len(lines) == 2 and lines[0] == "0":
            return int(lines[1])
    except (OSError, ValueError):
        pass
    return None


def write_first_dirty(directory: str | os.PathLike[str], offset: int) -> None:
    """Persist the first dirty offset atomically; a full disk raises DiskFullError (losing
    it only means the next clean starts earlier)."""
    path = Path(directory) / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(f"0\n{offset}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.fspath(directory))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space to write {path}: {exc}") from exc
        raise


def cleanable_range(segments: Sequence[Segment], log_start: int, first_dirty: int | None,
                    config: LogConfig, now_ms: int, max_offset: int | None) -> CleanableRange:
    """Where this log's dirty section begins and ends (the last segment is the active one)."""
    closed = list(segments[:-1])
    dirty = max(log_start, first_dirty if first_dirty is not None else log_start)
    uncleanable = segments[-1].base_offset if segments else dirty
    for seg in closed:
        if seg.next_offset <= dirty:
            continue
        too_young = config.min_compaction_lag_ms > 0 and \
            seg.largest_timestamp() > now_ms - config.min_compaction_lag_ms
        past_bound = max_offset is not None and seg.next_offset > max_offset
        if too_young or past_bound:
            uncleanable = seg.base_offset
            break
    dirty = min(dirty, uncleanable) if closed else dirty
    clean_bytes = sum(s.size for s in closed if s.next_offset <= dirty)
    dirty_bytes = sum(s.size for s in closed
                      if s.next_offset > dirty and s.base_offset < uncleanable)
    return CleanableRange(dirty, uncleanable, clean_bytes, dirty_bytes)


def stable_bound(log: Log) -> int:
    """Nothing at or past this offset is cleaned: the high watermark, or the first offset of
    an open transaction when lower (its data may still be aborted)."""
    bound = log.high_watermark
    psm = log.producer_state
    lso = psm.first_unstable_offset() if psm is not None else None
    return bound if lso is None else min(bound, lso)


@dataclass
class TxnOutcomes:
    """How each transactional batch of a log ended, by batch base offset.

    A transactional batch belongs to the transaction its producer's next control marker
    ends. Batches with no marker yet (an open transaction) are in neither set and are
    treated conservatively: kept, and never allowed to hide other records.
    """

    committed: set[int] = field(default_factory=set)
    aborted: set[int] = field(default_factory=set)
    # Control batches (by base offset) whose transaction has no data batch left in the log,
    # and empty control batches: removable once past delete.retention.ms.
    idle_markers: set[int] = field(default_factory=set)


def scan_transactions(segments: Sequence[Segment]) -> TxnOutcomes:
    """Walk the headers of the whole log once, pairing transactional batches with markers."""
    out = TxnOutcomes()
    open_batches: dict[int, list[int]] = {}
    for seg in segments:
        buf = seg.view(0, seg.size)
        for hdr in iter_batches(buf):
            if not hdr.is_transactional:
                continue
            if not hdr.is_control:
                open_batches.setdefault(hdr.producer_id, []).append(hdr.base_offset)
                continue
            pending = open_batches.pop(hdr.producer_id, [])
            if not pending or hdr.record_count == 0:
                out.idle_markers.add(hdr.base_offset)
                continue
            marker = Batch.from_header(buf, hdr).control_record()
            target = out.aborted if marker.type == ControlType.ABORT else out.committed
            target.update(pending)
        del buf
    return out
