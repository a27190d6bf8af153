"""Partition offsets of this node's workers, read from their shared-memory tables.

Metadata with `include_offsets` answers log start, HW and LEO without asking any worker: each
worker publishes its partitions in a POSIX shm table (node/shm_table.py). Readers are opened
lazily and re-opened when the worker was replaced (a restart creates a new table under the
same name); a table that does not exist yet (worker still starting) gives no offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qnode.node.shm_table import PartitionState, ShmTableError, ShmTableReader, shm_name


class OffsetsView:
    """Reads partition state from the shm tables of one node's workers."""

    def __init__(self, node_id: int, data_dir: Path) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self._readers: dict[int, ShmTableReader] = {}
        self._checked: set[int] | None = None  # workers checked in the current round

    @contextmanager
    def round(self) -> Iterator[None]:
        """Answer one request: inside, each worker's table is checked for replacement once,
        not once per partition (a stat per partition is most of the cost)."""
        self._checked = set()
        try:
            yield
        finally:
            self._checked = None

    def _reader(self, worker_id: int) -> ShmTableReader | None:
        reader = self._readers.get(worker_id)
        if self._checked is not None:
            if worker_id in self._checked:
                return reader
            self._checked.add(worker_id)
        if reader is not None and reader.is_stale():
            reader.close()
            del self._readers[worker_id]
            reader = None
        if reader is None:
            try:
                reader = ShmTableReader(shm_name(self.node_id, str(self.data_dir), worker_id))
            except (ShmTableError, OSError):
                return None
            self._readers[worker_id] = reader
        return reader

    def get(self, worker_id: int, topic: str, partition: int) -> PartitionState | None:
        reader = self._reader(worker_id)
        if reader is None:
            return None
        try:
            return reader.get(topic, partition)
        except ShmTableError:
            return None

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
