"""The controller: validates admin operations and turns them into metadata records.

Runs on the quorum leader. Each operation checks its input against the committed image and
the rules (topic names like Kafka's, partitions ≥ 1, replication factor ≤ live nodes, configs
by the storage engine's `LogConfig` rules), then appends the records of the change as one
atomic batch. Placement puts each new partition on the least-loaded worker of the node (ties:
lowest worker id) and is recorded, so it is stable across restarts. Producer ids are handed
out from blocks of 1000 claimed through `producer_ids` records.

Errors are `ControllerError(code, message)` with Kafka's wire codes; the server maps them to
responses. Nothing here touches sockets.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from dataclasses import dataclass

from qnode.coordinator import records as rec
from qnode.coordinator.image import MetadataImage, PartitionImage, TopicImage
from qnode.coordinator.store import MetadataStore
from qnode.node.config import (
    KEYS,
    NodeConfig,
    NodeConfigError,
    kafka_string,
    validate_topic_config,
)
from qnode.node.shm_table import DEFAULT_CAPACITY as SHM_TABLE_ROWS
from qnode.storage.log_manager import OPEN_FILES_PER_PARTITION
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

MAX_TOPIC_NAME = 249
_LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
PRODUCER_ID_BLOCK = 1000
MAX_PARTITIONS_PER_TOPIC = 100_000
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})


class ControllerError(Exception):
    """An admin operation refused, with the wire error code to answer it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TopicSpec:
    name: str
    num_partitions: int = -1  # -1: num.partitions of node.toml
    replication_factor: int = -1  # -1: default.replication.factor of node.toml
    configs: dict[str, str] | None = None


def check_topic_name(name: str) -> None:
    """Kafka's rules: legal characters, at most 249 of them, not "." or ".."."""
    if not name:
        raise ControllerError(ErrorCode.INVALID_TOPIC_EXCEPTION, "topic name is empty")
    if name in (".", ".."):
        raise ControllerError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"topic name cannot be {name!r}")
    if len(name) > MAX_TOPIC_NAME:
        raise ControllerError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name is {len(name)} characters, at most {MAX_TOPIC_NAME} allowed",
        )
    if not _LEGAL_NAME.match(name):
        raise ControllerError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name {name!r} has characters other than ASCII letters, digits, '.', '_', '-'",
        )


def new_topic_id() -> str:
    """A Kafka-style topic id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class Controller:
    """Admin operations of one node's controller over its metadata store."""

    def __init__(self, config: NodeConfig, store: MetadataStore,
                 max_partitions_per_worker: int | None = None) -> None:
        self.config = config
        self.store = store
        # what one worker can keep open under the node's open-file limit (None: no limit)
        self.max_partitions_per_worker = max_partitions_per_worker
        self._pid_next = 0  # next producer id to hand out from our current block
        self._pid_end = 0  # end (exclusive) of our current block

    @property
    def image(self) -> MetadataImage:
        return self.store.image

    # ---- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Records this node's start needs: its bootstrap endpoint, partitions whose worker is
        gone (fewer workers than before) moved to live ones with a new leader epoch."""
        me = self.config.node_id
        if self.image.nodes.get(me) != self.config.listen:
            self.store.append([rec.register_node(me, self.config.listen)])
        moved = []
        counts = self._worker_loads()
        for t in self.image.topics.values():
            for p in t.partitions.values():
                if me in p.replicas and p.worker >= self.config.workers:
                    worker = self._least_loaded(counts)
                    counts[worker] += 1
                    moved.append(
                        rec.partition(
                            p.topic,
                            p.partition,
                            p.replicas,
                            p.isr,
                            p.leader,
                            p.leader_epoch + 1,
                            worker,
                        )
                    )
        if moved:
            log.info("moving %d partitions off workers that no longer exist", len(moved))
            self.store.append(moved)

    # ---- topics ----------------------------------------------------------------------------

    def live_nodes(self) -> list[int]:
        """Nodes that can host replicas: registered in the metadata (this node at least)."""
        return sorted(self.image.nodes) or [self.config.node_id]

    def _worker_loads(self) -> dict[int, int]:
        counts = {w: 0 for w in range(self.config.workers)}
        for w, n in self.image.partition_counts(self.config.node_id).items():
            if w in counts:
                counts[w] = n
        return counts

    @staticmethod
    def _least_loaded(counts: dict[int, int]) -> int:
        return min(counts, key=lambda w: (counts[w], w))

    def create_topic(
        self, spec: TopicSpec, validate_only: bool = False, internal: bool = False
    ) -> None:
        """Create one topic or raise ControllerError (nothing written then)."""
        check_topic_name(spec.name)
        if spec.name in self.image.topics:
            raise ControllerError(
                ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {spec.name!r} already exists"
            )
        if spec.name in INTERNAL_TOPICS and not internal:
            raise ControllerError(
                ErrorCode.INVALID_REQUEST,
                f"{spec.name!r} is an internal topic, created by the node",
            )
        collision = self._collides(spec.name)
        if collision:
            raise ControllerError(
                ErrorCode.INVALID_TOPIC_EXCEPTION,
                f"topic {spec.name!r} collides with existing topic {collision!r} ('.' and '_'"
                " are the same in metric names)",
            )
        partitions = spec.num_partitions
        if partitions == -1:
            partitions = self.config.get("num.partitions")
        if not 1 <= partitions <= MAX_PARTITIONS_PER_TOPIC:
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS,
                f"num_partitions {partitions}: allowed 1..{MAX_PARTITIONS_PER_TOPIC}",
            )
        rf = spec.replication_factor
        if rf == -1:
            rf = self.config.get("default.replication.factor")
        live = self.live_nodes()
        if not 1 <= rf <= len(live):
            raise ControllerError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor {rf}: allowed 1..{len(live)} (live nodes: {len(live)})",
            )
        configs = self.validate_configs(spec.configs or {})
        records = [rec.topic(spec.name, new_topic_id(), configs, internal)]
        records += self._place(spec.name, range(partitions), rf, live)
        if validate_only:
            return
        self.store.append(records)
        log.info(
            "created topic %s: %d partitions, replication factor %d", spec.name, partitions, rf
        )

    def _place(self, topic: str, partitions: range, rf: int, live: list[int]) -> list[dict]:
        """Partition records for new partitions of `topic`: replicas round-robin over live
        nodes (leaders spread like Kafka's assignment), each on this node's least-loaded
        worker. Raises ControllerError when a worker could not keep them open."""
        counts = self._worker_loads()
        me = self.config.node_id
        start = live.index(me) if me in live else 0
        out = []
        for i in partitions:
            replicas = [live[(start + i + j) % len(live)] for j in range(rf)]
            worker = self._least_loaded(counts)
            counts[worker] += 1
            out.append(rec.partition(topic, i, replicas, list(replicas), replicas[0], 0, worker))
        self._check_capacity(len(partitions), counts)
        return out

    def create_partitions(self, name: str, count: int, validate_only: bool = False) -> None:
        """Grow topic `name` to `count` partitions (Kafka's CreatePartitions: never shrinks;
        keyed records of the new partition count hash elsewhere, as in Kafka)."""
        t = self.topic(name)
        if t.internal:
            raise ControllerError(
                ErrorCode.INVALID_REQUEST, f"{name!r} is an internal topic: its partitions are "
                "the node's to set")
        have = len(t.partitions)
        if count == have:
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS, f"topic {name!r} already has {count} partitions")
        if count < have:
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name!r} has {have} partitions: the count can only grow, and "
                f"{count} is not more")
        if count > MAX_PARTITIONS_PER_TOPIC:
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS,
                f"count {count}: allowed up to {MAX_PARTITIONS_PER_TOPIC}")
        rf = len(t.partitions[0].replicas) if 0 in t.partitions else 1
        live = self.live_nodes()
        if rf > len(live):
            raise ControllerError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"topic {name!r} has replication factor {rf}, live nodes: {len(live)}")
        records = self._place(name, range(have, count), rf, live)
        if validate_only:
            return
        self.store.append(records)
        log.info("topic %s: %d partitions, was %d", name, count, have)

    def _check_capacity(self, added: int, counts: dict[int, int]) -> None:
        """Refuse partitions that a worker could not keep open: past its open-file limit every
        log it opens, rolls or checkpoints fails with EMFILE (found with 20,000 partitions
        under a limit of 20,000 files: the workers' checkpoints failed, the node stopped
        answering). Kafka leaves this to the operator; a refusal names the way out."""
        most = max(counts.values(), default=0)
        if most > SHM_TABLE_ROWS:  # each partition of a worker has a row in its shm table
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS,
                f"{added} more partitions would put {most} on one worker of node "
                f"{self.config.node_id}, which holds at most {SHM_TABLE_ROWS} (the rows of its "
                f"shared-memory partition table): add workers or use fewer partitions",
            )
        limit = self.max_partitions_per_worker
        if limit is not None and most > limit:
            raise ControllerError(
                ErrorCode.INVALID_PARTITIONS,
                f"{added} more partitions would put {most} on one worker of node "
                f"{self.config.node_id}, which can keep at most {limit} open under the "
                f"node's open-file limit (about {OPEN_FILES_PER_PARTITION} files each): "
                f"raise `ulimit -n` (the hard limit) and restart the node, add workers, or "
                f"use fewer partitions",
            )

    def _collides(self, name: str) -> str | None:
        norm = name.replace(".", "_")
        for other in self.image.topics:
            if other != name and other.replace(".", "_") == norm:
                return other
        return None

    def validate_configs(self, configs: dict[str, str]) -> dict[str, str]:
        try:
            return validate_topic_config(configs, source="topic config")
        except NodeConfigError as exc:
            raise ControllerError(ErrorCode.INVALID_CONFIG, str(exc)) from None

    def ensure_internal_topic(self, name: str, partitions: int, configs: dict[str, str]) -> None:
        """Create an internal topic (`__consumer_offsets`, ...) unless it already exists."""
        if name not in self.image.topics:
            self.create_topic(TopicSpec(name, partitions, 1, configs), internal=True)

    def delete_topic(self, name: str) -> None:
        if name not in self.image.topics:
            raise ControllerError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
            )
        if self.image.topics[name].internal:
            raise ControllerError(
                ErrorCode.INVALID_REQUEST, f"{name!r} is an internal topic and cannot be deleted"
            )
        self.store.append([rec.remove_topic(name)])
        log.info("deleted topic %s", name)

    def topic(self, name: str) -> TopicImage:
        t = self.image.topics.get(name)
        if t is None:
            raise ControllerError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
            )
        return t

    # ---- configs ---------------------------------------------------------------------------

    def effective_configs(self, name: str) -> list[tuple[str, str, str]]:
        """(key, value, source) of every topic config: topic override, node.toml, default."""
        t = self.topic(name)
        out = []
        for key, value in sorted(self.config.topic_defaults.items()):
            if key in t.configs:
                out.append((key, t.configs[key], "topic"))
            else:
                out.append((key, value, self._node_source(key)))
        return out

    def _node_source(self, key: str) -> str:
        spec = KEYS.get(key)
        value = self.config.settings.get(key)
        if spec is None or spec.default is None:
            return "node"
        return "default" if kafka_string(value) == kafka_string(spec.default) else "node"

    def node_configs(self) -> list[tuple[str, str, str]]:
        out = []
        for key, value in sorted(self.config.settings.items()):
            if key == "peers":
                value = ",".join(f"{p.node_id}@{p.endpoint}" for p in value)
            out.append((key, kafka_string(value), self._node_source(key)))
        return out

    def alter_topic_configs(
        self, name: str, ops: list[tuple[str, str, str | None]], validate_only: bool = False
    ) -> None:
        """Apply (key, "set" | "delete", value) operations to a topic's overrides."""
        t = self.topic(name)
        new = dict(t.configs)
        for key, op, value in ops:
            if op == "set":
                if value is None:
                    raise ControllerError(
                        ErrorCode.INVALID_CONFIG, f"config {key!r}: op 'set' needs a value"
                    )
                new[key] = value
            elif op == "delete":
                new.pop(key, None)
                if key not in self.config.topic_defaults:
                    self.validate_configs({key: ""})  # unknown key: same error as for set
            else:
                raise ControllerError(
                    ErrorCode.INVALID_REQUEST, f"config {key!r}: op {op!r} is not 'set' or 'delete'"
                )
        new = self.validate_configs(new)
        if validate_only or new == t.configs:
            return
        self.store.append([rec.config(name, new)])
        log.info("altered configs of topic %s: %s", name, new)

    # ---- producer ids ----------------------------------------------------------------------

    def allocate_producer_id(self) -> int:
        """A producer id never handed out before on any node (claims a new block when needed)."""
        if self._pid_next >= self._pid_end:
            start = self.image.next_producer_id
            self.store.append([rec.producer_ids(self.config.node_id, start + PRODUCER_ID_BLOCK)])
            self._pid_next, self._pid_end = start, start + PRODUCER_ID_BLOCK
        pid = self._pid_next
        self._pid_next += 1
        return pid

    # ---- workers ---------------------------------------------------------------------------

    def register_worker(self, worker_id: int, endpoint: str) -> None:
        if not 0 <= worker_id < self.config.workers:
            raise ControllerError(
                ErrorCode.INVALID_REQUEST,
                f"worker id {worker_id}: this node runs workers 0..{self.config.workers - 1}",
            )
        key = (self.config.node_id, worker_id)
        if self.image.workers.get(key) != endpoint:
            self.store.append([rec.worker(self.config.node_id, worker_id, endpoint)])

    def partitions_of(self, topic: TopicImage) -> list[PartitionImage]:
        return [topic.partitions[i] for i in sorted(topic.partitions)]
