"""Delayed removal of segment files (Kafka's `file.delete.delay.ms`).

A segment that retention, DeleteRecords or a cleaner swap removes from a log is closed and
its files renamed with the `.deleted` suffix at once (it is out of the log: a restart never
loads it again), and unlinked only once `file.delete.delay.ms` has passed. Until then a
process that found the file by name just before the removal can still open and read it;
this process's readers hold mapped slices, which stay valid after the unlink anyway.

Time is the owner's (`run(now_ms)` from `LogManager.tick`): a removal is stamped with the
first tick after it, so the delay is never shorter than asked, whatever clock the owner
uses. A crash before the unlink leaves `*.deleted` files that recovery removes on open
(storage/recovery.py).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from qnode.storage.log import Log
from qnode.storage.segment import DELETED, Segment


@dataclass
class PendingFile:
    """A renamed segment file waiting for its delay."""

    path: str
    inode: int  # the same name may be reused by a later removal of a same-base segment
    delay_ms: int
    due_ms: int | None = None  # set at the first tick after the removal


def rename_deleted(seg: Segment) -> list[str]:
    """Close `seg` and rename its files to `<name>.deleted`; returns the new paths (files
    already missing are skipped). Slices of the segment stay valid: the mapping lives on."""
    paths = seg.file_paths()
    seg.close()
    out = []
    for p in paths:
        try:
            os.rename(p, p + DELETED)
        except FileNotFoundError:
            continue
        out.append(p + DELETED)
    return out


class SegmentDeleter:
    """The removal hook of every log of one LogManager (`Log.segment_remover`)."""

    def __init__(self) -> None:
        self._pending: list[PendingFile] = []
        self._lock = threading.Lock()

    def attach(self, log: Log) -> None:
        """Make `log` hand its removed segments to this deleter."""

        def remove(seg: Segment) -> None:
            self.remove(seg, log.config.file_delete_delay_ms)

        log.segment_remover = remove

    def remove(self, seg: Segment, delay_ms: int) -> None:
        """Take `seg` out: deleted now when `delay_ms` is 0, else renamed and queued."""
        if delay_ms <= 0:
            seg.delete()
            return
        queued = []
        for path in rename_deleted(seg):
            try:
                queued.append(PendingFile(path, os.stat(path).st_ino, delay_ms))
            except FileNotFoundError:
                continue
        with self._lock:
            self._pending.extend(queued)

    @property
    def pending(self) -> list[PendingFile]:
        with self._lock:
            return list(self._pending)

    def run(self, now_ms: int) -> int:
        """Stamp new removals with `now_ms` and unlink the files whose delay has passed;
        returns how many were unlinked."""
        with self._lock:
            due: list[PendingFile] = []
            keep: list[PendingFile] = []
            for f in self._pending:
                if f.due_ms is None:
                    f.due_ms = now_ms + f.delay_ms
                (due if f.due_ms <= now_ms else keep).append(f)
            self._pending = keep
        return sum(_unlink(f) for f in due)

    def remove_all(self) -> int:
        """Unlink every queued file now (the owner closes: none of its readers remain)."""
        with self._lock:
            files, self._pending = self._pending, []
        return sum(_unlink(f) for f in files)


def _unlink(f: PendingFile) -> bool:
    """Unlink `f` unless its name now belongs to a later removal (another inode) or it is
    gone already (a restart's recovery, a deleted partition)."""
    try:
        if os.stat(f.path).st_ino != f.inode:
            return False
        os.unlink(f.path)
    except OSError:
        return False  # gone already, or unremovable now: recovery removes it on next open
    return True
