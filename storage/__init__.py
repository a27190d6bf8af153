"""qnode.storage: the on-disk partition log (RecordBatch v2 segments, indexes, recovery,
retention, compaction). The names below are what the workers and the coordinator use."""

from qnode.storage.errors import (
    ConfigError,
    CorruptRecordError,
    DiskFullError,
    InvalidRecordError,
    LogClosedError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    StorageError,
)
from qnode.storage.log import AppendResult, FetchData, Log, TimestampOffset
from qnode.storage.log_config import LogConfig
from qnode.storage.recovery import RecoveryReport
from qnode.storage.segment import SegmentMissingError

__all__ = [
    "AppendResult",
    "ConfigError",
    "CorruptRecordError",
    "DiskFullError",
    "FetchData",
    "InvalidRecordError",
    "Log",
    "LogClosedError",
    "LogConfig",
    "OffsetOutOfRangeError",
    "RecordTooLargeError",
    "RecoveryReport",
    "SegmentMissingError",
    "StorageError",
    "TimestampOffset",
]
