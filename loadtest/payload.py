"""Record payloads of the load tests: a unique id and a send timestamp, padded to a size.

Every value a load-test producer writes starts with a 16-byte header, big-endian:

    record id (u64) = producer index << 40 | sequence      send time (u64, ns since the epoch)

so the consumers can compute end-to-end latency and the verifier can check that every
acknowledged record was consumed exactly once per group, with no help from the broker.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">QQ")
HEADER_SIZE = HEADER.size
SEQ_BITS = 40
MAX_PRODUCERS = 1 << (64 - SEQ_BITS)
MAX_SEQ = 1 << SEQ_BITS


class PayloadError(ValueError):
    """A value that is not a load-test payload (too short)."""


def make_id(producer_index: int, seq: int) -> int:
    """The record id of the `seq`-th record of producer `producer_index`."""
    assert 0 <= producer_index < MAX_PRODUCERS, producer_index
    assert 0 <= seq < MAX_SEQ, seq
    return (producer_index << SEQ_BITS) | seq


def split_id(record_id: int) -> tuple[int, int]:
    """(producer index, sequence) of a record id."""
    return record_id >> SEQ_BITS, record_id & (MAX_SEQ - 1)


class PayloadFactory:
    """Builds payloads of one fixed size; the padding is shared, so a payload costs one join."""

    def __init__(self, size: int) -> None:
        if size < HEADER_SIZE:
            raise PayloadError(f"record size {size} is below the {HEADER_SIZE}-byte payload header")
        self.size = size
        self._padding = b"\x00" * (size - HEADER_SIZE)

    def build(self, record_id: int, sent_ns: int) -> bytes:
        return HEADER.pack(record_id, sent_ns) + self._padding


def decode(value: bytes | memoryview) -> tuple[int, int]:
    """(record id, send time ns) of a payload."""
    if len(value) < HEADER_SIZE:
        raise PayloadError(f"value of {len(value)} bytes is not a load-test payload")
    return HEADER.unpack_from(value, 0)
