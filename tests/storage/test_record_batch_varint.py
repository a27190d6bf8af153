"""Zigzag varints: known encodings from the protobuf spec, tables agree with the functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnode.storage import record_batch
from qnode.storage.errors import CorruptRecordError
from qnode.storage.varint import (
    TABLE_SIZE,
    UNZIGZAG_1,
    UNZIGZAG_2,
    ZIGZAG_BYTES,
    varint_size,
    zigzag_decode,
    zigzag_encode,
)

KNOWN = [  # (value, encoding): zigzag maps 0,-1,1,-2,... to 0,1,2,3,...
    (0, "00"), (-1, "01"), (1, "02"), (-2, "03"), (63, "7e"), (-64, "7f"), (64, "8001"),
    (100, "c801"), (-8193, "818001"), (2**31 - 1, "feffffff0f"), (-(2**31), "ffffffff0f"),
    (2**63 - 1, "feffffffffffffffff01"), (-(2**63), "ffffffffffffffffff01"),
]


@pytest.mark.parametrize(("value", "hexenc"), KNOWN)
def test_known_encodings(value: int, hexenc: str) -> None:
    enc = bytes.fromhex(hexenc)
    assert zigzag_encode(value) == enc
    assert zigzag_decode(enc, 0) == (value, len(enc))
    assert zigzag_decode(b"\xaa" + enc + b"\xbb", 1) == (value, len(enc) + 1)
    assert varint_size(value) == len(enc)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_roundtrip(value: int) -> None:
    enc = zigzag_encode(value)
    assert zigzag_decode(enc, 0) == (value, len(enc)) and varint_size(value) == len(enc)


def test_out_of_range() -> None:
    with pytest.raises(ValueError):
        zigzag_encode(2**63)


def test_tables_agree_with_functions() -> None:
    assert all(ZIGZAG_BYTES[i] == zigzag_encode(i) for i in range(TABLE_SIZE))
    assert all(UNZIGZAG_1[b] == zigzag_decode(bytes([b]), 0)[0] for b in range(0x80))
    for b0 in range(0x80, 0x100):
        for b1 in range(0x80):
            assert UNZIGZAG_2[b0 | b1 << 8] == zigzag_decode(bytes([b0, b1]), 0)[0]


def test_truncated_and_overlong_are_corrupt() -> None:
    with pytest.raises(CorruptRecordError):
        zigzag_decode(b"\x80\x80", 0)
    with pytest.raises(CorruptRecordError):
        zigzag_decode(b"", 0)
    with pytest.raises(CorruptRecordError):
        zigzag_decode(b"\x80" * 5 + b"\x01", 0, max_bytes=5)


def test_record_batch_reexports_builder_and_reader() -> None:
    from qnode.storage.batch_builder import BatchBuilder
    from qnode.storage.batch_reader import iter_records

    assert record_batch.BatchBuilder is BatchBuilder
    assert record_batch.iter_records is iter_records
    with pytest.raises(AttributeError):
        record_batch.NoSuchName  # noqa: B018
