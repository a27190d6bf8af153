"""Storage faults at the worker: a log it cannot open (its directory is a plain file) and a
full disk (a tiny tmpfs: real ENOSPC; needs root to mount, skipped otherwise) each answer
KAFKA_STORAGE_ERROR with a message, keep acknowledged data readable, and leave the worker
serving its other partitions; once space returns it writes again and stops cleanly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from worker_harness import Client, MetadataFeed, WorkerProcess, make_batch

from qnode.coordinator import records as rec
from qnode.storage.batch_reader import read_batches
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

# `feed` is the harness's fixture (tests/node/worker_harness.py, via conftest).


def test_unopenable_log_is_a_storage_error_and_others_keep_working(
    feed: MetadataFeed, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken-0").write_bytes(b"not a directory")
    w = WorkerProcess(feed, data).start()
    c = Client(w.endpoint)
    try:
        feed.add_topic("healthy")
        end = feed.add_topic("broken", partitions=2)
        feed.wait_applied(0, end)
        c.wait_ready("healthy", 0)
        c.wait_ready("broken", 1)
        p = c.produce("broken", 0, make_batch([b"x"]))
        assert p["error"] == ErrorCode.KAFKA_STORAGE_ERROR and "broken-0" in p["message"]
        part, _ = c.fetch("broken", 0, 0)
        assert part["error"] == ErrorCode.KAFKA_STORAGE_ERROR
        assert c.produce("broken", 1, make_batch([b"y"]))["error"] == 0
        assert c.produce("healthy", 0, make_batch([b"z"]))["error"] == 0
        r = c.call(ApiKey.API_VERSIONS, {})
        assert r.body["error"] == 0
        assert (data / "broken-0").read_bytes() == b"not a directory"  # left as it was
    finally:
        c.close()
        assert w.stop() == 0
        w.kill()


@pytest.fixture
def tiny_fs(tmpfs: Callable[[str], Path]) -> Path:
    return tmpfs("1m")


def test_disk_full_answers_storage_error_keeps_acked_data_and_recovers(
    feed: MetadataFeed, tiny_fs: Path, tmp_path: Path
) -> None:
    data = tiny_fs / "data"
    w = WorkerProcess(feed, data, log_dir=tmp_path).start()
    c = Client(w.endpoint)
    try:
        feed.add_topic("full", configs={"segment.index.bytes": "4096"})
        c.wait_ready("full", 0)
        acked: list[bytes] = []
        code = 0
        for i in range(200):  # ~1.6 MB into a 1 MB filesystem
            v = b"%04d" % i + b"x" * 8000
            p = c.produce("full", 0, make_batch([v]))
            code = p["error"]
            if code:
                break
            acked.append(v)
        assert code == ErrorCode.KAFKA_STORAGE_ERROR and acked
        assert c.call(ApiKey.API_VERSIONS, {}).body["error"] == 0  # the worker lives on
        part, got = c.fetch("full", 0, 0, max_bytes=8 << 20)
        assert part["error"] == 0 and part["high_watermark"] == len(acked)
        assert [r.value for b in read_batches(got) for r in b] == acked
        # space comes back (the topic is deleted): the worker writes again
        end = feed.append(rec.remove_topic("full"))
        feed.wait_applied(0, end)
        feed.add_topic("after", configs={"segment.index.bytes": "4096"})
        c.wait_ready("after", 0)
        assert c.produce("after", 0, make_batch([b"ok"]))["error"] == 0
    finally:
        c.close()
        assert w.stop() == 0
        w.kill()


def test_sigterm_on_a_full_disk_exits_1_with_one_clear_line(
    feed: MetadataFeed, tiny_fs: Path, tmp_path: Path
) -> None:
    w = WorkerProcess(feed, tiny_fs / "data", log_dir=tmp_path).start()
    c = Client(w.endpoint)
    try:
        feed.add_topic("full", configs={"segment.index.bytes": "4096"})
        c.wait_ready("full", 0)
        for _ in range(200):
            if c.produce("full", 0, make_batch([b"x" * 8000]))["error"]:
                break
        else:
            raise AssertionError("the 1 MB filesystem never filled up")
        assert w.stop() == 1  # checkpoints could not be written: not a clean stop
        out = w.output()
        assert "not closed cleanly" in out and "Traceback" not in out
        assert not Path("/dev/shm" + w.shm_name).exists()
    finally:
        c.close()
        w.kill()
