"""Offset checkpoint files in Kafka's text format, replaced atomically.

    0                      <- version
    2                      <- number of entries
    orders 0 1200          <- "topic partition offset"
    orders 1 877

Used for the recovery point, the high watermark and the log start offset of every partition
one owner holds. Written as tmp + fsync + rename + fsync(dir): a crash leaves the old file or
the new one, never a torn one. A damaged file raises CorruptCheckpointError naming the line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from qnode.storage.errors import StorageError

VERSION = 0
TopicPartition = tuple[str, int]


class CorruptCheckpointError(StorageError):
    """A checkpoint file that does not parse; the message names the file and the fault."""


def write_checkpoint(path: str, offsets: Mapping[TopicPartition, int]) -> None:
    lines = [str(VERSION), str(len(offsets))]
    for (topic, partition), offset in sorted(offsets.items()):
        if not topic or any(c.isspace() for c in topic):
            raise ValueError(f"topic name {topic!r} cannot go in a checkpoint")
        lines.append(f"{topic} {partition} {offset}")
    data = ("\n".join(lines) + "\n").encode()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_checkpoint(path: str) -> dict[TopicPartition, int]:
    """The entries of `path`; {} when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    lines = text.splitlines()
    try:
        version = int(lines[0])
        count = int(lines[1])
    except (IndexError, ValueError):
        raise CorruptCheckpointError(f"{path}: missing or bad version/count header") from None
    if version != VERSION:
        raise CorruptCheckpointError(f"{path}: unknown version {version}")
    body = [ln for ln in lines[2:] if ln.strip()]
    if len(body) != count:
        raise CorruptCheckpointError(f"{path}: header says {count} entries, found {len(body)}")
    out: dict[TopicPartition, int] = {}
    for n, line in enumerate(body, start=3):
        parts = line.split()
        try:
            topic, partition, offset = parts[0], int(parts[1]), int(parts[2])
            if len(parts) != 3 or partition < 0 or offset < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise CorruptCheckpointError(f"{path}: line {n} is not 'topic partition offset': "
                                         f"{line!r}") from None
        out[(topic, partition)] = offset
    return out
