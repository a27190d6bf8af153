"""The metadata store: the committed `MetadataImage`, kept in step with the quorum's log.

Writers hand records to `append`; the quorum decides when they commit; on commit the store
reads the committed records back from the log and applies them, so the image is built by
exactly the path a follower or a restart takes (one path, whatever the number of voters): on
start the image is the newest checkpoint, and the records after it are applied when the new
term's first record commits them.
Listeners (the server's parked MetadataLogFetch calls) are told of every new commit offset.
A checkpoint is written once enough record bytes accumulated since the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qnode.coordinator.image import MetadataImage
from qnode.coordinator.metadata_log import Entry, MetadataLog
from qnode.coordinator.quorum import Quorum

log = logging.getLogger(__name__)


class MetadataStore:
    """The committed metadata image of this node and the log it comes from."""

    def __init__(self, metadata_log: MetadataLog, quorum: Quorum, checkpoint_bytes: int) -> None:
        self.log = metadata_log
        self.quorum = quorum
        self.checkpoint_bytes = checkpoint_bytes
        self.image: MetadataImage = metadata_log.load_checkpoint()
        quorum.recovered(self.image.offset)
        self._listeners: list[Callable[[int], None]] = []
        quorum.on_commit(self._on_commit)

    @property
    def committed_offset(self) -> int:
        return self.image.offset

    def on_change(self, listener: Callable[[int], None]) -> None:
        """Call `listener(committed_offset)` after each commit has been applied."""
        self._listeners.append(listener)

    def append(self, records: list[dict[str, Any]]) -> int:
        """Append records atomically; the offset of the last one (committed once this returns
        on a single voter; NotControllerError when this node does not lead)."""
        _first, last = self.quorum.append(records)
        return last

    def read(self, offset: int, max_bytes: int = 1 << 20) -> list[Entry]:
        """Committed records from `offset` on (never past the commit offset)."""
        return [e for e in self.log.read(offset, max_bytes) if e.offset < self.image.offset]

    def _on_commit(self, old: int, new: int) -> None:
        applied = 0
        for entry in self.log.entries(self.image.offset):
            if entry.offset >= new:
                break
            self.image.apply(entry.record, entry.offset)
            applied += 1
        if applied > 1:  # a batch of records from before a restart, committed by a new term
            log.info("metadata: %d records committed and applied, image at %d", applied, new)
        assert self.image.offset == new, f"image at {self.image.offset}, commit at {new}"
        if self.log.bytes_since_checkpoint >= self.checkpoint_bytes:
            path = self.log.write_checkpoint(self.image, self.quorum.term)
            log.info("metadata checkpoint %s written", path.name)
        for listener in self._listeners:
            listener(new)
