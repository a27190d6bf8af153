"""Errors raised by the storage engine.

Each is specific enough that the worker can map it to one wire error code and a message
a user can act on; none of them leaves a log in a state that loses acknowledged data.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage error."""


class CorruptRecordError(StorageError):
    """A batch fails its length, magic or CRC-32C check (wire: CORRUPT_MESSAGE)."""


class InvalidRecordError(StorageError):
    """A well-formed batch the log must refuse: bad counts, offsets backwards (INVALID_RECORD)."""


class RecordTooLargeError(StorageError):
    """A batch larger than `max.message.bytes` (MESSAGE_TOO_LARGE)."""


class OffsetOutOfRangeError(StorageError):
    """A read below the log start or past the log end (OFFSET_OUT_OF_RANGE)."""


class LogClosedError(StorageError):
    """An operation on a log that was closed or deleted."""


class DiskFullError(StorageError):
    """ENOSPC while appending or rolling; the log is left as it was before the call."""


class ConfigError(StorageError, ValueError):
    """A config key or value that is not allowed; the message names key, value, what is allowed."""
