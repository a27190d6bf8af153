"""stamped_iov: the write vector of a group append carries each batch's new header fields
in place of the caller's bytes, and leaves the caller's buffers untouched."""

from __future__ import annotations

import struct

import pytest

from qnode.storage.write_vector import stamped_iov

_STAMP = struct.Struct(">qii")


def test_stamps_land_on_each_header_and_inputs_stay_intact() -> None:
    one = bytes(range(40))
    two = bytes(range(100, 160))  # two "batches" of 30 bytes back to back
    data = [one, bytearray(two)]
    stamps = [(0, 7, 28, 3), (40, 8, 18, 3), (70, 9, 18, 3)]
    written = b"".join(bytes(b) for b in stamped_iov(data, stamps))
    assert len(written) == 100
    assert _STAMP.unpack_from(written, 0) == (7, 28, 3)
    assert _STAMP.unpack_from(written, 40) == (8, 18, 3)
    assert _STAMP.unpack_from(written, 70) == (9, 18, 3)
    assert written[16:40] == one[16:40] and written[56:70] == two[16:30]
    assert written[86:] == two[46:]
    assert data == [bytes(range(40)), bytearray(range(100, 160))]  # not modified


def test_no_stamps_is_the_data_itself() -> None:
    data = [b"abc", b"defg"]
    assert b"".join(stamped_iov(data, [])) == b"abcdefg"


def test_a_header_across_two_buffers_is_refused() -> None:
    with pytest.raises(AssertionError, match="spans two buffers"):
        stamped_iov([b"x" * 10, b"y" * 30], [(0, 1, 2, 3)])
