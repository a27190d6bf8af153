"""The metadata image: the cluster state obtained by applying metadata records in order.

The coordinator keeps one (it answers Metadata from it); a worker following the metadata log
can keep one too — `apply` each record from MetadataLogFetch in order, and on a `snapshot`
replace the image with `MetadataImage.from_dict(snapshot)`. Applying is deterministic and
never fails on a well-formed record (records are validated when written), so every replica of
the log reaches the same image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qnode.coordinator import records as rec


@dataclass
class PartitionImage:
    topic: str
    partition: int
    replicas: list[int]
    isr: list[int]
    leader: int
    leader_epoch: int
    worker: int


@dataclass
class TopicImage:
    name: str
    topic_id: str
    internal: bool
    configs: dict[str, str]  # overrides only; node.toml's topic defaults fill the rest
    config_version: int = 0
    partitions: dict[int, PartitionImage] = field(default_factory=dict)


@dataclass
class MetadataImage:
    topics: dict[str, TopicImage] = field(default_factory=dict)
    nodes: dict[int, str] = field(default_factory=dict)  # node id → bootstrap endpoint
    workers: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, worker) → endpoint
    next_producer_id: int = 0  # first producer id not yet handed to any node
    producer_id_blocks: dict[int, int] = field(default_factory=dict)  # node → end of its block
    controller_id: int = -1  # leader of the metadata quorum, as of its last leader_change
    controller_epoch: int = 0  # its term
    offset: int = 0  # next metadata log offset: the image reflects every record below it

    def apply(self, record: dict[str, Any], offset: int | None = None) -> None:
        """Apply one record (at log `offset`, when known) to the image."""
        kind = record["type"]
        if kind == rec.TOPIC:
            old = self.topics.get(record["name"])
            t = TopicImage(
                record["name"], record["topic_id"], record["internal"], dict(record["configs"])
            )
            if old is not None and old.topic_id == t.topic_id:
                t.partitions = old.partitions
            self.topics[t.name] = t
        elif kind == rec.PARTITION:
            t = self.topics.get(record["topic"])
            if t is not None:  # records of a topic removed later in the same batch are moot
                p = PartitionImage(**{k: record[k] for k in PartitionImage.__dataclass_fields__})
                t.partitions[p.partition] = p
        elif kind == rec.REMOVE_TOPIC:
            self.topics.pop(record["name"], None)
        elif kind == rec.CONFIG:
            t = self.topics.get(record["topic"])
            if t is not None:
                t.configs = dict(record["configs"])
                t.config_version += 1
        elif kind == rec.PRODUCER_IDS:
            self.next_producer_id = max(self.next_producer_id, record["next"])
            self.producer_id_blocks[record["node_id"]] = record["next"]
        elif kind == rec.REGISTER_NODE:
            self.nodes[record["node_id"]] = record["bootstrap"]
        elif kind == rec.WORKER:
            self.workers[(record["node_id"], record["worker_id"])] = record["endpoint"]
        elif kind == rec.LEADER_CHANGE:
            self.controller_id = record["leader"]
            self.controller_epoch = record["controller_epoch"]
        else:  # check_record guards every path in, so this is a bug, not bad input
            raise AssertionError(f"unhandled metadata record type {kind!r}")
        if offset is not None:
            assert offset >= self.offset, f"metadata record {offset} applied after {self.offset}"
            self.offset = offset + 1

    def partition_counts(self, node_id: int) -> dict[int, int]:
        """How many partition replicas each worker of `node_id` hosts (for placement)."""
        counts: dict[int, int] = {}
        for t in self.topics.values():
            for p in t.partitions.values():
                if node_id in p.replicas:
                    counts[p.worker] = counts.get(p.worker, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-able form of the whole image (snapshots, MetadataLogFetch `snapshot`)."""
        return {
            "topics": [
                {
                    **{k: v for k, v in asdict(t).items() if k != "partitions"},
                    "partitions": [asdict(p) for p in t.partitions.values()],
                }
                for t in self.topics.values()
            ],
            "nodes": [[k, v] for k, v in self.nodes.items()],
            "workers": [[n, w, e] for (n, w), e in self.workers.items()],
            "next_producer_id": self.next_producer_id,
            "producer_id_blocks": [[k, v] for k, v in self.producer_id_blocks.items()],
            "controller_id": self.controller_id,
            "controller_epoch": self.controller_epoch,
            "offset": self.offset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetadataImage:
        img = cls(
            nodes={int(k): v for k, v in d["nodes"]},
            workers={(int(n), int(w)): e for n, w, e in d["workers"]},
            next_producer_id=int(d["next_producer_id"]),
            producer_id_blocks={int(k): int(v) for k, v in d["producer_id_blocks"]},
            controller_id=int(d.get("controller_id", -1)),
            controller_epoch=int(d.get("controller_epoch", 0)),
            offset=int(d["offset"]),
        )
        for t in d["topics"]:
            ti = TopicImage(
                t["name"],
                t["topic_id"],
                bool(t["internal"]),
                dict(t["configs"]),
                int(t["config_version"]),
            )
            for p in t["partitions"]:
                pi = PartitionImage(**p)
                ti.partitions[pi.partition] = pi
            img.topics[ti.name] = ti
        return img
