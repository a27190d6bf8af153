"""Smoke test of the broker benchmark (`qnode bench produce --prebuilt`) against a real node:
it must run, count only acknowledged batches, and measure the raw baseline. Figures are
printed by the bench itself, never asserted here."""

from __future__ import annotations

import time

from worker_harness import Client

from qnode.loadtest.bench_broker import BenchError, prebuilt_batch, run_prebuilt
from qnode.storage.batch_reader import read_batches
from qnode.transport.api import ApiKey


def test_prebuilt_batch_is_valid_and_about_the_size_asked() -> None:
    batch, records = prebuilt_batch(16384, 100)
    assert 15000 < len(batch) <= 16384
    (b,) = list(read_batches(batch))
    assert b.record_count == records and all(len(r.value) == 100 for r in b)


def test_prebuilt_bench_runs_against_a_node(node) -> None:
    seen: list[int] = []
    res = run_prebuilt(
        node.bootstrap,
        "bench-smoke",
        partitions=3,
        seconds=0.6,
        rounds=1,
        per_request=2,
        progress=lambda b, n: seen.append(n),
    )
    assert res.batches > 0 and res.bytes == res.batches * res.batch_bytes
    assert res.raw_bytes > 0 and res.ratio > 0 and "broker / raw" in res.summary()
    boot = Client(node.bootstrap)
    try:
        md = boot.call(ApiKey.METADATA, {"topics": ["bench-smoke"], "include_offsets": True})
        parts = md.body["topics"][0]["partitions"]
        total = sum(p["high_watermark"] for p in parts)
        _, records = prebuilt_batch()
        # every acknowledged batch is in the log (warm-up batches too)
        assert total >= res.batches * records and total % records == 0
    finally:
        boot.close()


def test_prebuilt_bench_reports_a_refusal(node) -> None:
    try:
        run_prebuilt(node.bootstrap, "bad topic name!", partitions=1, seconds=0.2, rounds=1)
    except BenchError as exc:
        assert "bad topic name!" in str(exc)
    else:
        raise AssertionError("an invalid topic name must stop the bench with a clear error")


def test_prebuilt_progress_line_says_bytes_not_records() -> None:
    from qnode.node.cli_bench import Progress

    p = Progress("prebuilt", 0, unit="bytes")
    first = p.line(50_000_000, p.start + 1.0)
    assert "50 MB acknowledged" in first and "50 MB/s" in first and "records" not in first
    # the rate is the last interval's: a pause (raw baseline rounds) does not drag it down
    assert "100 MB/s" in p.line(150_000_000, p.start + 2.0)
    counted = Progress("produce", 1000).line(500, time.monotonic() + 1.0)
    assert "500/1,000 (50 %)" in counted and "records/s" in counted
