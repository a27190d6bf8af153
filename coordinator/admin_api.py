"""Client-facing APIs of the bootstrap endpoint: Metadata and the admin calls.

Metadata, CreateTopics, DeleteTopics, DescribeConfigs, IncrementalAlterConfigs and the
non-transactional InitProducerId. Bodies are already schema-checked by the server
(transport/messages.py); per-topic problems are answered per topic, as Kafka does. Changes
are acknowledged once this node's live workers applied them (`Propagation`), so a client may
produce to a topic right after creating it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from qnode.coordinator.controller import Controller, ControllerError, TopicSpec
from qnode.coordinator.image import PartitionImage, TopicImage
from qnode.coordinator.offsets_view import OffsetsView
from qnode.coordinator.quorum import NotControllerError
from qnode.coordinator.server import Call, CoordinatorServer, HandlerError
from qnode.coordinator.worker_api import Propagation
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

DEFAULT_ADMIN_TIMEOUT_MS = 5000
MAX_ADMIN_TIMEOUT_MS = 60_000


class AdminApi:
    """Handlers of the metadata and admin APIs over one controller."""

    def __init__(
        self,
        server: CoordinatorServer,
        controller: Controller,
        propagation: Propagation,
        offsets: OffsetsView,
        cluster_id: str,
        worker_down: Callable[[int], bool] = lambda worker_id: False,
    ) -> None:
        self.server = server
        # True for a local worker known to be dead (restarting): its partitions answer
        # LEADER_NOT_AVAILABLE, so clients refresh metadata instead of calling a dead endpoint.
        self.worker_down = worker_down
        self.controller = controller
        self.propagation = propagation
        self.offsets = offsets
        self.cluster_id = cluster_id

    def install(self) -> None:
        s = self.server
        s.register(ApiKey.METADATA, self.metadata)
        s.register(ApiKey.CREATE_TOPICS, self.create_topics)
        s.register(ApiKey.DELETE_TOPICS, self.delete_topics)
        s.register(ApiKey.CREATE_PARTITIONS, self.create_partitions)
        s.register(ApiKey.DESCRIBE_CONFIGS, self.describe_configs)
        s.register(ApiKey.INCREMENTAL_ALTER_CONFIGS, self.incremental_alter_configs)
        s.register(ApiKey.INIT_PRODUCER_ID, self.init_producer_id)

    # ---- Metadata ----------------------------------------------------------------------------

    def metadata(self, call: Call) -> dict[str, Any]:
        b = call.request.body
        image = self.controller.image
        names = b["topics"]
        if names is None:
            names = sorted(image.topics)
        elif self.controller.config.get("auto.create.topics.enable"):
            self._auto_create([n for n in names if n not in image.topics])
        with self.offsets.round():
            topics = self._topic_entries(names, b["include_offsets"])
        leader = self.controller.store.quorum.leader_id
        return {
            "cluster_id": self.cluster_id,
            "controller_id": -1 if leader is None else leader,
            "nodes": [{"node_id": n, "bootstrap": e} for n, e in sorted(image.nodes.items())],
            "topics": topics,
        }

    def _topic_entries(self, names: list[str], include_offsets: bool) -> list[dict[str, Any]]:
        image = self.controller.image
        topics = []
        down = {w for w in range(self.controller.config.workers) if self.worker_down(w)}
        for name in names:
            t = image.topics.get(name)
            if t is None:
                topics.append(
                    {
                        "name": name,
                        "error": int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                        "internal": False,
                        "config_version": 0,
                        "partitions": [],
                    }
                )
            else:
                topics.append(self._topic_entry(t, include_offsets, down))
        return topics

    def _auto_create(self, missing: list[str]) -> None:
        for name in missing:
            try:
                self.controller.create_topic(TopicSpec(name))
            except (ControllerError, NotControllerError) as exc:
                log.info("auto-create of topic %r refused: %s", name, exc)

    def _topic_entry(self, t: TopicImage, include_offsets: bool, down: set[int]) -> dict[str, Any]:
        return {
            "name": t.name,
            "topic_id": t.topic_id,
            "error": 0,
            "internal": t.internal,
            "config_version": t.config_version,
            "partitions": [
                self._partition_entry(p, include_offsets, down)
                for p in self.controller.partitions_of(t)
            ],
        }

    def _partition_entry(
        self, p: PartitionImage, include_offsets: bool, down: set[int]
    ) -> dict[str, Any]:
        endpoint = self.controller.image.workers.get((p.leader, p.worker), "")
        local = p.leader == self.controller.config.node_id
        available = endpoint and not (local and p.worker in down)
        entry: dict[str, Any] = {
            "partition": p.partition,
            "error": 0 if available else int(ErrorCode.LEADER_NOT_AVAILABLE),
            "leader": p.leader,
            "leader_epoch": p.leader_epoch,
            "replicas": p.replicas,
            "isr": p.isr,
            "worker": p.worker,
            "endpoint": endpoint,
        }
        if include_offsets:
            state = None
            if local:
                state = self.offsets.get(p.worker, p.topic, p.partition)
            entry["log_start_offset"] = state.log_start_offset if state else -1
            entry["high_watermark"] = state.high_watermark if state else -1
            entry["log_end_offset"] = state.log_end_offset if state else -1
        return entry

    # ---- topics --------------------------------------------------------------------------------

    @staticmethod
    def _timeout(body: dict[str, Any]) -> int:
        t = body.get("timeout_ms", DEFAULT_ADMIN_TIMEOUT_MS)
        if not isinstance(t, int) or isinstance(t, bool):
            raise HandlerError(ErrorCode.INVALID_REQUEST, "key 'timeout_ms' must be an integer")
        return min(max(t, 0), MAX_ADMIN_TIMEOUT_MS)

    def _answer_when_applied(
        self, call: Call, body: dict[str, Any], changed: bool, timeout_ms: int
    ) -> None:
        if not changed:
            call.reply(body)
            return
        offset = self.controller.store.committed_offset
        self.propagation.after_applied(offset, timeout_ms, lambda: call.reply(body))

    def create_topics(self, call: Call) -> None:
        b = call.request.body
        ops = []
        for t in b["topics"]:
            spec = TopicSpec(t["name"], t["num_partitions"], t["replication_factor"], t["configs"])
            ops.append((spec.name, partial(self.controller.create_topic, spec,
                                           validate_only=b["validate_only"])))
        self._topic_ops(call, ops, writes=not b["validate_only"])

    def delete_topics(self, call: Call) -> None:
        names = call.request.body["topics"]
        self._topic_ops(call, [(n, partial(self.controller.delete_topic, n)) for n in names],
                        writes=True)

    def create_partitions(self, call: Call) -> None:
        b = call.request.body
        ops = [(t["name"], partial(self.controller.create_partitions, t["name"], t["count"],
                                   b["validate_only"])) for t in b["topics"]]
        self._topic_ops(call, ops, writes=not b["validate_only"])

    def _topic_ops(self, call: Call, ops: list[tuple[str, Callable[[], None]]],
                   writes: bool) -> None:
        """Run each topic's controller operation; answer `{"topics": [{"name", "error",
        "message"}]}` once the workers applied what changed (see `_answer_when_applied`)."""
        timeout = self._timeout(call.request.body)
        results, changed = [], False
        for name, op in ops:
            try:
                op()
                results.append({"name": name, "error": 0, "message": None})
                changed = changed or writes
            except ControllerError as exc:
                results.append({"name": name, "error": int(exc.code), "message": exc.message})
            except NotControllerError as exc:
                results.append(
                    {"name": name, "error": int(ErrorCode.NOT_CONTROLLER), "message": str(exc)}
                )
        self._answer_when_applied(call, {"topics": results}, changed, timeout)

    # ---- configs -------------------------------------------------------------------------------

    def describe_configs(self, call: Call) -> dict[str, Any]:
        out = []
        for r in call.request.body["resources"]:
            entry: dict[str, Any] = {
                "type": r["type"],
                "name": r["name"],
                "error": 0,
                "message": None,
                "configs": [],
            }
            try:
                if r["type"] == "topic":
                    configs, read_only = self.controller.effective_configs(r["name"]), False
                elif r["type"] == "node":
                    self._check_node_name(r["name"])
                    configs, read_only = self.controller.node_configs(), True
                else:
                    raise ControllerError(
                        ErrorCode.INVALID_REQUEST,
                        f"resource type {r['type']!r}: allowed topic, node",
                    )
            except ControllerError as exc:
                entry.update(error=int(exc.code), message=exc.message)
            else:
                keys = r["keys"]
                entry["configs"] = [
                    {"name": k, "value": v, "source": src, "read_only": read_only}
                    for k, v, src in configs
                    if keys is None or k in keys
                ]
            out.append(entry)
        return {"resources": out}

    def _check_node_name(self, name: str) -> None:
        if name not in ("", str(self.controller.config.node_id)):
            raise ControllerError(
                ErrorCode.INVALID_REQUEST,
                f"node {name!r} is not this node ({self.controller.config.node_id})",
            )

    def incremental_alter_configs(self, call: Call) -> None:
        b = call.request.body
        out, changed = [], False
        for r in b["resources"]:
            entry: dict[str, Any] = {
                "type": r["type"],
                "name": r["name"],
                "error": 0,
                "message": None,
            }
            try:
                if r["type"] == "node":
                    self._check_node_name(r["name"])
                    raise ControllerError(
                        ErrorCode.INVALID_CONFIG,
                        "node configs are read-only: edit node.toml and restart the node",
                    )
                if r["type"] != "topic":
                    raise ControllerError(
                        ErrorCode.INVALID_REQUEST,
                        f"resource type {r['type']!r}: allowed topic, node",
                    )
                ops = [(c["name"], c["op"], c["value"]) for c in r["configs"]]
                before = self.controller.store.committed_offset
                self.controller.alter_topic_configs(r["name"], ops, b["validate_only"])
                changed = changed or self.controller.store.committed_offset != before
            except ControllerError as exc:
                entry.update(error=int(exc.code), message=exc.message)
            except NotControllerError as exc:
                entry.update(error=int(ErrorCode.NOT_CONTROLLER), message=str(exc))
            out.append(entry)
        self._answer_when_applied(call, {"resources": out}, changed, self._timeout(b))

    # ---- producer ids --------------------------------------------------------------------------

    def init_producer_id(self, call: Call) -> dict[str, Any]:
        """A fresh producer id (epoch 0) for an idempotent, non-transactional producer."""
        b = call.request.body
        if b["transactional_id"] is not None:
            return {
                "error": int(ErrorCode.COORDINATOR_NOT_AVAILABLE),
                "producer_id": -1,
                "producer_epoch": -1,
                "message": "transactions are not served by this node",
            }
        try:
            pid = self.controller.allocate_producer_id()
        except NotControllerError as exc:
            return {
                "error": int(ErrorCode.NOT_CONTROLLER),
                "producer_id": -1,
                "producer_epoch": -1,
                "message": str(exc),
            }
        return {"error": 0, "producer_id": pid, "producer_epoch": 0}
