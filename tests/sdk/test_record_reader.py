"""The consumer's fused decoder returns exactly what storage's reference decoder returns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.sdk.record_reader import decode_batch
from qnode.sdk.record_writer import encode_headers_section, encode_record
from qnode.storage.errors import CorruptRecordError
from qnode.storage.records import decode_records

record_st = st.tuples(
    st.one_of(st.none(), st.binary(max_size=200)),
    st.one_of(st.none(), st.binary(max_size=20000)),
    st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))),
             max_size=2),
    st.integers(min_value=-100_000, max_value=100_000),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=40),
       st.integers(min_value=0, max_value=45), st.integers(min_value=1, max_value=5))
def test_same_records_as_the_reference(records: list, skip: int, gap: int) -> None:
    base_offset, base_ts = 1000, 1_700_000_000_000
    data = b"".join(encode_record(i * gap, tsd, k, v, encode_headers_section(h))
                    for i, (k, v, h, tsd) in enumerate(records))
    ref = decode_records(data, len(records), base_offset, base_ts)
    min_offset = base_offset + skip
    got = decode_batch(data, len(records), base_offset, base_ts, "t", 3, min_offset)
    want = [t for t in ref if t[0] >= min_offset]
    assert [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in got] == \
        [(o, ts, k, v, tuple(h)) for (o, ts, k, v, h) in want]
    assert all(r.topic == "t" and r.partition == 3 for r in got)


def test_log_append_time_overrides_timestamps() -> None:
    data = b"".join(encode_record(i, i, None, b"v") for i in range(3))
    got = decode_batch(data, 3, 0, 100, "t", 0, 0, append_time=999)
    assert [r.timestamp for r in got] == [999, 999, 999]


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_damage_is_a_corrupt_record_error(cut: int) -> None:
    data = b"".join(encode_record(i, 0, None, b"value-%d" % i) for i in range(5))
    with pytest.raises(CorruptRecordError):
        decode_batch(data[:-cut], 5, 0, 0, "t", 0, 0)
    with pytest.raises(CorruptRecordError):
        decode_batch(data + b"\x00", 5, 0, 0, "t", 0, 0)
