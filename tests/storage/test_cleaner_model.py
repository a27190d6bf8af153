"""Property: compacting any key/value sequence leaves exactly the last write per key."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.cleaner import Cleaner, CleanerConfig
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.offset_map import SLOT_BYTES
from qnode.storage.record_batch import validate_batches

WRITE_TS = 1000
RETENTION = 5000

records_st = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f", b"g"]),
                  st.binary(min_size=1, max_size=6)),
        st.one_of(st.none(), st.binary(max_size=40)),
    ),
    min_size=1, max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st,
       per_batch=st.integers(1, 5),
       segment_bytes=st.sampled_from([300, 700, 2000, 100_000]),
       dedupe_slots=st.sampled_from([8, 16, 64, 4096]),
       codec=st.sampled_from(["none", "lz4", "gzip", "zstd"]),
       drop_tombstones=st.booleans())
def test_compaction_equals_last_write_per_key(records, per_batch, segment_bytes, dedupe_slots,
                                              codec, drop_tombstones):
    cfg = LogConfig.from_topic_config({
        "cleanup.policy": "compact", "segment.bytes": str(segment_bytes),
        "index.interval.bytes": "128", "segment.index.bytes": "4096",
        "delete.retention.ms": str(RETENTION)})
    now = WRITE_TS + (RETENTION if drop_tombstones else RETENTION - 1)
    with tempfile.TemporaryDirectory() as tmp:
        log = Log.open(f"{tmp}/t-0", cfg)
        try:
            for i in range(0, len(records), per_batch):
                b = BatchBuilder(codec)
                for key, value in records[i:i + per_batch]:
                    b.append(key, value, timestamp_ms=WRITE_TS)
                log.append(b.build(), leader_epoch=0)
            log.roll()
            log.high_watermark = log.log_end_offset
            cleaner = Cleaner(CleanerConfig(dedupe_buffer_size=SLOT_BYTES * dedupe_slots))
            cleaner.clean(log, now)
            data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
            assert log.log_end_offset == len(records)
        finally:
            log.close()
    validate_batches(data, producer_batches=False)
    got = [(r.offset, r.key, r.value) for r in iter_records(data)]
    last: dict[bytes, tuple[int, bytes, bytes | None]] = {}
    for offset, (key, value) in enumerate(records):
        if key is not None:
            last[key] = (offset, key, value)
    expected = sorted(r for r in last.values() if not (drop_tombstones and r[2] is None))
    assert got == expected


kv_st = st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]),
                  st.one_of(st.none(), st.binary(max_size=8)))
ops_st = st.lists(st.tuples(st.sampled_from(["plain", "commit", "abort"]),
                            st.lists(kv_st, min_size=1, max_size=3)),
                  min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st, dedupe_slots=st.sampled_from([8, 4096]), drop_tombstones=st.booleans())
def test_compaction_with_transactions_equals_last_committed_write_per_key(ops, dedupe_slots,
                                                                          drop_tombstones):
    from qnode.storage.batch_builder import ControlType, build_control_batch

    cfg = LogConfig.from_topic_config({
        "cleanup.policy": "compact", "segment.bytes": "400", "segment.index.bytes": "4096",
        "delete.retention.ms": str(RETENTION)})
    now = WRITE_TS + (RETENTION if drop_tombstones else RETENTION - 1)
    visible: list[tuple[int, bytes, bytes | None]] = []  # what read_committed ever sees
    with tempfile.TemporaryDirectory() as tmp:
        log = Log.open(f"{tmp}/t-0", cfg)
        try:
            pending: list[tuple[int, bool]] = []  # (pid, commit) markers still to write
            for i, (kind, recs) in enumerate(ops):
                pid = 1000 + i
                b = BatchBuilder(producer_id=pid if kind != "plain" else -1,
                                 producer_epoch=0 if kind != "plain" else -1,
                                 base_sequence=0 if kind != "plain" else -1,
                                 transactional=kind != "plain")
                for key, value in recs:
                    b.append(key, value, timestamp_ms=WRITE_TS)
                base = log.append(b.build(), 0).base_offset
                if kind != "abort":
                    visible += [(base + j, k, v) for j, (k, v) in enumerate(recs)]
                for p, commit in pending:  # markers land one operation later
                    kind_ = ControlType.COMMIT if commit else ControlType.ABORT
                    log.append(build_control_batch(kind_, p, 0, 1, timestamp_ms=WRITE_TS), 0)
                pending = [(pid, kind == "commit")] if kind != "plain" else []
            for p, commit in pending:
                kind_ = ControlType.COMMIT if commit else ControlType.ABORT
                log.append(build_control_batch(kind_, p, 0, 1, timestamp_ms=WRITE_TS), 0)
            log.roll()
            log.high_watermark = log.log_end_offset
            Cleaner(CleanerConfig(dedupe_buffer_size=SLOT_BYTES * dedupe_slots)).clean(log, now)
            data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
        finally:
            log.close()
    validate_batches(data, producer_batches=False)
    got = sorted((r.offset, r.key, r.value) for r in iter_records(data))
    last: dict[bytes, tuple[int, bytes, bytes | None]] = {}
    for rec in sorted(visible):
        last[rec[1]] = rec
    expected = sorted(r for r in last.values() if not (drop_tombstones and r[2] is None))
    assert got == expected
