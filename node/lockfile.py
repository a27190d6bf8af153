"""`<data_dir>/.lock`: one node per data directory.

An exclusive `flock` on the file, taken by the supervisor before anything touches the data
directory. The lock belongs to the open file description, so the supervisor hands the fd to
its children: the lock stays held while any process of the node is alive (a supervisor killed
with -9 does not let a second node in while its workers are still flushing). The file holds
the supervisor's pid, for the error message only; it is never unlinked (unlinking a lock file
races with a second node opening it).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class DataDirLockedError(Exception):
    """Another node holds the data directory."""


class DataDirLock:
    """The exclusive lock of one data directory, held from `acquire` to `release`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirLockedError (never blocks)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"data dir {self.data_dir} is in use by another qnode node (pid {holder}); "
                f"stop it first or use another --data-dir (lock: {self.path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            # Close, not LOCK_UN: a child still holding the shared description keeps the lock.
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
