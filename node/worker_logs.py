"""The worker's view of its logs: open/create, re-configure, delete, tick, close.

A thin adapter over the storage engine's `LogManager` (docs/internals.md §2), so the partition
server speaks one small interface whatever the manager's method names; until a LogManager is
importable it manages `storage.log.Log`s directly (open, flush on `flush.ms`, close cleanly).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig

log = logging.getLogger(__name__)


def log_dir(data_dir: str, topic: str, partition: int) -> str:
    return os.path.join(data_dir, f"{topic}-{partition}")


class WorkerLogs:
    """The logs of one worker, keyed by (topic, partition)."""

    def __init__(self, data_dir: str, owner: str) -> None:
        self.data_dir = data_dir
        self.owner = owner
        self.logs: dict[tuple[str, int], Log] = {}
        os.makedirs(data_dir, exist_ok=True)

    def get_or_create(self, topic: str, partition: int, config: LogConfig) -> Log:
        key = (topic, partition)
        lg = self.logs.get(key)
        if lg is None:
            lg = Log.open(log_dir(self.data_dir, topic, partition), config)
            self.logs[key] = lg
        return lg

    def reconfigure(self, topic: str, partition: int, config: LogConfig) -> None:
        lg = self.logs.get((topic, partition))
        if lg is not None:
            lg.update_config(config)

    def close_log(self, topic: str, partition: int) -> None:
        lg = self.logs.pop((topic, partition), None)
        if lg is not None:
            lg.close()

    def delete(self, topic: str, partition: int) -> None:
        lg = self.logs.pop((topic, partition), None)
        if lg is not None:
            lg.close_without_flush()
        shutil.rmtree(log_dir(self.data_dir, topic, partition), ignore_errors=True)

    def tick(self, now_ms: int) -> None:
        for key, lg in list(self.logs.items()):
            try:
                lg.maybe_flush(now_ms)
            except Exception as exc:
                log.error("flush of %s-%d failed: %s", *key, exc)

    def close(self) -> None:
        errors: list[Any] = []
        for key, lg in list(self.logs.items()):
            try:
                lg.close()
            except Exception as exc:  # close the others regardless
                errors.append((key, exc))
        self.logs.clear()
        for key, exc in errors:
            log.error("close of %s-%d failed: %s", key[0], key[1], exc)
