"""The bootstrap endpoint over real ZeroMQ: admin calls, metadata, malformed input, restarts.

A lone coordinator process (no workers) answers raw requests built with transport/frame.py.
"""

from __future__ import annotations

import time

import msgpack
import pytest
from conftest import CoordinatorProcess, RawClient

from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import encode_request, encode_request_header

E = ErrorCode


@pytest.fixture
def coord(coordinator_factory) -> CoordinatorProcess:
    return coordinator_factory()


@pytest.fixture
def client(coord, raw_client_factory) -> RawClient:
    return raw_client_factory(coord.bootstrap)


def create(
    client: RawClient,
    name: str,
    partitions: int = 1,
    rf: int = 1,
    configs: dict[str, str] | None = None,
    **extra,
) -> dict:
    body = {
        "topics": [
            {
                "name": name,
                "num_partitions": partitions,
                "replication_factor": rf,
                "configs": configs or {},
            }
        ],
        **extra,
    }
    resp = client.call(ApiKey.CREATE_TOPICS, body)
    assert resp.error_code == 0
    return resp.body["topics"][0]


def metadata(client: RawClient, topics=None) -> dict:
    resp = client.call(ApiKey.METADATA, {"topics": topics, "include_offsets": False})
    assert resp.error_code == 0
    return resp.body


def test_api_versions_lists_coordinator_apis(client) -> None:
    resp = client.call(ApiKey.API_VERSIONS, {})
    keys = {k for k, _lo, _hi in resp.body["apis"]}
    assert {ApiKey.METADATA, ApiKey.CREATE_TOPICS, ApiKey.METADATA_LOG_FETCH} <= keys
    assert ApiKey.PRODUCE not in keys


def test_create_describe_alter_delete(client) -> None:
    assert create(client, "orders", 3, configs={"retention.ms": "86400000"})["error"] == 0
    md = metadata(client, ["orders", "missing"])
    orders, missing = md["topics"]
    assert orders["error"] == 0 and len(orders["partitions"]) == 3
    assert {p["worker"] for p in orders["partitions"]} == {0, 1}, "spread over both workers"
    assert all(
        p["leader"] == 0 and p["replicas"] == [0] and p["leader_epoch"] == 0
        for p in orders["partitions"]
    )
    assert missing["error"] == E.UNKNOWN_TOPIC_OR_PARTITION
    assert md["controller_id"] == 0 and md["cluster_id"]

    desc = client.call(
        ApiKey.DESCRIBE_CONFIGS,
        {
            "resources": [
                {"type": "topic", "name": "orders", "keys": ["retention.ms", "cleanup.policy"]}
            ]
        },
    )
    configs = {c["name"]: c for c in desc.body["resources"][0]["configs"]}
    assert configs["retention.ms"]["value"] == "86400000"
    assert configs["retention.ms"]["source"] == "topic"
    assert configs["cleanup.policy"] == {
        "name": "cleanup.policy",
        "value": "delete",
        "source": "default",
        "read_only": False,
    }

    alter = client.call(
        ApiKey.INCREMENTAL_ALTER_CONFIGS,
        {
            "resources": [
                {
                    "type": "topic",
                    "name": "orders",
                    "configs": [
                        {"name": "retention.ms", "op": "delete", "value": None},
                        {"name": "cleanup.policy", "op": "set", "value": "compact"},
                    ],
                }
            ]
        },
    )
    assert alter.body["resources"][0]["error"] == 0
    desc = client.call(
        ApiKey.DESCRIBE_CONFIGS, {"resources": [{"type": "topic", "name": "orders", "keys": None}]}
    )
    configs = {c["name"]: c for c in desc.body["resources"][0]["configs"]}
    assert configs["cleanup.policy"]["value"] == "compact"
    assert configs["retention.ms"]["value"] == "604800000"
    assert metadata(client, ["orders"])["topics"][0]["config_version"] == 1

    deleted = client.call(ApiKey.DELETE_TOPICS, {"topics": ["orders", "orders2"]}).body["topics"]
    assert [d["error"] for d in deleted] == [0, E.UNKNOWN_TOPIC_OR_PARTITION]
    assert metadata(client)["topics"] == []


@pytest.mark.parametrize(
    "name,code",
    [
        ("", E.INVALID_TOPIC_EXCEPTION),
        (".", E.INVALID_TOPIC_EXCEPTION),
        ("..", E.INVALID_TOPIC_EXCEPTION),
        ("a/b", E.INVALID_TOPIC_EXCEPTION),
        ("x" * 250, E.INVALID_TOPIC_EXCEPTION),
        ("__consumer_offsets", E.INVALID_REQUEST),
    ],
)
def test_bad_topic_names(client, name, code) -> None:
    result = create(client, name)
    assert result["error"] == code and result["message"]


def test_create_refusals_name_what_is_wrong(client) -> None:
    assert create(client, "x" * 249)["error"] == 0
    assert create(client, "dup")["error"] == 0
    assert create(client, "dup")["error"] == E.TOPIC_ALREADY_EXISTS
    assert create(client, "a.b")["error"] == 0
    assert create(client, "a_b")["error"] == E.INVALID_TOPIC_EXCEPTION  # collides with a.b
    assert create(client, "p", partitions=0)["error"] == E.INVALID_PARTITIONS
    r = create(client, "r", rf=3)
    assert r["error"] == E.INVALID_REPLICATION_FACTOR and "live nodes: 1" in r["message"]
    r = create(client, "c", configs={"retention.msx": "1"})
    assert r["error"] == E.INVALID_CONFIG and "did you mean 'retention.ms'" in r["message"]
    r = create(client, "c", configs={"segment.bytes": "ten"})
    assert r["error"] == E.INVALID_CONFIG and "segment.bytes" in r["message"]
    assert "ten" in r["message"]
    assert create(client, "v", validate_only=True)["error"] == 0
    names = {t["name"] for t in metadata(client)["topics"]}
    assert names == {"x" * 249, "dup", "a.b"}


def test_defaults_from_node_config(coordinator_factory, raw_client_factory) -> None:
    c = coordinator_factory(config={"num.partitions": 4, "retention.ms": 1000})
    client = raw_client_factory(c.bootstrap)
    assert create(client, "d", partitions=-1, rf=-1)["error"] == 0
    assert len(metadata(client, ["d"])["topics"][0]["partitions"]) == 4
    desc = client.call(
        ApiKey.DESCRIBE_CONFIGS,
        {
            "resources": [
                {"type": "topic", "name": "d", "keys": ["retention.ms"]},
                {"type": "node", "name": "0", "keys": ["num.partitions"]},
                {"type": "broker", "name": "0", "keys": None},
            ]
        },
    ).body["resources"]
    assert desc[0]["configs"] == [
        {"name": "retention.ms", "value": "1000", "source": "node", "read_only": False}
    ]
    assert desc[1]["configs"][0]["value"] == "4" and desc[1]["configs"][0]["read_only"]
    assert desc[2]["error"] == E.INVALID_REQUEST


def test_alter_refusals(client) -> None:
    create(client, "t")
    res = client.call(
        ApiKey.INCREMENTAL_ALTER_CONFIGS,
        {
            "resources": [
                {
                    "type": "topic",
                    "name": "t",
                    "configs": [{"name": "retention.ms", "op": "set", "value": "-5"}],
                },
                {"type": "topic", "name": "nope", "configs": []},
                {
                    "type": "node",
                    "name": "0",
                    "configs": [{"name": "workers", "op": "set", "value": "3"}],
                },
                {
                    "type": "topic",
                    "name": "t",
                    "configs": [{"name": "retention.ms", "op": "append", "value": "5"}],
                },
            ]
        },
    ).body["resources"]
    assert [r["error"] for r in res] == [
        E.INVALID_CONFIG,
        E.UNKNOWN_TOPIC_OR_PARTITION,
        E.INVALID_CONFIG,
        E.INVALID_REQUEST,
    ]
    assert metadata(client, ["t"])["topics"][0]["config_version"] == 0


def test_producer_ids_are_unique_across_restart(coord, client) -> None:
    first = [
        client.call(ApiKey.INIT_PRODUCER_ID, {"transactional_id": None}).body for _ in range(3)
    ]
    assert [b["producer_id"] for b in first] == [0, 1, 2]
    assert all(b["error"] == 0 and b["producer_epoch"] == 0 for b in first)
    coord.restart()
    after = client.call(ApiKey.INIT_PRODUCER_ID, {"transactional_id": None}).body
    assert after["producer_id"] == 1000, "a restart starts a new block of 1000"


def test_metadata_log_fetch_long_poll_wakes_on_append(client, raw_client_factory, coord):
    head = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": 0, "max_wait_ms": 0}).body
    assert [r["type"] for r in head["records"][:2]] == ["leader_change", "register_node"]
    end = head["next_offset"]
    waiter = raw_client_factory(coord.bootstrap)
    waiter.send(
        encode_request(ApiKey.METADATA_LOG_FETCH, 0, 7, {"offset": end, "max_wait_ms": 20_000})
    )
    assert not waiter.sock.poll(200), "a fetch at the end of the log parks"
    t0 = time.monotonic()
    create(client, "wake", partitions=2)
    resp = waiter.recv(timeout_ms=5000)
    assert time.monotonic() - t0 < 5, "woken by the append, not by its 20 s timeout"
    types = [r["type"] for r in resp.body["records"]]
    assert types == ["topic", "partition", "partition"]
    assert [r["offset"] for r in resp.body["records"]] == [end, end + 1, end + 2]
    assert resp.body["next_offset"] == end + 3 and resp.body["snapshot"] is None
    assert all(r["term"] >= 1 for r in resp.body["records"])
    # A short wait with nothing new times out empty.
    resp = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": end + 3, "max_wait_ms": 50})
    assert resp.body["records"] == [] and resp.body["next_offset"] == end + 3
    # Past the end (a log that was replaced): the whole image instead.
    snap = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": 10**9, "max_wait_ms": 0}).body
    assert "wake" in {t["name"] for t in snap["snapshot"]["topics"]}


def test_worker_hello_records_endpoint(client) -> None:
    body = {"node_id": 0, "worker_id": 1, "endpoint": "tcp://127.0.0.1:1", "pid": 1}
    assert client.call(ApiKey.WORKER_HELLO, body).body["error"] == 0
    create(client, "w", partitions=2)
    parts = metadata(client, ["w"])["topics"][0]["partitions"]
    by_worker = {p["worker"]: p for p in parts}
    assert by_worker[1]["endpoint"] == "tcp://127.0.0.1:1" and by_worker[1]["error"] == 0
    assert by_worker[0]["error"] == E.LEADER_NOT_AVAILABLE, "worker 0 never said hello"
    bad = client.call(ApiKey.WORKER_HELLO, {**body, "worker_id": 5})
    assert bad.error_code == E.INVALID_REQUEST and "0..1" in bad.body["message"]
    bad = client.call(ApiKey.WORKER_HELLO, {**body, "node_id": 3})
    assert bad.error_code == E.INVALID_REQUEST


def test_malformed_input_gets_error_responses_and_server_lives(client) -> None:
    header = encode_request_header(ApiKey.METADATA, 0, 42, "t")
    cases = [
        ([b"garbage"], 0xFFFF, E.INVALID_REQUEST),  # header too short
        ([b"XX" + header[2:], b"\x80"], 0xFFFF, E.INVALID_REQUEST),  # bad magic
        ([header], ApiKey.METADATA, E.INVALID_REQUEST),  # no body frame
        ([header, b"\xc1\xff"], ApiKey.METADATA, E.INVALID_REQUEST),  # not msgpack
        ([header, msgpack.packb([1, 2])], ApiKey.METADATA, E.INVALID_REQUEST),  # not a map
        ([header, msgpack.packb({"topics": "x"})], ApiKey.METADATA, E.INVALID_REQUEST),
        (
            [encode_request_header(ApiKey.METADATA, 9, 42), b"\x80"],
            ApiKey.METADATA,
            E.UNSUPPORTED_VERSION,
        ),
        ([encode_request_header(4242, 0, 42), b"\x80"], 4242, E.UNSUPPORTED_VERSION),
        (
            [encode_request_header(ApiKey.PRODUCE, 0, 42), b"\x80"],
            ApiKey.PRODUCE,
            E.UNSUPPORTED_VERSION,
        ),  # a worker API sent to the bootstrap endpoint
        (
            [
                encode_request_header(ApiKey.CREATE_TOPICS, 0, 42),
                msgpack.packb({"topics": [{"name": 5}]}),
            ],
            ApiKey.CREATE_TOPICS,
            E.INVALID_REQUEST,
        ),
    ]
    for frames, key, code in cases:
        client.send(frames)
        resp = client.recv()
        assert (resp.api_key, resp.error_code) == (key, code), frames
        assert resp.body["error"] == code and resp.body["message"]
    msg = client.call(ApiKey.CREATE_TOPICS, {"topics": [{"num_partitions": 1}]})
    assert "name" in msg.body["message"], "the message names the missing key"
    assert metadata(client)["topics"] == [], "still serving, nothing created"


def test_topics_configs_and_placement_survive_restart(coord, client) -> None:
    create(client, "keep", 5, configs={"cleanup.policy": "compact"})
    create(client, "gone", 1)
    client.call(ApiKey.DELETE_TOPICS, {"topics": ["gone"]})
    before = metadata(client, ["keep"])["topics"][0]
    coord.restart()
    after = metadata(client)
    assert [t["name"] for t in after["topics"]] == ["keep"]
    keep = after["topics"][0]
    assert keep["topic_id"] == before["topic_id"]
    assert [(p["partition"], p["worker"], p["leader_epoch"]) for p in keep["partitions"]] == [
        (p["partition"], p["worker"], p["leader_epoch"]) for p in before["partitions"]
    ]
    desc = client.call(
        ApiKey.DESCRIBE_CONFIGS,
        {"resources": [{"type": "topic", "name": "keep", "keys": ["cleanup.policy"]}]},
    )
    assert desc.body["resources"][0]["configs"][0]["value"] == "compact"


def test_fewer_workers_after_restart_moves_orphaned_partitions(
    coordinator_factory, raw_client_factory
) -> None:
    c = coordinator_factory(config={"workers": 4})
    client = raw_client_factory(c.bootstrap)
    create(client, "m", 8)
    before = {p["partition"]: p for p in metadata(client, ["m"])["topics"][0]["partitions"]}
    assert sorted(p["worker"] for p in before.values()) == [0, 0, 1, 1, 2, 2, 3, 3]
    c.stop()
    from qnode.node.config import load_config

    c.config = load_config(
        None,
        {
            **{k: v for k, v in c.config.settings.items() if k in ("data.dir", "listen")},
            "workers": 2,
        },
    )
    c.start()
    after = {p["partition"]: p for p in metadata(client, ["m"])["topics"][0]["partitions"]}
    for i, p in after.items():
        assert p["worker"] in (0, 1)
        if before[i]["worker"] < 2:
            assert p["worker"] == before[i]["worker"] and p["leader_epoch"] == 0
        else:
            assert p["leader_epoch"] == 1, "a moved partition gets a new leader epoch"
    assert sorted(p["worker"] for p in after.values()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_checkpoint_replay_and_snapshot_fetch_across_restart(
    coordinator_factory, raw_client_factory
) -> None:
    c = coordinator_factory(config={"metadata.log.max.record.bytes.between.snapshots": 1})
    client = raw_client_factory(c.bootstrap)
    for i in range(5):
        create(client, f"t{i}", 2, configs={"retention.ms": str(1000 + i)})
    client.call(ApiKey.DELETE_TOPICS, {"topics": ["t0"]})
    meta_dir = c.data_dir / "__cluster_metadata-0"
    assert len(list(meta_dir.glob("*.checkpoint"))) == 2
    c.restart()
    names = [t["name"] for t in metadata(client)["topics"]]
    assert names == ["t1", "t2", "t3", "t4"]
    fetched = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": 0, "max_wait_ms": 0}).body
    assert fetched["snapshot"] is not None, "offset 0 was trimmed: the image comes instead"
    snap_topics = {t["name"]: t for t in fetched["snapshot"]["topics"]}
    assert set(snap_topics) == set(names)
    assert snap_topics["t3"]["configs"] == {"retention.ms": "1003"}
    assert fetched["next_offset"] == fetched["snapshot"]["offset"]


def test_auto_create_topics_when_enabled(coordinator_factory, raw_client_factory) -> None:
    c = coordinator_factory(config={"auto.create.topics.enable": True, "num.partitions": 3})
    client = raw_client_factory(c.bootstrap)
    md = metadata(client, ["auto", "bad name"])
    auto, bad = md["topics"]
    assert auto["error"] == 0 and len(auto["partitions"]) == 3
    assert bad["error"] == E.UNKNOWN_TOPIC_OR_PARTITION
    assert [t["name"] for t in metadata(client)["topics"]] == ["auto"]


def test_auto_create_is_off_by_default(client) -> None:
    assert metadata(client, ["auto"])["topics"][0]["error"] == E.UNKNOWN_TOPIC_OR_PARTITION
    assert metadata(client)["topics"] == []


def test_client_that_disconnects_mid_request(coord, client) -> None:
    gone = RawClient(coord.bootstrap)
    end = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": 10**9, "max_wait_ms": 0})
    gone.send(
        encode_request(
            ApiKey.METADATA_LOG_FETCH,
            0,
            1,
            {"offset": end.body["next_offset"], "max_wait_ms": 30_000},
        )
    )
    gone.send([encode_request_header(ApiKey.METADATA, 0, 2)])  # truncated: header only
    time.sleep(0.1)
    gone.close()  # its parked fetch is answered into the void when the log moves
    assert create(client, "after")["error"] == 0
    assert [t["name"] for t in metadata(client)["topics"]] == ["after"]
