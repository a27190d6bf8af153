"""A log the worker cannot open (here: its directory is a plain file) answers
KAFKA_STORAGE_ERROR with a message, and the worker keeps serving its other partitions."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))
from worker_harness import Client, MetadataFeed, WorkerProcess, make_batch  # noqa: E402

from qnode.transport.api import ApiKey  # noqa: E402
from qnode.transport.errors import ErrorCode  # noqa: E402


@pytest.fixture
def feed() -> Iterator[MetadataFeed]:
    f = MetadataFeed()
    yield f
    f.close()


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
