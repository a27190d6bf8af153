"""The SDK against a real node: round trips, partitioning, offsets, pause, errors, admin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import NodeProcess

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.sdk.errors import (
    NoOffsetForPartitionError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownTopicError,
)
from qnode.sdk.partitioner import partition_for_key


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One node for the whole module (each test uses its own topics)."""
    n = NodeProcess(tmp_path_factory.mktemp("sdk-node"), workers=2)
    try:
        n.start()
        yield n.bootstrap
    finally:
        n.cleanup()


@pytest.fixture(scope="module")
def admin(bootstrap: str) -> Iterator[Admin]:
    with Admin(bootstrap, request_timeout_ms=10000) as a:
        yield a


def consume_all(bootstrap: str, topic: str, partitions: int, expect: int,
                timeout: float = 15.0, **kwargs: object) -> list:
    with Consumer(bootstrap=bootstrap, auto_offset_reset="earliest", **kwargs) as c:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            out += c.poll(0.5)
        # nothing more than expected arrives
        out += c.poll(0.2)
        return out


def test_round_trip_keys_headers_nulls(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("rt", partitions=3)
    sent = []
    with Producer(bootstrap, linger_ms=2) as p:
        for i in range(300):
            key = None if i % 3 == 0 else b"key-%d" % (i % 7)
            value = None if i % 10 == 0 else b"value-%d" % i
            headers = [("n", str(i).encode()), ("empty", None)] if i % 4 == 0 else None
            sent.append((key, value, headers, p.send("rt", value=value, key=key,
                                                     headers=headers)))
        p.flush(10)
    metas = [f.result(0) for *_, f in sent]
    got = consume_all(bootstrap, "rt", 3, len(sent))
    assert len(got) == len(sent)
    by_pos = {(r.partition, r.offset): r for r in got}
    for (key, value, headers, _), md in zip(sent, metas, strict=True):
        r = by_pos[(md.partition, md.offset)]
        assert (r.key, r.value) == (key, value)
        assert list(r.headers) == (headers or [])
        assert r.timestamp == md.timestamp > 0
        if key is not None:
            assert md.partition == partition_for_key(key, 3)
    # keyless records went to more than one partition (sticky batches, round-robin)
    assert len({md.partition for (k, *_), md in zip(sent, metas, strict=True) if k is None}) >= 1


def test_explicit_partition_and_keyless_spread(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("spread", partitions=4)
    with Producer(bootstrap, linger_ms=0, batch_size=200) as p:
        explicit = [p.send("spread", b"x", partition=2) for _ in range(20)]
        keyless = [p.send("spread", b"y" * 50) for _ in range(200)]
        p.flush(10)
    assert {f.result().partition for f in explicit} == {2}
    parts = [f.result().partition for f in keyless]
    assert set(parts) == {0, 1, 2, 3}  # small batches: the sticky partition moved round
    # offsets are dense per partition
    for part in range(4):
        offs = sorted(f.result().offset for f in keyless + explicit if f.result().partition == part)
        assert offs == list(range(offs[0], offs[0] + len(offs)))


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd"])
def test_compression_codecs(bootstrap: str, admin: Admin, codec: str) -> None:
    topic = f"codec-{codec}"
    admin.create_topic(topic, partitions=1)
    values = [(b"%s-%d-" % (codec.encode(), i)) * (i % 20 + 1) for i in range(500)]
    with Producer(bootstrap, compression=codec, linger_ms=5) as p:
        for v in values:
            p.send(topic, v, key=b"k")
        p.flush(10)
    got = consume_all(bootstrap, topic, 1, len(values))
    assert [r.value for r in got] == values
    assert [r.offset for r in got] == list(range(len(values)))


def test_acks_zero_and_all(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("acks", partitions=1)
    with Producer(bootstrap, acks=0) as p:
        md = p.send("acks", b"fire").result(10)
        assert md.offset == -1
    with Producer(bootstrap, acks="all") as p:
        md = p.send("acks", b"sure").result(10)
        assert md.offset >= 0
    got = consume_all(bootstrap, "acks", 1, 2)
    assert [r.value for r in got] == [b"fire", b"sure"]


def test_offsets_for_times_seek_and_positions(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("times", partitions=1)
    t0 = 1_700_000_000_000
    with Producer(bootstrap) as p:
        for i in range(10):
            p.send("times", b"%d" % i, timestamp_ms=t0 + 100 * i)
        p.flush(10)
    tp = TopicPartition("times", 0)
    with Consumer(bootstrap=bootstrap, auto_offset_reset="latest") as c:
        c.assign([tp])
        found = c.offsets_for_times({tp: t0 + 250})
        assert found[tp] is not None and found[tp].offset == 3
        assert found[tp].timestamp == t0 + 300
        assert c.offsets_for_times({tp: t0 + 10_000})[tp] is None
        assert c.offsets_for_times({tp: 0})[tp].offset == 0
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 10}
        assert c.position(tp) == 10  # latest
        assert c.poll(0.3) == []
        c.seek(tp, 7)
        assert [r.value for r in c.poll(5)] == [b"7", b"8", b"9"]
        c.seek_to_beginning()
        assert c.position(tp) == 0
        recs = []
        deadline = time.monotonic() + 5
        while len(recs) < 10 and time.monotonic() < deadline:
            recs += c.poll(0.5, max_records=4)
        assert [r.offset for r in recs] == list(range(10))
        assert c.position(tp) == 10
        c.seek_to_end()
        assert c.position(tp) == 10


def test_pause_and_resume(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("pause", partitions=2)
    with Producer(bootstrap) as p:
        for part in (0, 1):
            for i in range(5):
                p.send("pause", b"%d-%d" % (part, i), partition=part)
        p.flush(10)
    a, b = TopicPartition("pause", 0), TopicPartition("pause", 1)
    with Consumer(bootstrap=bootstrap, auto_offset_reset="earliest") as c:
        c.assign([a, b])
        c.pause([b])
        assert c.paused() == {b}
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            got += c.poll(0.3)
        got += c.poll(0.5)
        assert {r.partition for r in got} == {0} and len(got) == 5
        c.resume([b])
        deadline = time.monotonic() + 5
        more: list = []
        while len(more) < 5 and time.monotonic() < deadline:
            more += c.poll(0.3)
        assert [r.value for r in more] == [b"1-%d" % i for i in range(5)]


def test_iterator_and_reset_none(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("iter", partitions=1)
    with Producer(bootstrap) as p:
        for i in range(3):
            p.send("iter", b"%d" % i)
    tp = TopicPartition("iter", 0)
    with Consumer(bootstrap=bootstrap, auto_offset_reset="none") as c:
        c.assign([tp])
        with pytest.raises(NoOffsetForPartitionError):
            c.poll(0.5)
        c.seek(tp, 1)
        it = iter(c)
        assert [next(it).value, next(it).value] == [b"1", b"2"]


def test_out_of_range_position_resets(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("oor", partitions=1)
    with Producer(bootstrap) as p:
        p.send("oor", b"only").result(10)
    tp = TopicPartition("oor", 0)
    with Consumer(bootstrap=bootstrap, auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(tp, 1000)
        got: list = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = c.poll(0.5)
        assert [r.value for r in got] == [b"only"]


def test_unknown_topic_and_partition(bootstrap: str, admin: Admin) -> None:
    with Producer(bootstrap, max_block_ms=5000) as p:
        with pytest.raises(UnknownTopicError) as info:
            p.send("no-such-topic", b"v")
        assert not info.value.retriable
        admin.create_topic("twoparts", partitions=2)
        with pytest.raises(UnknownTopicError):
            p.send("twoparts", b"v", partition=5)
    with Consumer(bootstrap=bootstrap) as c, pytest.raises(UnknownTopicError):
        c.partitions_for_topic("no-such-topic")


def test_record_over_max_message_bytes(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("small", partitions=1, config={"max.message.bytes": "2000"})
    with Producer(bootstrap, linger_ms=0) as p:
        ok = p.send("small", b"x" * 100)
        big = p.send("small", b"x" * 5000)
        with pytest.raises(RecordTooLargeError):
            big.result(10)
        assert ok.result(10).offset == 0
        with pytest.raises(RecordTooLargeError):
            p.send("small", b"x" * 2_000_000)  # over max_request_size: refused in send()
    got = consume_all(bootstrap, "small", 1, 1)
    assert [len(r.value) for r in got] == [100]


def test_admin_topic_lifecycle(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("adm", partitions=3, config={"retention.ms": "86400000"})
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topic("adm", partitions=1)
    assert "adm" in admin.list_topics()
    desc = admin.describe_topic("adm")
    assert [p.id for p in desc.partitions] == [0, 1, 2]
    for p in desc.partitions:
        assert p.leader == 0 and p.replicas == [0] and p.isr == [0]
        assert p.log_start_offset == 0 and p.high_watermark == 0
    with Producer(bootstrap) as prod:
        for _ in range(4):
            prod.send("adm", b"v", partition=1)
    desc = admin.describe_topic("adm")
    assert desc.partitions[1].high_watermark == 4
    cfg = {c.name: c for c in admin.describe_configs("adm")}
    assert cfg["retention.ms"].value == "86400000" and cfg["retention.ms"].source == "topic"
    admin.alter_topic_config("adm", {"retention.ms": "1000", "cleanup.policy": "compact"})
    cfg = {c.name: c for c in admin.describe_configs("adm")}
    assert cfg["retention.ms"].value == "1000" and cfg["cleanup.policy"].value == "compact"
    admin.alter_topic_config("adm", {"cleanup.policy": None})
    cfg = {c.name: c for c in admin.describe_configs("adm")}
    assert cfg["cleanup.policy"].source != "topic"
    cluster = admin.describe_cluster()
    assert cluster.cluster_id and [n.node_id for n in cluster.nodes] == [0]
    admin.delete_topic("adm")
    assert "adm" not in admin.list_topics()
    with pytest.raises(UnknownTopicError):
        admin.describe_topic("adm")


def test_callbacks_and_flush(bootstrap: str, admin: Admin) -> None:
    admin.create_topic("cb", partitions=2)
    seen: list[int] = []
    with Producer(bootstrap, linger_ms=50) as p:
        for i in range(100):
            p.send("cb", b"%d" % i).add_callback(lambda md: seen.append(md.offset))
        p.flush(10)
        assert len(seen) == 100  # flush returns only once every record is acknowledged


def test_flush_waits_for_earlier_records_only(bootstrap: str, admin: Admin) -> None:
    import threading

    admin.create_topic("busy", partitions=2)
    stop = threading.Event()
    with Producer(bootstrap, linger_ms=20, buffer_memory=1_000_000) as p:
        def hammer() -> None:
            while not stop.is_set():
                p.send("busy", b"other-thread")

        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        try:
            mine = [p.send("busy", b"mine-%d" % i) for i in range(100)]
            started = time.monotonic()
            p.flush(20)  # must not wait for the other thread's endless stream
            assert time.monotonic() - started < 10
            assert all(f.done() and f.succeeded() for f in mine)
        finally:
            stop.set()
            t.join(10)


def test_linger_zero_sends_from_many_threads_in_order(bootstrap: str, admin: Admin) -> None:
    """linger.ms=0: send() sends from the caller's thread when the sender thread is idle
    (Sender.kick), the sender thread when it is not. Threads racing for that must still
    deliver every record once, in each partition in send order."""
    admin.create_topic("linger0", partitions=2)
    threads, per_thread = 4, 400
    errors: list[BaseException] = []
    with Producer(bootstrap, acks=1, linger_ms=0) as p:

        def run(t: int) -> None:
            try:
                futures = [p.send("linger0", b"%d-%04d" % (t, i), partition=t % 2)
                           for i in range(per_thread)]
                for i, f in enumerate(futures):
                    f.result(30)
                    if i % 50 == 0:
                        time.sleep(0.001)  # let the sender thread go idle now and then
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not errors, errors[0]
        # one record at a time, the sender thread parked in its wait: send() sends it
        before = p.metrics()["caller_passes"]
        for i in range(20):
            time.sleep(0.005)
            p.send("linger0", b"solo-%d" % i, partition=0).result(10)
        assert p.metrics()["caller_passes"] - before >= 10
    records = consume_all(bootstrap, "linger0", 2, threads * per_thread + 20)
    assert len(records) == threads * per_thread + 20  # once each: no duplicates
    for part in (0, 1):
        values = [r.value for r in records if r.partition == part]
        for t in range(threads):
            mine = [v for v in values if v.startswith(b"%d-" % t)]
            if t % 2 == part:
                assert mine == [b"%d-%04d" % (t, i) for i in range(per_thread)]
            else:
                assert mine == []


@pytest.mark.parametrize("doorbell", [True, False])
def test_caught_up_consumer_takes_answers_on_its_doorbell(
    bootstrap: str, admin: Admin, doorbell: bool
) -> None:
    topic = f"bell-{doorbell}"
    admin.create_topic(topic, partitions=1)
    with Consumer(bootstrap=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=2000,
                  fetch_doorbell=doorbell) as consumer, \
            Producer(bootstrap, linger_ms=0) as producer:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.position(tp)
        got: list[bytes] = []
        # small records one at a time (each a parked fetch woken by it), then answers over
        # 64 KiB, which go through zmq whatever the consumer asked
        values = [b"v%d" % i for i in range(20)] + [bytes([i]) * 70_000 for i in range(4)]
        for v in values:
            producer.send(topic, v).result(10)
            end = time.monotonic() + 10
            while len(got) < values.index(v) + 1 and time.monotonic() < end:
                got += [r.value for r in consumer.poll(0.5)]
        assert got == values
        m = consumer.metrics()
        assert m["fetch_doorbell"] is doorbell
        if doorbell:
            assert m["doorbell_answers"] >= 20
        else:
            assert m["doorbell_answers"] == 0


@pytest.mark.parametrize("local", [True, False])
def test_producer_on_the_node_host_sends_by_the_local_socket_in_order(
    bootstrap: str, admin: Admin, local: bool
) -> None:
    topic = f"local-{local}"
    admin.create_topic(topic, partitions=2)
    big = [bytes([i]) * 80_000 for i in range(3)]  # requests too large for a datagram
    with Producer(bootstrap, linger_ms=0, local_requests=local) as p:
        # small records as fast as they come: datagram requests pile up to the limit in
        # flight, then wait and go through zmq behind them; large ones go through zmq too
        futs = [p.send(topic, b"%05d" % i, partition=i % 2) for i in range(3000)]
        futs += [p.send(topic, v, partition=0) for v in big]
        futs += [p.send(topic, b"%05d" % i, partition=i % 2) for i in range(3000, 4000)]
        for f in futs:
            f.result(30)
        sent = p.metrics()["local_sends"]
        deferred = p.metrics()["local_deferred"]
        for i in range(20):  # one at a time: nothing in flight, each goes by datagram
            p.send(topic, b"late%02d" % i, partition=1).result(10)
        late = p.metrics()["local_sends"] - sent
    if local:
        assert sent > 0 and late == 20  # (the order kept when requests wait: tested alone in
        # tests/integration/test_local_requests.py)
    else:
        assert sent == 0 and late == 0 and deferred == 0
    got = consume_all(bootstrap, topic, 2, 4023)
    by_partition = {0: [], 1: []}
    for r in got:
        by_partition[r.partition].append(r.value)
    assert by_partition[0] == [b"%05d" % i for i in range(0, 3000, 2)] + big + [
        b"%05d" % i for i in range(3000, 4000, 2)]
    assert by_partition[1] == [b"%05d" % i for i in range(1, 4000, 2)] + [
        b"late%02d" % i for i in range(20)]
