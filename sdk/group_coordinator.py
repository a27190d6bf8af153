"""The Consumer's group seam (docs/internals.md §4): subscriptions, commits, rebalances.

`Consumer` builds one `GroupCoordinator(consumer, consumer.config)` when it has a `group_id`
and calls it from its own thread. The protocol itself (join/sync/heartbeat/leave) runs in
`GroupMembership`; this module decides what a rebalance means for the consumer:

- revoked: auto-commit the positions of the partitions going away (so the next owner resumes
  exactly where this one stopped), call `on_revoke`, stop fetching them;
- assigned: start fetching, from the committed offset or else per `auto_offset_reset`, then
  call `on_assign`;
- lost (session expired, fenced, poll timeout): no commit — someone else may own them
  already — then `on_lost` (default: `on_revoke`, as Kafka does).

Auto-commit commits the positions (the offset after the last record handed to the
application) every `auto_commit_interval_ms`, on revoke, and on close.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from qnode.sdk.assignors import ASSIGNORS
from qnode.sdk.errors import InvalidConfigError, QnodeError
from qnode.sdk.group_membership import GroupMembership, GroupSettings, OffsetAndMetadata
from qnode.sdk.types import TopicPartition

log = logging.getLogger(__name__)
Callback = Callable[[list[TopicPartition]], Any] | None


def _strategies(value: Any) -> list[str]:
    if value is None:
        return ["range", "cooperative-sticky"]
    items = [value] if isinstance(value, str | type) else list(value)
    names = []
    for item in items:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if name not in ASSIGNORS:
            raise InvalidConfigError(f"partition_assignment_strategy={value!r}: allowed are "
                                     f"{', '.join(ASSIGNORS)}")
        names.append(name)
    return names


class GroupCoordinator:
    def __init__(self, consumer: Any, config: dict[str, Any]) -> None:
        self._consumer = consumer
        self._config = config
        try:
            self._settings = GroupSettings(
                group_id=config["group_id"],
                group_instance_id=config.get("group_instance_id"),
                session_timeout_ms=config["session_timeout_ms"],
                heartbeat_interval_ms=config["heartbeat_interval_ms"],
                max_poll_interval_ms=config["max_poll_interval_ms"],
                rebalance_timeout_ms=config.get("rebalance_timeout_ms"),
                partition_assignment_strategy=_strategies(
                    config.get("partition_assignment_strategy")),
                retry_backoff_ms=config.get("retry_backoff_ms", 100),
                request_timeout_ms=config.get("request_timeout_ms", 30000),
                # how often the group looks for new partitions (and pattern matches)
                metadata_max_age_ms=config.get("metadata_max_age_ms", 300000),
                client_id=config.get("client_id") or "qnode-consumer")
        except ValueError as exc:
            raise InvalidConfigError(str(exc)) from None
        self._auto_commit = bool(config.get("enable_auto_commit", True))
        self._auto_interval = config.get("auto_commit_interval_ms", 5000) / 1000
        self._next_auto_commit = time.monotonic() + self._auto_interval
        self._membership: GroupMembership | None = None
        self._on_assign: Callback = None
        self._on_revoke: Callback = None
        self._on_lost: Callback = None

    # ---- the consumer's calls -----------------------------------------------------------

    def subscribe(self, topics: list[str] | re.Pattern[str], on_assign: Callback = None,
                  on_revoke: Callback = None, on_lost: Callback = None) -> None:
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
        if self._membership is None:
            self._membership = GroupMembership(self._settings, self._config.get("bootstrap"),
                                               self)
        if isinstance(topics, re.Pattern):
            self._consumer._subs.subscription.clear()
            self._membership.subscribe(pattern=topics.pattern)
        else:
            self._consumer._subs.subscription.clear()
            self._consumer._subs.subscription.update(topics)
            self._membership.subscribe(topics=list(topics))

    def unsubscribe(self) -> None:
        self._leave(autocommit=self._auto_commit)

    def poll(self, timeout_s: float) -> None:
        m = self._membership
        if m is None:
            return
        m.poll()
        subs = self._consumer._subs.subscription
        current = set(m.subscription())
        if current != subs:  # a regex subscription resolved to new topics
            subs.clear()
            subs.update(current)
        if self._auto_commit and time.monotonic() >= self._next_auto_commit:
            self._next_auto_commit = time.monotonic() + self._auto_interval
            positions = self._consumer._positions()
            if positions and m.is_stable():
                m.commit_async(_offsets(positions))

    def on_records(self, records: list[Any]) -> None:
        """Nothing to do: positions already moved past what the application received."""

    def commit(self, offsets: dict[TopicPartition, int], asynchronous: bool = False) -> None:
        m = self._require_membership()
        if asynchronous:
            m.commit_async(_offsets(offsets))
        else:
            m.commit_sync(_offsets(offsets))

    def committed(self, tps: list[TopicPartition],
                  timeout: float | None = None) -> dict[TopicPartition, int | None]:
        m = self._membership
        temporary = m is None
        if m is None:  # committed() works without a subscription (Kafka allows it)
            m = GroupMembership(self._settings, self._config.get("bootstrap"), self)
        try:
            found = m.committed(tps, None if timeout is None else int(timeout * 1000))
        finally:
            if temporary:
                m.close(leave=False)
        return {tp: (om.offset if om is not None else None) for tp, om in found.items()}

    def group_metadata(self) -> dict[str, Any]:
        if self._membership is None:
            return {"group_id": self._settings.group_id, "generation_id": -1, "member_id": "",
                    "group_instance_id": self._settings.group_instance_id}
        return self._membership.group_metadata()

    def close(self, autocommit: bool = True) -> None:
        self._leave(autocommit=autocommit and self._auto_commit)

    # ---- RebalanceListener: called from m.poll() on the consumer's thread ---------------

    def on_partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        if self._auto_commit:
            self._commit_positions(partitions)
        try:
            if self._on_revoke is not None:
                self._on_revoke(partitions)
        finally:
            self._drop(partitions)

    def on_partitions_lost(self, partitions: list[TopicPartition]) -> None:
        try:
            callback = self._on_lost or self._on_revoke
            if callback is not None:
                callback(partitions)
        finally:
            self._drop(partitions)

    def on_partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        consumer = self._consumer
        current = list(consumer._subs.assignment)
        consumer._set_assignment(current + [tp for tp in partitions if tp not in current])
        if partitions:
            committed = self._require_membership().committed(partitions)
            for tp, om in committed.items():
                if om is not None:
                    consumer.seek(tp, om.offset)
                # else: no position yet, so the consumer applies auto_offset_reset
        if self._on_assign is not None:
            self._on_assign(partitions)

    # ---- internals ----------------------------------------------------------------------

    def _require_membership(self) -> GroupMembership:
        if self._membership is None:
            self._membership = GroupMembership(self._settings, self._config.get("bootstrap"),
                                               self)
        return self._membership

    def _drop(self, partitions: list[TopicPartition]) -> None:
        gone = set(partitions)
        self._consumer._set_assignment([tp for tp in self._consumer._subs.assignment
                                        if tp not in gone])

    def _commit_positions(self, partitions: list[TopicPartition]) -> None:
        positions = self._consumer._positions()
        offsets = {tp: positions[tp] for tp in partitions if tp in positions}
        if not offsets or self._membership is None:
            return
        try:
            self._membership.commit_sync(_offsets(offsets))
        except QnodeError as exc:
            log.warning("commit on revoke of group %s failed: %s", self._settings.group_id, exc)

    def _leave(self, autocommit: bool) -> None:
        m = self._membership
        if m is None:
            return
        try:
            owned = sorted(self._consumer._subs.assignment)
            if owned:
                if autocommit:
                    self._commit_positions(owned)
                if self._on_revoke is not None:
                    self._on_revoke(owned)
        finally:
            self._membership = None
            m.close(leave=True)
            self._consumer._set_assignment([])


def _offsets(positions: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(int(offset)) for tp, offset in positions.items()}
