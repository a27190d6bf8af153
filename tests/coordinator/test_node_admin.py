"""Admin calls against a whole node: an acknowledged change is already applied by the workers,
and Metadata's offsets come from the workers' shared-memory tables."""

from __future__ import annotations

from conftest import RawClient

from qnode.storage.batch_builder import BatchBuilder
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode


def produce_one(worker: RawClient, topic: str, partition: int) -> dict:
    b = BatchBuilder()
    b.append(b"k", b"v")
    body = {
        "acks": 1,
        "timeout_ms": 5000,
        "transactional_id": None,
        "topics": [{"name": topic, "partitions": [{"partition": partition, "frame": 0}]}],
    }
    return worker.call(ApiKey.PRODUCE, body, data=(b.build(),)).body["topics"][0]["partitions"][0]


def test_produce_right_after_create_and_delete(node, raw_client_factory) -> None:
    admin = raw_client_factory(node.bootstrap)
    for round_ in range(3):  # no retry anywhere: the ack means the workers have the change
        name = f"fresh{round_}"
        created = admin.call(
            ApiKey.CREATE_TOPICS,
            {
                "topics": [
                    {"name": name, "num_partitions": 4, "replication_factor": 1, "configs": {}}
                ]
            },
        )
        assert created.body["topics"][0]["error"] == 0
        md = admin.call(ApiKey.METADATA, {"topics": [name], "include_offsets": True}).body
        parts = md["topics"][0]["partitions"]
        assert all(p["error"] == 0 and p["endpoint"] for p in parts)
        assert all(
            (p["log_start_offset"], p["high_watermark"], p["log_end_offset"]) == (0, 0, 0)
            for p in parts
        ), "offsets come from the shm tables"
        for p in parts:
            result = produce_one(raw_client_factory(p["endpoint"]), name, p["partition"])
            assert result["error"] == 0 and result["base_offset"] == 0
        md = admin.call(ApiKey.METADATA, {"topics": [name], "include_offsets": True}).body
        assert [p["log_end_offset"] for p in md["topics"][0]["partitions"]] == [1, 1, 1, 1]

    deleted = admin.call(ApiKey.DELETE_TOPICS, {"topics": ["fresh0"]}).body
    assert deleted["topics"][0]["error"] == 0
    p0 = produce_one(raw_client_factory(parts[0]["endpoint"]), "fresh0", 0)
    assert p0["error"] in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NOT_LEADER_OR_FOLLOWER)
    node.stop()


def test_partitions_past_the_open_file_limit_are_refused(node_factory, raw_client_factory
                                                         ) -> None:
    """Under RLIMIT_NOFILE 2048 a worker keeps (2048 - 512) // 7 = 219 partitions open: a
    topic that would put more on one is refused with the limit named, and the node, which
    used to hit EMFILE and stop answering, serves the topics that fit."""
    node = node_factory(workers=2, open_files=2048)
    admin = raw_client_factory(node.bootstrap)

    def create(name: str, n: int) -> dict:
        body = {"topics": [{"name": name, "num_partitions": n, "replication_factor": 1,
                            "configs": {}}]}
        return admin.call(ApiKey.CREATE_TOPICS, body).body["topics"][0]

    refused = create("wide", 500)
    assert refused["error"] == ErrorCode.INVALID_PARTITIONS
    assert "at most 219" in refused["message"] and "ulimit -n" in refused["message"]
    assert create("fits", 200)["error"] == 0  # 100 a worker
    md = admin.call(ApiKey.METADATA, {"topics": None}).body
    assert {t["name"] for t in md["topics"]} >= {"fits"}
    assert "wide" not in {t["name"] for t in md["topics"]}
    fits = next(t for t in md["topics"] if t["name"] == "fits")
    p = fits["partitions"][0]
    worker = raw_client_factory(p["endpoint"])
    assert produce_one(worker, "fits", p["partition"])["error"] == 0
