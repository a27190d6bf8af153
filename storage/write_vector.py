"""The write vector of a group append: the batches as the caller gave them, with each batch's
new header fields (base offset, length, leader epoch) as their own 16-byte entries in place of
the caller's bytes, so one pwritev stores them stamped and the caller's buffers are never
modified (a zmq frame's memory is read-only anyway)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

STAMP = struct.Struct(">qii")  # baseOffset, batchLength, partitionLeaderEpoch: bytes 0..16
# (position in the appended buffer, base offset, batchLength, leader epoch) to stamp
Stamp = tuple[int, int, int, int]
Buffer = bytes | bytearray | memoryview


def stamped_iov(data: Sequence[Buffer], stamps: Sequence[Stamp]) -> list[Buffer]:
    """`data` as a write vector with each stamp's 16 header bytes (base offset, length,
    leader epoch) in place of the caller's: the caller's buffers are never modified."""
    if not stamps:
        return list(data)
    out: list[Buffer] = []
    pos = 0
    si = 0
    ns = len(stamps)
    for b in data:
        mv = b if isinstance(b, memoryview) else memoryview(b)
        blen = len(mv)
        off = 0
        while si < ns and stamps[si][0] < pos + blen:
            at, base, length, epoch = stamps[si]
            at -= pos
            assert off <= at and at + STAMP.size <= blen, "a batch header spans two buffers"
            if at > off:
                out.append(mv[off:at])
            out.append(STAMP.pack(base, length, epoch))
            off = at + STAMP.size
            si += 1
        if off < blen:
            out.append(mv[off:])
        pos += blen
    assert si == ns, "a stamp past the data"
    return out
