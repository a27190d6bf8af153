"""The logs of one owner (a worker, or the coordinator) in a shared data directory.

Several owners share `<data_dir>`; each opens only the partitions it is told to, and keeps
its own checkpoint files, named after it (`recovery-point-offset-checkpoint.<name>`,
`replication-offset-checkpoint.<name>` for high watermarks, `log-start-offset-checkpoint.<name>`).
The owner drives time: `tick(now_ms)` applies flush.ms, retention, the cleaner hook and writes
the checkpoints on their intervals. Deleting a log renames its directory to
`<topic>-<partition>.<uuid>.deleted` (atomic: a crash leaves an obvious leftover) and then
removes it; leftovers are removed when any owner starts. A segment that retention,
DeleteRecords or the cleaner removes is renamed `.deleted` at once and unlinked by the tick
after `file.delete.delay.ms` (storage/segment_deleter.py); `Log.open` removes leftovers.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from qnode.storage.checkpoint import (
    CorruptCheckpointError,
    TopicPartition,
    read_checkpoint,
    write_checkpoint,
)
from qnode.storage.errors import LogClosedError, StorageError
from qnode.storage.log import DEFAULT_MAPPED_SEGMENTS, Log
from qnode.storage.log_config import LogConfig
from qnode.storage.recovery import fsync_dir
from qnode.storage.retention import apply_retention
from qnode.storage.segment_deleter import SegmentDeleter

# Open files one partition holds: its active segment's .log, .index and .timeindex, each open
# once for writes and once more inside its mapping (Python's mmap keeps a dup of the fd), and a
# .log per sealed segment: 7 for a partition that has rolled once (counted on a live node:
# 6 per partition with one segment, one more per sealed segment).
OPEN_FILES_PER_PARTITION = 7
# left for sockets, checkpoints, snapshots and the interpreter: this many, or a quarter of a
# small limit (a hard limit of 1024 still leaves room for ~100 partitions a worker)
RESERVED_FILES = 1024


def partition_capacity(open_file_limit: int) -> int:
    """How many partitions one process can keep open under an RLIMIT_NOFILE of
    `open_file_limit`: past it, opening a segment fails with EMFILE (Too many open files)."""
    reserved = min(RESERVED_FILES, open_file_limit // 4)
    return max(0, (open_file_limit - reserved) // OPEN_FILES_PER_PARTITION)


RECOVERY_POINT_CHECKPOINT = "recovery-point-offset-checkpoint"
HIGH_WATERMARK_CHECKPOINT = "replication-offset-checkpoint"
LOG_START_CHECKPOINT = "log-start-offset-checkpoint"
DELETED_DIR_SUFFIX = ".deleted"


def log_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_log_dir_name(name: str) -> TopicPartition | None:
    """(topic, partition) of a `<topic>-<partition>` directory name, else None."""
    topic, sep, part = name.rpartition("-")
    if not sep or not topic or not part.isdigit() or name.endswith(DELETED_DIR_SUFFIX):
        return None
    return topic, int(part)


class Flusher:
    """One background thread running fsyncs (a rolled segment, flush.ms) off the owner's
    event loop, as Kafka's scheduler does; a log is queued at most once at a time."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[tuple[TopicPartition, Log, int | None] | None] = queue.Queue()
        self._pending: set[TopicPartition] = set()
        self._errors: dict[TopicPartition, Exception] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, tp: TopicPartition, log: Log, upto: int | None) -> None:
        with self._lock:
            if tp in self._pending:
                return
            self._pending.add(tp)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((tp, log, upto))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                tp, log, upto = item
                try:
                    log.flush(upto)
                except LogClosedError:
                    pass
                except (StorageError, OSError) as exc:
                    with self._lock:
                        self._errors[tp] = exc
                finally:
                    with self._lock:
                        self._pending.discard(tp)
            finally:
                self._queue.task_done()

    def take_errors(self) -> dict[TopicPartition, Exception]:
        with self._lock:
            errors, self._errors = self._errors, {}
        return errors

    def drain(self) -> None:
        """Wait until every queued flush is done."""
        self._queue.join()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None


@dataclass
class TickReport:
    flushed: list[TopicPartition] = field(default_factory=list)
    deleted_segments: dict[TopicPartition, int] = field(default_factory=dict)
    cleaned: list[TopicPartition] = field(default_factory=list)
    checkpointed: bool = False
    removed_files: int = 0  # `.deleted` segment files unlinked (file.delete.delay.ms passed)
    errors: dict[TopicPartition, Exception] = field(default_factory=dict)


class LogManager:
    """Opens, creates and deletes the logs of one owner and checkpoints their offsets."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        checkpoint_name: str = "",
        *,
        default_config: LogConfig | None = None,
        checkpoint_interval_ms: int = 60_000,
        retention_check_interval_ms: int = 300_000,
        cleaner_backoff_ms: int = 15_000,
        background_flush: bool = True,
        file_checks_per_tick: int = 64,
        mapped_segments: int = DEFAULT_MAPPED_SEGMENTS,
    ) -> None:
        self.data_dir = os.fspath(data_dir)
        # `tick` looks for segment files deleted under a log in this many logs per tick,
        # round robin (a stat per segment of every log on every tick costs milliseconds
        # with a thousand logs; a flush still checks the segments it syncs).
        self.file_checks_per_tick = max(1, file_checks_per_tick)
        self._check_cursor = 0
        self.mapped_segments = mapped_segments  # closed segments kept mapped per log
        self.checkpoint_name = checkpoint_name
        self.default_config = default_config or LogConfig()
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self.retention_check_interval_ms = retention_check_interval_ms
        self.cleaner_backoff_ms = cleaner_backoff_ms
        # The compaction owner appends callables (log, now_ms) -> bool (True: it cleaned).
        self.cleaners: list[Callable[[Log, int], bool]] = []
        self.warnings: list[str] = []
        self._logs: dict[TopicPartition, Log] = {}
        self._offline: dict[TopicPartition, Exception] = {}
        self._lock = threading.RLock()
        self._flusher = Flusher(f"qnode-flush-{checkpoint_name}") if background_flush else None
        self.segment_deleter = SegmentDeleter()
        os.makedirs(self.data_dir, exist_ok=True)
        self._remove_deleted_dirs()
        self._recovery = self._read(RECOVERY_POINT_CHECKPOINT)
        self._hw = self._read(HIGH_WATERMARK_CHECKPOINT)
        self._start = self._read(LOG_START_CHECKPOINT)
        self._last_checkpoint = self._last_retention = self._last_clean = -1
        # where the current sweep of tick() over the logs is, and what it does to them
        self._sweep_pos = 0
        self._sweep_retention = self._sweep_clean = False
        # segment_generation of each compacted log when the cleaners last looked at it: a log
        # that rolled (or was truncated, or cleaned) since is looked at again on the next tick
        # instead of after the backoff, so compaction follows new closed segments promptly.
        self._cleaner_seen: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, kind: str) -> str:
        name = f"{kind}.{self.checkpoint_name}" if self.checkpoint_name else kind
        return os.path.join(self.data_dir, name)

    def _read(self, kind: str) -> dict[TopicPartition, int]:
        try:
            return read_checkpoint(self.checkpoint_path(kind))
        except CorruptCheckpointError as exc:
            # Without it every log is recovered in full: slower, never wrong.
            self.warnings.append(f"{exc}; ignoring it")
            return {}

    def checkpoint(self) -> None:
        """Write the three checkpoint files for every open log (and keep the entries of
        partitions this owner has not opened yet)."""
        with self._lock:
            for tp, log in self._logs.items():
                if log.closed:
                    continue
                self._recovery[tp] = log.recovery_point
                self._hw[tp] = log.high_watermark
                self._start[tp] = log.log_start_offset
            write_checkpoint(self.checkpoint_path(RECOVERY_POINT_CHECKPOINT), self._recovery)
            write_checkpoint(self.checkpoint_path(HIGH_WATERMARK_CHECKPOINT), self._hw)
            write_checkpoint(self.checkpoint_path(LOG_START_CHECKPOINT), self._start)

    def checkpointed_partitions(self) -> list[TopicPartition]:
        """Partitions this owner held when it last wrote its checkpoints."""
        return sorted(self._recovery)

    # ------------------------------------------------------------------ logs
    def log_path(self, topic: str, partition: int) -> str:
        return os.path.join(self.data_dir, log_dir_name(topic, partition))

    def open_log(self, topic: str, partition: int, config: LogConfig | None = None,
                 *, create: bool = True) -> Log:
        """The open log of (topic, partition), opening or creating it on first use."""
        tp = (topic, partition)
        with self._lock:
            log = self._logs.get(tp)
            if log is not None and not log.closed:
                if config is not None and config != log.config:
                    log.update_config(config)
                return log
            path = self.log_path(topic, partition)
            if not create and not os.path.isdir(path):
                raise StorageError(f"no log for {topic}-{partition} in {self.data_dir}")
            existed = os.path.isdir(path)
            log = Log.open(
                path, config or self.default_config,
                recovery_point=self._recovery.get(tp) if existed else None,
                log_start_offset=self._start.get(tp, 0) if existed else 0,
                high_watermark=self._hw.get(tp, 0) if existed else 0,
                mapped_segments=self.mapped_segments,
            )
            if not existed:
                fsync_dir(self.data_dir)
            self.segment_deleter.attach(log)
            self._logs[tp] = log
            self._offline.pop(tp, None)
            return log

    def get(self, topic: str, partition: int) -> Log | None:
        return self._logs.get((topic, partition))

    @property
    def logs(self) -> dict[TopicPartition, Log]:
        return dict(self._logs)

    def __iter__(self) -> Iterator[tuple[TopicPartition, Log]]:
        return iter(list(self._logs.items()))

    def offline(self) -> dict[TopicPartition, Exception]:
        """Logs taken offline by an I/O fault found in `tick` (the owner reports them)."""
        return dict(self._offline)

    def close_log(self, topic: str, partition: int) -> None:
        """Flush and close one log (the owner stops hosting it); checkpoints keep its offsets."""
        tp = (topic, partition)
        with self._lock:
            log = self._logs.pop(tp, None)
            if log is None:
                return
            self._recovery[tp] = log.recovery_point
            self._hw[tp] = log.high_watermark
            self._start[tp] = log.log_start_offset
            log.close()
            self.checkpoint()

    def delete_log(self, topic: str, partition: int) -> bool:
        """Delete a partition's directory (rename to `.deleted`, then remove). True if it
        existed."""
        tp = (topic, partition)
        with self._lock:
            log = self._logs.pop(tp, None)
            if log is not None:
                log.close_without_flush()
            for table in (self._recovery, self._hw, self._start):
                table.pop(tp, None)
            self._offline.pop(tp, None)
            self._cleaner_seen.pop(tp, None)
            path = self.log_path(topic, partition)
            if not os.path.isdir(path):
                self.checkpoint()
                return log is not None
            doomed = f"{path}.{uuid.uuid4().hex}{DELETED_DIR_SUFFIX}"
            os.rename(path, doomed)
            fsync_dir(self.data_dir)
            # Remove before checkpointing: on a full disk the checkpoint write fails with
            # ENOSPC, and deleting the partition is what gives the space back. A crash in
            # between is harmless: open() removes `.deleted` leftovers and ignores
            # checkpoint entries of partitions without a directory.
            shutil.rmtree(doomed, ignore_errors=True)
            self.checkpoint()
            return True

    def _remove_deleted_dirs(self) -> None:
        for name in os.listdir(self.data_dir):
            if name.endswith(DELETED_DIR_SUFFIX):
                shutil.rmtree(os.path.join(self.data_dir, name), ignore_errors=True)

    # ------------------------------------------------------------------ schedule
    def tick(self, now_ms: int, max_logs: int | None = None) -> TickReport:
        """Flush by flush.ms and after a roll (Kafka flushes a rolled segment, so recovery
        after a crash scans at most the active segment), run retention and the cleaners,
        write checkpoints, as due. Flushes run on the background flusher when there is one;
        `flushed` lists those done or queued. The cleaners look at every compacted log each
        `cleaner_backoff_ms`, and at one that rolled since they last looked at the next tick.
        Segments removed `file.delete.delay.ms` ago are unlinked.

        `max_logs`: look at no more than this many logs per call, the next ones at the next
        call (a sweep over all logs then takes `sweep_slices(max_logs)` calls). An owner
        serving requests between ticks keeps each pause short this way: a pass over 3,000
        logs costs ~3.5 ms, which a request arriving meanwhile would wait for."""
        report = TickReport()
        if self._flusher is not None:
            for tp, exc in self._flusher.take_errors().items():
                self._take_offline(tp, exc, report)
        logs = list(self._logs.items())
        n = len(logs)
        if self._sweep_pos == 0 or self._sweep_pos >= n:
            # a sweep starts: retention and cleaning are due for it, or not, as of now
            self._sweep_pos = 0
            self._sweep_retention = now_ms - self._last_retention >= \
                self.retention_check_interval_ms or self._last_retention < 0
            self._sweep_clean = now_ms - self._last_clean >= self.cleaner_backoff_ms \
                or self._last_clean < 0
            if self._sweep_retention:
                self._last_retention = now_ms
            if self._sweep_clean:
                self._last_clean = now_ms
        start = self._sweep_pos
        stop = n if max_logs is None else min(n, start + max(1, max_logs))
        self._sweep_pos = 0 if stop >= n else stop
        first = self._check_cursor % n if n else 0
        # file checks per sweep stay file_checks_per_tick however many calls a sweep takes
        slices = 1 if max_logs is None else self.sweep_slices(max_logs)
        k = min(-(-self.file_checks_per_tick // slices), n)
        self._check_cursor = first + k
        for j in range(k):  # the file checks go round on their own, k logs per tick
            tp, log = logs[(first + j) % n]
            self._guarded(tp, log, report, log.check_files)
        for i in range(start, stop):
            tp, log = logs[i]
            self._guarded(tp, log, report, lambda t=tp, lg=log: self._maintain(t, lg, now_ms,
                                                                                report))
        report.removed_files = self.segment_deleter.run(now_ms)
        if now_ms - self._last_checkpoint >= self.checkpoint_interval_ms \
                or self._last_checkpoint < 0:
            self.checkpoint()
            self._last_checkpoint = now_ms
            report.checkpointed = True
        return report

    def _guarded(self, tp: TopicPartition, log: Log, report: TickReport,
                 work: Callable[[], object]) -> None:
        if log.closed:
            return
        try:
            work()
        except (StorageError, OSError) as exc:
            self._take_offline(tp, exc, report)

    def _take_offline(self, tp: TopicPartition, exc: Exception, report: TickReport) -> None:
        """An I/O fault takes this log offline (Kafka: the log dir fails); others go on."""
        report.errors[tp] = exc
        self._offline[tp] = exc
        log = self._logs.pop(tp, None)
        if log is not None:
            log.close_without_flush()

    def sweep_slices(self, max_logs: int) -> int:
        """Calls of `tick(now, max_logs)` one sweep over every log takes."""
        return max(1, -(-len(self._logs) // max(1, max_logs)))

    def _maintain(self, tp: TopicPartition, log: Log, now_ms: int, report: TickReport) -> None:
        """One log's share of a tick: flush as due, retention and cleaning as the sweep says."""
        upto: int | None = -1
        if log.flush_due(now_ms):
            upto = None
        elif log.unflushed_rolled:
            upto = log.active_segment_base
        if upto != -1:
            report.flushed.append(tp)
            if self._flusher is not None:
                self._flusher.submit(tp, log, upto)
            else:
                log.flush(upto)
        if self._sweep_retention:
            res = apply_retention(log, now_ms)
            if res.deleted_segments:
                report.deleted_segments[tp] = res.deleted_segments
        if log.config.compact_enabled and self.cleaners and (
                self._sweep_clean or self._cleaner_seen.get(tp) != log.segment_generation):
            self._cleaner_seen[tp] = log.segment_generation
            for clean in self.cleaners:
                if clean(log, now_ms):
                    report.cleaned.append(tp)

    def wait_for_flushes(self) -> None:
        """Block until the background flusher has nothing queued (tests, shutdown)."""
        if self._flusher is not None:
            self._flusher.drain()

    def close(self) -> None:
        """Close every log cleanly (flush, trim, clean-shutdown mark) and checkpoint."""
        if self._flusher is not None:
            self._flusher.stop()
        with self._lock:
            for tp, log in list(self._logs.items()):
                try:
                    log.close()
                finally:
                    self._recovery[tp] = log.recovery_point
                    self._hw[tp] = log.high_watermark
                    self._start[tp] = log.log_start_offset
            self._logs.clear()
            self.checkpoint()
        self.segment_deleter.remove_all()
