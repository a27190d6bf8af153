"""The metadata log on disk: `<data_dir>/__cluster_metadata-0/`, records plus snapshots.

Records are appended through the storage `Log` as RecordBatch v2, one batch per atomic group
of records (a topic and its partitions land together or not at all), each record's value the
msgpack of a metadata record; the batch's partition leader epoch holds the quorum term.
Every append is flushed before it counts: metadata is tiny and must never be lost.

Snapshots are KRaft-style checkpoint files `<20-digit end offset>-<10-digit term>.checkpoint`
(named apart from the storage engine's producer-state `.snapshot` files, which live in
partition directories too): a CRC-32C, then the msgpack of the whole `MetadataImage` at that
offset.
After a checkpoint the log is trimmed up to the previous one, so a damaged newest checkpoint
still leaves an older one plus the records after it. On start the newest valid checkpoint is
loaded; the records after it are applied once the quorum has committed them.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from qnode.coordinator import records as rec
from qnode.coordinator.image import MetadataImage
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import read_batches
from qnode.storage.checksum import crc32c
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig

log = logging.getLogger(__name__)

DIR_NAME = "__cluster_metadata-0"
_CHECKPOINT_RE = re.compile(r"^(\d{20})-(\d{10})\.checkpoint$")
_CRC = struct.Struct(">I")
_READ_CHUNK = 1 << 20
MAX_BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One committed metadata record with its log position."""

    offset: int
    term: int
    record: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        """The record as MetadataLogFetch serves it: the record plus offset and term."""
        return {**self.record, "offset": self.offset, "term": self.term}


class MetadataLog:
    """Append, read, checkpoint and replay the metadata log of one node."""

    def __init__(self, directory: Path, segment_bytes: int = 8 << 20) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        config = LogConfig.from_topic_config(
            {
                "segment.bytes": str(segment_bytes),
                "cleanup.policy": "delete",
                "retention.ms": "-1",
                "retention.bytes": "-1",
                # One batch holds a whole change: a topic of 100,000 partitions is ~13 MB.
                "max.message.bytes": str(MAX_BATCH_BYTES),
            }
        )
        # The log start is where `_trim` left it: the older of the two newest checkpoints.
        cps = self.checkpoints()
        start = cps[-2][0] if len(cps) >= 2 else 0
        self._log = Log.open(directory, config, log_start_offset=start)
        # The storage HW bounds deletes; the quorum, not the HW, decides what is committed.
        self._log.high_watermark = self._log.log_end_offset
        self.last_term = self._scan_last_term()
        self.bytes_since_checkpoint = 0

    # ---- positions ---------------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        return self._log.log_start_offset

    @property
    def end_offset(self) -> int:
        return self._log.log_end_offset

    # ---- records -------------------------------------------------------------------------

    def append(self, records: list[dict[str, Any]], term: int) -> tuple[int, int]:
        """Write `records` as one batch stamped with `term`, durably; (first, last) offset."""
        assert records, "an empty metadata append is a bug"
        assert term >= self.last_term, f"term went backwards: {term} < {self.last_term}"
        builder = BatchBuilder(partition_leader_epoch=term)
        for r in records:
            builder.append(None, rec.encode(r))
        data = builder.build()
        result = self._log.append(data, term)
        self._log.flush()
        self._log.high_watermark = self._log.log_end_offset
        self.last_term = term
        self.bytes_since_checkpoint += len(data)
        return result.base_offset, result.last_offset

    def read(self, offset: int, max_bytes: int = _READ_CHUNK) -> list[Entry]:
        """Committed records from `offset` (≥ start_offset) on, about `max_bytes` at most."""
        if offset >= self.end_offset:
            return []
        fetched = self._log.read(offset, max_bytes)
        return [e for e in self._decode(fetched.slices) if e.offset >= offset]

    def entries(self, offset: int) -> Iterator[Entry]:
        """Every record from `offset` to the end of the log (replay)."""
        while offset < self.end_offset:
            chunk = self.read(offset)
            if not chunk:
                raise AssertionError(f"metadata log read at {offset} returned nothing")
            yield from chunk
            offset = chunk[-1].offset + 1

    @staticmethod
    def _decode(slices: list[memoryview]) -> Iterator[Entry]:
        buf = b"".join(slices)
        for batch in read_batches(buf):
            term = batch.header.leader_epoch
            for r in batch.records(verify=True):
                if r.value is None:
                    raise rec.BadRecordError(f"metadata record at offset {r.offset} has no value")
                yield Entry(r.offset, term, rec.decode(r.value))

    def _scan_last_term(self) -> int:
        last = 0
        offset = self.start_offset
        if offset < self.end_offset:
            for entry in self.entries(offset):
                last = entry.term
        return max(last, 0)

    # ---- checkpoints ---------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, int, Path]]:
        """(end offset, term, path) of every checkpoint file, oldest first."""
        found = []
        for p in self.directory.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), p))
        return sorted(found)

    def write_checkpoint(self, image: MetadataImage, term: int) -> Path:
        """Persist `image` (which reflects every record below `image.offset`) atomically."""
        assert image.offset <= self.end_offset, "a checkpoint past the end of the log"
        payload = msgpack.packb(image.to_dict(), use_bin_type=True)
        path = self.directory / f"{image.offset:020d}-{term:010d}.checkpoint"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(_CRC.pack(crc32c(payload)) + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self.bytes_since_checkpoint = 0
        self._trim()
        return path

    def _trim(self) -> None:
        """Keep the two newest checkpoints; drop older ones and the records before them."""
        cps = self.checkpoints()
        for _off, _term, p in cps[:-2]:
            p.unlink(missing_ok=True)
        if len(cps) >= 2:
            keep_from = cps[-2][0]
            if keep_from > self.start_offset:
                self._log.delete_records_before(keep_from)

    def load_checkpoint(self) -> MetadataImage:
        """The image of the newest valid checkpoint (empty if none): the records after it are
        applied as the quorum commits them (`MetadataStore`), on start-up as ever after."""
        image = None
        for off, _term, path in reversed(self.checkpoints()):
            if off < self.start_offset and off != self.end_offset:
                continue  # records after it were trimmed: it cannot be completed
            try:
                image = _read_checkpoint(path)
                break
            except ValueError as exc:
                log.error(
                    "metadata checkpoint %s is damaged (%s); trying an older one", path.name, exc
                )
        if image is None:
            if self.start_offset > 0:
                raise RuntimeError(
                    f"metadata log {self.directory} starts at {self.start_offset} but no valid "
                    "checkpoint covers the records before it"
                )
            image = MetadataImage()
        if image.offset > self.end_offset:
            # The log lost records the checkpoint holds (a torn tail cut by recovery): the
            # checkpoint wins, and the log continues after it so offsets are never reused.
            log.error(
                "metadata log ends at %d, before its checkpoint at %d: restarting the "
                "log at the checkpoint",
                self.end_offset,
                image.offset,
            )
            self._log.truncate_fully_and_start_at(image.offset)
            self._log.high_watermark = self._log.log_end_offset
        return image

    def close(self) -> None:
        self._log.close()


def _read_checkpoint(path: Path) -> MetadataImage:
    data = path.read_bytes()
    if len(data) < _CRC.size:
        raise ValueError("checkpoint too short")
    (crc,) = _CRC.unpack_from(data)
    payload = data[_CRC.size :]
    if crc32c(payload) != crc:
        raise ValueError("checkpoint CRC-32C mismatch")
    try:
        return MetadataImage.from_dict(msgpack.unpackb(payload, raw=False))
    except Exception as exc:  # a CRC-valid but malformed checkpoint: a bug or another version
        raise ValueError(f"checkpoint content unreadable: {exc}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
