"""Opening a partition directory: clear leftovers, finish or roll back swaps, load segments,
and validate only what lies past the recovery point.

Leftovers and what they mean:
- `*.deleted`: a delete that crashed after its rename; removed.
- `*.cleaned`: a cleaner output that never got swapped in; removed (the swap rolls back).
- `<base>.log.swap`: a swap that was committed (the log file is renamed last) but not finished:
  old segments covered by it are deleted and it is renamed in place; its index `.swap` files
  are dropped and rebuilt.
- `.index`/`.timeindex` without a `.log` (a roll that crashed while creating files): removed.
- `*.tmp`: half-written temp files; removed.
Below the recovery point every batch was fsynced, so only index sanity is checked there; from
the recovery point on, every batch's CRC, magic, length and offset order are checked and the
log is cut at the first bad one (every later segment removed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from qnode.storage.log_config import LogConfig
from qnode.storage.segment import (
    CLEANED,
    DELETED,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    SWAP,
    TIMEINDEX_SUFFIX,
    Segment,
    segment_path,
)

CLEAN_SHUTDOWN_FILE = ".clean-shutdown"


@dataclass
class RecoveryReport:
    """What opening a log found and did."""

    directory: str
    clean_shutdown: bool = False
    recovery_point: int = 0  # where validation started
    segments: int = 0
    validated_segments: int = 0
    validated_batches: int = 0
    validated_bytes: int = 0
    truncated_bytes: int = 0  # cut from the segment holding the first bad batch
    truncation_reason: str | None = None
    deleted_segments: list[int] = field(default_factory=list)  # wholly after the bad batch
    deleted_bytes: int = 0
    rebuilt_indexes: list[int] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    completed_swaps: list[int] = field(default_factory=list)
    # (end of a segment, base of the next) where they differ: compaction, or a deleted file
    gaps: list[tuple[int, int]] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0 or bool(self.deleted_segments)


def _base_of(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head) if len(head) == 20 and head.isdigit() else None


def _seg_kwargs(config: LogConfig) -> dict[str, int]:
    return {"index_interval_bytes": config.index_interval_bytes,
            "index_max_bytes": config.segment_index_bytes,
            "capacity": config.segment_bytes}


def read_clean_shutdown(directory: str) -> int | None:
    """The log end offset a clean close recorded, or None."""
    try:
        with open(os.path.join(directory, CLEAN_SHUTDOWN_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def write_clean_shutdown(directory: str, log_end_offset: int) -> None:
    path = os.path.join(directory, CLEAN_SHUTDOWN_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(f"{log_end_offset}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(directory: str, report: RecoveryReport) -> list[int]:
    """Delete stray files; return the bases of committed `.log.swap` files."""
    names = os.listdir(directory)
    logs = {b for n in names if n.endswith(LOG_SUFFIX) and (b := _base_of(n)) is not None}
    swaps = sorted(b for n in names
                   if n.endswith(LOG_SUFFIX + SWAP) and (b := _base_of(n)) is not None)
    for n in names:
        base = _base_of(n)
        stray = (
            n.endswith((DELETED, CLEANED, ".tmp"))
            or (base is not None and n.endswith((INDEX_SUFFIX + SWAP, TIMEINDEX_SUFFIX + SWAP)))
            or (base is not None and n.endswith((INDEX_SUFFIX, TIMEINDEX_SUFFIX))
                and base not in logs)
        )
        if stray:
            os.unlink(os.path.join(directory, n))
            report.removed_files.append(n)
    return swaps


def _complete_swaps(directory: str, config: LogConfig, swaps: list[int],
                    report: RecoveryReport) -> None:
    for base in swaps:
        seg = Segment(directory, base, active=False, suffix=SWAP, **_seg_kwargs(config))
        seg.capacity = 0  # a cleaned segment: never written again
        seg.rebuild_indexes()
        end = seg.next_offset
        for name in sorted(os.listdir(directory)):
            other = _base_of(name)
            covered = other is not None and base <= other < max(end, base + 1)
            if name.endswith(LOG_SUFFIX) and covered:
                for sfx in (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX):
                    try:
                        os.unlink(segment_path(directory, other, sfx))
                    except FileNotFoundError:
                        pass
        seg.change_suffix("")
        seg.close()
        report.completed_swaps.append(base)
    if swaps:
        fsync_dir(directory)


def load_segments(
    directory: str, config: LogConfig, recovery_point: int | None
) -> tuple[list[Segment], RecoveryReport]:
    """Open every segment of `directory`, recovering the tail past `recovery_point`.

    The last segment comes back active (writable indexes). With no segment at all the list is
    empty and the caller creates the first one.
    """
    t0 = time.perf_counter()
    os.makedirs(directory, exist_ok=True)
    report = RecoveryReport(directory)
    clean = read_clean_shutdown(directory)
    swaps = _remove_leftovers(directory, report)
    _complete_swaps(directory, config, swaps, report)
    bases = sorted(b for n in os.listdir(directory)
                   if n.endswith(LOG_SUFFIX) and (b := _base_of(n)) is not None)
    kw = _seg_kwargs(config)
    rp = recovery_point if recovery_point is not None else 0
    if clean is not None:
        report.clean_shutdown = True
        rp = max(rp, clean)
    report.recovery_point = rp
    segments: list[Segment] = []
    try:
        for i, base in enumerate(bases):
            missing = not (os.path.exists(segment_path(directory, base, INDEX_SUFFIX))
                           and os.path.exists(segment_path(directory, base, TIMEINDEX_SUFFIX)))
            last = i == len(bases) - 1
            seg = Segment(directory, base, active=last, **kw)
            segments.append(seg)
            if (missing or not seg.indexes_sane()) and seg.size:
                seg.rebuild_indexes()
                report.rebuilt_indexes.append(base)
        _recover_tail(segments, rp, report)
    except BaseException:
        for seg in segments:
            seg.close()
        raise
    report.segments = len(segments)
    for prev, nxt in zip(segments, segments[1:], strict=False):
        # compaction leaves gaps too; a gap is worth reporting, it is not an error
        if prev.next_offset != nxt.base_offset:
            report.gaps.append((prev.next_offset, nxt.base_offset))
    if clean is not None:
        os.unlink(os.path.join(directory, CLEAN_SHUTDOWN_FILE))
    report.elapsed_ms = (time.perf_counter() - t0) * 1000
    return segments, report


def _recover_tail(segments: list[Segment], rp: int, report: RecoveryReport) -> None:
    if not segments:
        return
    # the segment holding the recovery point: the last whose base is <= rp
    k = 0
    for i, seg in enumerate(segments):
        if seg.base_offset <= rp:
            k = i
    seg = segments[k]
    start_pos = 0
    expected: int | None = None
    if rp > seg.base_offset:
        pos = seg.position_of(rp)
        if pos is not None:
            start_pos, expected = pos, rp
    if rp >= seg.base_offset and k == len(segments) - 1 and start_pos == seg.size and expected:
        return  # clean: nothing past the recovery point
    for j in range(k, len(segments)):
        seg = segments[j]
        rec = seg.recover_tail(start_pos if j == k else 0, expected if j == k else None)
        report.validated_segments += 1
        report.validated_batches += rec.validated_batches
        report.validated_bytes += rec.validated_bytes
        if rec.reason is not None:
            report.truncated_bytes += rec.truncated_bytes
            report.truncation_reason = f"segment {seg.base_offset}: {rec.reason}"
            for later in segments[j + 1:]:
                report.deleted_segments.append(later.base_offset)
                report.deleted_bytes += later.size
                later.delete()
            del segments[j + 1:]
            if not seg.active:
                seg.unseal()
            return
