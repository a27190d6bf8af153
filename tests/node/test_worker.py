"""The worker as a real child process: produce/fetch/list-offsets/delete-records, long-poll,
errors, metadata-driven placement, clean SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import Client, MetadataFeed, WorkerProcess, fetch_reply, make_batch

from qnode.coordinator import records as rec
from qnode.node.shm_table import ShmTableReader
from qnode.storage.batch_builder import BatchBuilder, ControlType, build_control_batch
from qnode.storage.batch_reader import read_batches
from qnode.transport.api import ApiKey
from qnode.transport.doorbell import DoorbellReceiver, pack_datagram, worker_address
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import Response, decode_response, encode_request

# `feed` and `worker` are the harness's fixtures (worker_harness.py, loaded by conftest).


@pytest.fixture
def client(worker: WorkerProcess) -> Iterator[Client]:
    c = Client(worker.endpoint)
    yield c
    c.close()


@pytest.fixture
def receiver() -> Iterator[DoorbellReceiver]:
    """A doorbell, as a same-host consumer or producer binds one."""
    r = DoorbellReceiver()
    yield r
    r.close()


@pytest.fixture
def consumer(worker: WorkerProcess) -> Iterator[Client]:
    """A second client, for the fetch side of a test whose `client` produces."""
    c = Client(worker.endpoint)
    yield c
    c.close()


def _values(data: bytes, start: int = 0) -> list[bytes]:
    return [r.value for b in read_batches(data) for r in b if r.offset >= start]


def test_produce_fetch_round_trip_and_shm(
    feed: MetadataFeed, worker: WorkerProcess, client: Client
) -> None:
    feed.add_topic("orders", partitions=2)
    client.wait_ready("orders", 1)
    p = client.produce("orders", 1, make_batch([b"a", b"b", b"c"]))
    assert p["error"] == 0 and p["base_offset"] == 0 and p["log_append_time"] == -1
    p = client.produce("orders", 1, make_batch([b"d"]))
    assert p["base_offset"] == 3
    part, data = client.fetch("orders", 1, 0)
    assert part["error"] == 0 and part["high_watermark"] == 4 and part["log_start_offset"] == 0
    assert _values(data) == [b"a", b"b", b"c", b"d"]
    assert [b.base_offset for b in read_batches(data)] == [0, 3]
    part, data = client.fetch("orders", 1, 4)
    assert part["error"] == 0 and data == b""
    with ShmTableReader(worker.shm_name) as shm:
        st = shm.get("orders", 1)
        assert st is not None and (st.log_end_offset, st.high_watermark) == (4, 4)
        assert shm.get("orders", 0).log_end_offset == 0


def test_acks_zero_gets_no_response_but_is_appended(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    body = {"acks": 0, "topics": [{"name": "t", "partitions": [{"partition": 0, "frame": 0}]}]}
    client.send(ApiKey.PRODUCE, body, [make_batch([b"x"])])
    part, data = client.fetch("t", 0, 0, max_wait_ms=2000)
    assert _values(data) == [b"x"]  # the fetch answered, the produce did not


def test_long_poll_wakes_on_append(
    feed: MetadataFeed, client: Client, consumer: Client
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    t0 = time.monotonic()
    consumer.send(ApiKey.FETCH, consumer.fetch_body("t", 0, 0, max_wait_ms=5000))
    time.sleep(0.2)
    assert not consumer.sock.poll(0)  # parked: nothing to return yet
    client.produce("t", 0, make_batch([b"wake"]))
    resp = consumer.recv(timeout=5)
    elapsed = time.monotonic() - t0
    part = resp.body["topics"][0]["partitions"][0]
    assert part["error"] == 0
    assert _values(b"".join(bytes(resp.data[k].buffer) for k in part["frames"])) == [b"wake"]
    assert elapsed < 2.0, f"woke after {elapsed:.3f}s, max wait was 5s"


def test_long_poll_expires_with_empty_answer(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    t0 = time.monotonic()
    part, data = client.fetch("t", 0, 0, max_wait_ms=300)
    elapsed = time.monotonic() - t0
    assert part["error"] == 0 and data == b"" and 0.25 <= elapsed < 3


def test_min_bytes_holds_until_enough(
    feed: MetadataFeed, worker: WorkerProcess, client: Client
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    consumer = Client(worker.endpoint)
    try:
        consumer.send(ApiKey.FETCH, consumer.fetch_body("t", 0, 0, max_wait_ms=5000, min_bytes=300))
        client.produce("t", 0, make_batch([b"x" * 10]))
        assert not consumer.sock.poll(300)  # < 300 bytes so far
        client.produce("t", 0, make_batch([b"y" * 400]))
        resp = consumer.recv(timeout=5)
        part = resp.body["topics"][0]["partitions"][0]
        assert len(part["frames"]) >= 1
        data = b"".join(bytes(resp.data[k].buffer) for k in part["frames"])
        assert _values(data) == [b"x" * 10, b"y" * 400]
    finally:
        consumer.close()


def test_errors_per_partition(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("mine", worker=0)
    feed.add_topic("elsewhere", worker=1)
    client.wait_ready("mine", 0)
    assert (
        client.produce("nope", 0, make_batch([b"x"]))["error"]
        == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    assert (
        client.produce("mine", 5, make_batch([b"x"]))["error"]
        == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    assert (
        client.produce("elsewhere", 0, make_batch([b"x"]))["error"]
        == ErrorCode.NOT_LEADER_OR_FOLLOWER
    )
    bad = bytearray(make_batch([b"payload"]))
    bad[-1] ^= 0xFF  # CRC no longer matches
    p = client.produce("mine", 0, bytes(bad))
    assert p["error"] == ErrorCode.CORRUPT_MESSAGE and p["message"]
    assert client.produce("mine", 0, b"\x00" * 7)["error"] == ErrorCode.CORRUPT_MESSAGE
    part, _ = client.fetch("mine", 0, 99)
    assert part["error"] == ErrorCode.OFFSET_OUT_OF_RANGE
    part, _ = client.fetch("nope", 0, 0, max_wait_ms=5000)  # errors are never parked
    assert part["error"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    body = {"acks": 1, "topics": [{"name": "mine", "partitions": [{"partition": 0, "frame": 3}]}]}
    r = client.call(ApiKey.PRODUCE, body, [make_batch([b"x"])])
    assert r.body["topics"][0]["partitions"][0]["error"] == ErrorCode.INVALID_REQUEST
    # a transaction marker from a client (Kafka: only the transaction coordinator writes them)
    p = client.produce("mine", 0, build_control_batch(ControlType.ABORT, 7, 0, 0))
    assert p["error"] == ErrorCode.INVALID_RECORD and "control batch" in p["message"]
    tb = BatchBuilder(producer_id=7, producer_epoch=0, base_sequence=0, transactional=True)
    tb.append(None, b"in a transaction")
    txn = tb.build()
    p = client.produce("mine", 0, txn)
    assert p["error"] == ErrorCode.INVALID_TXN_STATE and "transactions" in p["message"]
    # nothing bad was appended
    part, data = client.fetch("mine", 0, 0)
    assert part["high_watermark"] == 0 and data == b""


def test_message_too_large(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("small", configs={"max.message.bytes": "1000"})
    client.wait_ready("small", 0)
    p = client.produce("small", 0, make_batch([b"z" * 2000]))
    assert p["error"] == ErrorCode.MESSAGE_TOO_LARGE
    assert client.produce("small", 0, make_batch([b"z" * 10]))["error"] == 0


def test_list_offsets_and_delete_records(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    b = make_batch([b"a", b"b"])
    client.produce("t", 0, b)
    client.produce("t", 0, make_batch([b"c"]))

    def list_offset(ts: int) -> dict:
        body = {"topics": [{"name": "t", "partitions": [{"partition": 0, "timestamp": ts}]}]}
        return client.call(ApiKey.LIST_OFFSETS, body).body["topics"][0]["partitions"][0]

    assert list_offset(-2)["offset"] == 0 and list_offset(-1)["offset"] == 3
    assert list_offset(0)["offset"] == 0
    assert list_offset(int(time.time() * 1000) + 3_600_000)["offset"] == -1
    body = {"topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 2}]}]}
    r = client.call(ApiKey.DELETE_RECORDS, body).body["topics"][0]["partitions"][0]
    assert r["error"] == 0 and r["low_watermark"] == 2
    assert list_offset(-2)["offset"] == 2
    part, _ = client.fetch("t", 0, 1)
    assert part["error"] == ErrorCode.OFFSET_OUT_OF_RANGE
    body = {"topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 10}]}]}
    r = client.call(ApiKey.DELETE_RECORDS, body).body["topics"][0]["partitions"][0]
    assert r["error"] == ErrorCode.OFFSET_OUT_OF_RANGE


def test_api_versions_and_unsupported(client: Client) -> None:
    r = client.call(ApiKey.API_VERSIONS, {})
    keys = {k for k, _, _ in r.body["apis"]}
    assert {0, 1, 2, 18, 21} <= keys and 3 not in keys
    r = client.call(ApiKey.METADATA, {"topics": None})
    assert r.error_code == ErrorCode.UNSUPPORTED_VERSION and r.correlation_id == client.corr


def test_topic_removed_deletes_log_and_recreate_starts_empty(
    feed: MetadataFeed, worker: WorkerProcess, client: Client, tmp_path: Path
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    client.produce("t", 0, make_batch([b"old"]))
    end = feed.append(rec.remove_topic("t"))
    feed.wait_applied(0, end)
    assert (
        client.produce("t", 0, make_batch([b"x"]))["error"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    assert not (tmp_path / "data" / "t-0").exists()
    with ShmTableReader(worker.shm_name) as shm:
        assert shm.get("t", 0) is None
    feed.add_topic("t")
    client.wait_ready("t", 0)
    assert client.produce("t", 0, make_batch([b"new"]))["base_offset"] == 0


def test_sigterm_answers_parked_fetch_flushes_and_unlinks(
    feed: MetadataFeed, tmp_path: Path
) -> None:
    w = WorkerProcess(feed, tmp_path / "data").start()
    try:
        c = Client(w.endpoint)
        feed.add_topic("t")
        c.wait_ready("t", 0)
        for i in range(5):
            c.produce("t", 0, make_batch([b"v%d" % i]))
        c.send(ApiKey.FETCH, c.fetch_body("t", 0, 5, max_wait_ms=30000))
        time.sleep(0.1)
        assert w.stop(signal.SIGTERM) == 0
        resp = c.recv(timeout=5)  # the parked fetch was answered before exit
        assert resp.body["topics"][0]["partitions"][0]["error"] == 0
        assert not os.path.exists("/dev/shm" + w.shm_name)
        c.close()
        # restart: everything acknowledged is there
        w2 = WorkerProcess(feed, tmp_path / "data").start()
        try:
            c2 = Client(w2.endpoint)
            c2.wait_ready("t", 0)
            part, data = c2.fetch("t", 0, 0)
            assert _values(data) == [b"v%d" % i for i in range(5)]
            c2.close()
        finally:
            assert w2.stop() == 0
    finally:
        w.kill()


def test_idempotent_retry_is_not_appended_twice_and_gaps_are_refused(
    feed: MetadataFeed, client: Client
) -> None:
    from qnode.storage.batch_builder import BatchBuilder

    def batch(seq: int, values: list[bytes], epoch: int = 0) -> bytes:
        b = BatchBuilder(producer_id=7000, producer_epoch=epoch, base_sequence=seq)
        for v in values:
            b.append(None, v)
        return b.build()

    feed.add_topic("idem")
    client.wait_ready("idem", 0)
    first = batch(0, [b"a", b"b"])
    assert client.produce("idem", 0, first)["base_offset"] == 0
    assert client.produce("idem", 0, batch(2, [b"c"]))["base_offset"] == 2
    retry = client.produce("idem", 0, first)  # the client never saw the first answer
    assert retry["error"] == 0 and retry["base_offset"] == 0
    gap = client.produce("idem", 0, batch(9, [b"x"]))
    assert gap["error"] == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert client.produce("idem", 0, batch(0, [b"d"], epoch=1))["base_offset"] == 3
    zombie = client.produce("idem", 0, batch(3, [b"z"], epoch=0))  # the old epoch is fenced
    assert zombie["error"] == ErrorCode.INVALID_PRODUCER_EPOCH
    _, data = client.fetch("idem", 0, 0)
    assert _values(data) == [b"a", b"b", b"c", b"d"]


def test_fetch_limits_whole_batches_and_first_batch_past_the_limit(
    feed: MetadataFeed, client: Client
) -> None:
    feed.add_topic("lim", partitions=2)
    client.wait_ready("lim", 1)
    for _ in range(3):
        client.produce("lim", 0, make_batch([b"p0" * 500]))
        client.produce("lim", 1, make_batch([b"p1" * 500]))
    body = client.fetch_body("lim", 0, 0, max_bytes=100)
    body["topics"][0]["partitions"].append(
        {"partition": 1, "fetch_offset": 0, "partition_max_bytes": 1 << 20}
    )
    resp = client.call(ApiKey.FETCH, body)
    p0, p1 = resp.body["topics"][0]["partitions"]
    # the first batch comes whole although larger than max_bytes; nothing else fits
    data0 = b"".join(bytes(resp.data[k].buffer) for k in p0["frames"])
    assert [b.base_offset for b in read_batches(data0)] == [0]
    assert p1["error"] == 0 and p1["frames"] == []


def test_config_record_is_applied_to_the_open_log(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("cfg", configs={"max.message.bytes": "1000"})
    client.wait_ready("cfg", 0)
    big = make_batch([b"z" * 2000])
    assert client.produce("cfg", 0, big)["error"] == ErrorCode.MESSAGE_TOO_LARGE
    end = feed.append(rec.config("cfg", {"max.message.bytes": "100000"}))
    feed.wait_applied(0, end)
    assert client.produce("cfg", 0, big)["error"] == 0


def test_idempotent_state_survives_a_restart(feed: MetadataFeed, tmp_path: Path) -> None:
    from qnode.storage.batch_builder import BatchBuilder

    b = BatchBuilder(producer_id=42, producer_epoch=0, base_sequence=0)
    b.append(None, b"once")
    first = b.build()
    w = WorkerProcess(feed, tmp_path / "data").start()
    try:
        c = Client(w.endpoint)
        feed.add_topic("idem2")
        c.wait_ready("idem2", 0)
        c.produce("idem2", 0, make_batch([b"plain"]))
        assert c.produce("idem2", 0, first)["base_offset"] == 1
        c.close()
        assert w.stop() == 0
        w2 = WorkerProcess(feed, tmp_path / "data").start()
        try:
            c = Client(w2.endpoint)
            c.wait_ready("idem2", 0)
            retry = c.produce("idem2", 0, first)  # the answer was lost before the restart
            assert retry["error"] == 0 and retry["base_offset"] == 1
            _, data = c.fetch("idem2", 0, 0)
            assert _values(data) == [b"plain", b"once"]
            c.close()
        finally:
            assert w2.stop() == 0
    finally:
        w.kill()


def test_acks_all_needs_min_insync_and_bad_acks_refused(feed: MetadataFeed, client: Client) -> None:
    feed.add_topic("strict", configs={"min.insync.replicas": "2"})
    client.wait_ready("strict", 0)
    assert (
        client.produce("strict", 0, make_batch([b"x"]), acks=-1)["error"]
        == ErrorCode.NOT_ENOUGH_REPLICAS
    )
    assert client.produce("strict", 0, make_batch([b"x"]), acks=1)["error"] == 0
    assert (
        client.produce("strict", 0, make_batch([b"x"]), acks=5)["error"]
        == ErrorCode.INVALID_REQUIRED_ACKS
    )
    feed.add_topic("all")
    client.wait_ready("all", 0)
    p = client.produce("all", 0, make_batch([b"y"]), acks=-1)  # ISR = this node only
    assert p["error"] == 0 and p["base_offset"] == 0
    part, _ = client.fetch("all", 0, 0)
    assert part["high_watermark"] == 1


def _doorbell_answer(receiver: DoorbellReceiver, timeout: float = 5) -> Response:
    if not select.select([receiver.fileno()], [], [], timeout)[0]:
        raise TimeoutError("no doorbell answer")
    (frames,) = receiver.receive()
    return decode_response(frames)


def test_fetch_naming_a_doorbell_is_answered_by_datagram_only(
    feed: MetadataFeed, client: Client, consumer: Client,
    receiver: DoorbellReceiver,
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    # parked, then woken by an append: the answer comes on the doorbell
    corr = consumer.send(
        ApiKey.FETCH, {**consumer.fetch_body("t", 0, 0, max_wait_ms=5000),
                       "doorbell": receiver.value})
    time.sleep(0.2)
    client.produce("t", 0, make_batch([b"ring"]))
    resp = _doorbell_answer(receiver)
    assert resp.correlation_id == corr
    part, data = fetch_reply(resp)
    assert part["error"] == 0 and part["high_watermark"] == 1
    assert _values(data) == [b"ring"]
    # answered at once (data already there): the doorbell too
    corr = consumer.send(
        ApiKey.FETCH, {**consumer.fetch_body("t", 0, 0), "doorbell": receiver.value})
    resp = _doorbell_answer(receiver)
    assert resp.correlation_id == corr and _values(fetch_reply(resp)[1]) == [b"ring"]
    assert not consumer.sock.poll(300)  # and nothing through zmq for either


def test_fetch_answer_goes_through_zmq_when_the_doorbell_cannot_take_it(
    feed: MetadataFeed, worker: WorkerProcess, client: Client, receiver: DoorbellReceiver
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    client.produce("t", 0, make_batch([b"x" * 1000] * 80))  # an answer over 64 KiB
    gone = DoorbellReceiver()
    gone.close()  # a consumer that went away, or one on another host
    body = {**client.fetch_body("t", 0, 0), "doorbell": receiver.value}
    part, data = fetch_reply(client.call(ApiKey.FETCH, body))
    assert part["error"] == 0 and len(_values(data)) == 80
    client.produce("t", 0, make_batch([b"small"]))
    body = {**client.fetch_body("t", 0, 80), "doorbell": gone.value}
    part, data = fetch_reply(client.call(ApiKey.FETCH, body))
    assert part["error"] == 0 and _values(data) == [b"small"]
    assert receiver.receive() == []


def test_fetch_with_a_malformed_doorbell_is_invalid_request(
    feed: MetadataFeed, client: Client
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    resp = client.call(ApiKey.FETCH, {**client.fetch_body("t", 0, 0), "doorbell": "/tmp/fifo"})
    assert resp.error_code == ErrorCode.INVALID_REQUEST
    assert "doorbell must be" in resp.body["message"]
    resp = client.call(ApiKey.FETCH, {**client.fetch_body("t", 0, 0), "doorbell": 5})
    assert resp.error_code == ErrorCode.INVALID_REQUEST and "doorbell" in resp.body["message"]


def _produce_frames(corr: int, topic: str, batch: bytes) -> list:
    body = {"acks": 1, "timeout_ms": 5000,
            "topics": [{"name": topic, "partitions": [{"partition": 0, "frame": 0}]}]}
    return encode_request(ApiKey.PRODUCE, 0, corr, body, [batch], "local-test")


def test_produce_by_the_local_socket_is_appended_and_answered_on_the_doorbell(
    feed: MetadataFeed, worker: WorkerProcess, client: Client, receiver: DoorbellReceiver
) -> None:
    feed.add_topic("t")
    client.wait_ready("t", 0)
    address = worker_address(worker.endpoint)
    for corr, values in ((1, [b"a", b"b"]), (2, [b"c"])):
        assert receiver.send_request(address, _produce_frames(corr, "t", make_batch(values)))
        resp = _doorbell_answer(receiver)
        assert resp.correlation_id == corr
        part = resp.body["topics"][0]["partitions"][0]
        assert part["error"] == 0 and part["base_offset"] == {1: 0, 2: 2}[corr]
    assert _values(client.fetch("t", 0, 0)[1]) == [b"a", b"b", b"c"]
    # only Produce may come this way; garbage and a nameless doorbell cost nothing
    lo = {"topics": [{"name": "t", "partitions": [{"partition": 0, "timestamp": -1}]}]}
    assert receiver.send_request(address, encode_request(ApiKey.LIST_OFFSETS, 0, 3, lo))
    resp = _doorbell_answer(receiver)
    assert resp.error_code == ErrorCode.INVALID_REQUEST
    assert "only Produce" in resp.body["message"]
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        raw.sendto(b"garbage", address)
        raw.sendto(pack_frames(b"not-a-doorbell", _produce_frames(4, "t", make_batch([b"x"]))),
                   address)
    finally:
        raw.close()
    assert receiver.send_request(address, [b"\x00"])  # a malformed request: an error answer
    assert _doorbell_answer(receiver).error_code == ErrorCode.INVALID_REQUEST
    assert _values(client.fetch("t", 0, 0)[1]) == [b"a", b"b", b"c"]  # x was not appended


def pack_frames(token: bytes, frames: list) -> bytes:
    return b"".join(bytes(p) for p in pack_datagram(token, frames))
