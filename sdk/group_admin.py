"""Admin calls on consumer groups, behind `Admin.list_groups/describe_group/...`.

`describe_group` joins three sources, as `kafka-consumer-groups.sh --describe` does: the
coordinator's DescribeGroups (state, members, their assignments), OffsetFetch (committed
offsets) and topic metadata with offsets (log end), giving per partition the owner, the
committed offset, the log end and the lag. `reset_group_offsets` only touches a group with no
active member (its consumers would overwrite the reset at their next commit).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from qnode.sdk.errors import GroupError, QnodeError, error_for
from qnode.sdk.group_protocol import Assignment, GroupProtocolError
from qnode.sdk.types import (
    GroupDescription,
    GroupPartitionOffset,
    MemberDescription,
    TopicPartition,
)
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

E = ErrorCode
_RETRY = {E.COORDINATOR_NOT_AVAILABLE, E.COORDINATOR_LOAD_IN_PROGRESS, E.NOT_COORDINATOR}
EARLIEST, LATEST = -2, -1


class GroupAdmin:
    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.timeout = admin.request_timeout_ms / 1000

    # ---- plumbing -----------------------------------------------------------------------

    def _coordinator_call(self, group_id: str, api: ApiKey, body: dict[str, Any],
                          error_of: Any = lambda b: b.get("error", 0)) -> dict[str, Any]:
        """Find the group's coordinator and call it, retrying while it moves or loads."""
        deadline = time.monotonic() + self.timeout
        while True:
            found = self.admin._call(ApiKey.FIND_COORDINATOR,
                                     {"key": group_id, "key_type": 0}).body
            err = found.get("error", 0)
            if not err:
                resp = self.admin._call_endpoint(found["endpoint"], api, body).body
                err = error_of(resp)
                if not err:
                    return resp
            if err not in _RETRY or time.monotonic() >= deadline:
                return resp if not found.get("error") else found
            time.sleep(0.1)

    # ---- the calls ----------------------------------------------------------------------

    def list_groups(self) -> list[str]:
        self.admin._fetch_metadata([])
        endpoints = sorted(set(self.admin._metadata.nodes.values()))
        groups: set[str] = set()
        if not endpoints:
            endpoints = [None]
        for ep in endpoints:
            resp = (self.admin._call(ApiKey.LIST_GROUPS, {}) if ep is None
                    else self.admin._call_endpoint(ep, ApiKey.LIST_GROUPS, {})).body
            if resp.get("error"):
                raise error_for(resp["error"], resp.get("message") or "ListGroups")
            groups.update(g["group_id"] for g in resp.get("groups") or [])
        return sorted(groups)

    def describe_group(self, group_id: str) -> GroupDescription:
        desc = self._coordinator_call(group_id, ApiKey.DESCRIBE_GROUPS, {"groups": [group_id]},
                                      lambda b: b["groups"][0].get("error", 0))["groups"][0]
        if desc.get("error"):
            raise error_for(desc["error"], f"describe group {group_id!r}")
        committed = self._committed(group_id)
        if desc["state"] == "Dead" and not committed:
            raise GroupError(f"consumer group {group_id!r} does not exist",
                             code=E.GROUP_ID_NOT_FOUND)
        members, owner = [], {}
        for m in desc.get("members") or []:
            try:
                tps = [TopicPartition(t, p) for t, p in Assignment.decode(m["assignment"]
                                                                          ).partitions]
            except GroupProtocolError:
                tps = []
            members.append(MemberDescription(m["member_id"], m.get("group_instance_id"),
                                             m.get("client_id", ""), m.get("client_host", ""),
                                             tps))
            owner.update({tp: m["member_id"] for tp in tps})
        tps = sorted(set(committed) | set(owner))
        ends = self._log_ends(sorted({tp.topic for tp in tps}))
        rows = []
        for tp in tps:
            c = committed.get(tp, -1)
            end = ends.get(tp, -1)
            lag = end - c if c >= 0 and end >= 0 else -1
            rows.append(GroupPartitionOffset(tp.topic, tp.partition, c, end, max(lag, -1),
                                             owner.get(tp)))
        return GroupDescription(group_id, desc["state"], desc.get("protocol_type", ""),
                                desc.get("protocol", ""), members, rows)

    def reset_group_offsets(self, group_id: str, topic: str,
                            to: str | int | datetime) -> dict[TopicPartition, int]:
        desc = self._coordinator_call(group_id, ApiKey.DESCRIBE_GROUPS, {"groups": [group_id]},
                                      lambda b: b["groups"][0].get("error", 0))["groups"][0]
        if desc.get("error"):
            raise error_for(desc["error"], f"describe group {group_id!r}")
        if desc["state"] not in ("Empty", "Dead"):
            raise GroupError(f"group {group_id!r} has active members (state {desc['state']}): "
                             "stop its consumers before resetting offsets",
                             code=E.NON_EMPTY_GROUP)
        targets = self._targets(topic, to)
        body = {"group_id": group_id, "generation_id": -1, "member_id": "",
                "group_instance_id": None,
                "topics": [{"name": topic, "partitions": [
                    {"partition": tp.partition, "offset": off} for tp, off in targets.items()]}]}

        def first_error(b: dict[str, Any]) -> int:
            return next((p["error"] for t in b.get("topics") or [] for p in t["partitions"]
                         if p.get("error")), b.get("error", 0))

        resp = self._coordinator_call(group_id, ApiKey.OFFSET_COMMIT, body, first_error)
        err = first_error(resp)
        if err:
            raise error_for(err, f"reset offsets of group {group_id!r}: {E(err).name}"
                            if err in E._value2member_map_ else "reset offsets")
        return targets

    def delete_group(self, group_id: str) -> None:
        resp = self._coordinator_call(group_id, ApiKey.DELETE_GROUPS, {"groups": [group_id]},
                                      lambda b: b["results"][0]["error"])
        err = resp.get("error") or resp["results"][0]["error"]
        if err == E.GROUP_ID_NOT_FOUND:
            raise GroupError(f"consumer group {group_id!r} does not exist", code=err)
        if err == E.NON_EMPTY_GROUP:
            raise GroupError(f"group {group_id!r} still has members: stop them first", code=err)
        if err:
            raise error_for(err, f"delete group {group_id!r}")

    # ---- helpers ------------------------------------------------------------------------

    def _committed(self, group_id: str) -> dict[TopicPartition, int]:
        resp = self._coordinator_call(group_id, ApiKey.OFFSET_FETCH,
                                      {"group_id": group_id, "topics": None})
        if resp.get("error"):
            raise error_for(resp["error"], f"committed offsets of group {group_id!r}")
        return {TopicPartition(t["name"], p["partition"]): p["offset"]
                for t in resp.get("topics") or [] for p in t["partitions"]
                if p.get("offset", -1) >= 0}

    def _log_ends(self, topics: list[str]) -> dict[TopicPartition, int]:
        if not topics:
            return {}
        body = self.admin._fetch_metadata(topics, include_offsets=True)
        return {TopicPartition(t["name"], p["partition"]): p.get("high_watermark", -1)
                for t in body.get("topics") or [] if not t.get("error")
                for p in t.get("partitions") or []}

    def _targets(self, topic: str, to: str | int | datetime) -> dict[TopicPartition, int]:
        body = self.admin._fetch_metadata([topic], include_offsets=True)
        entry = next((t for t in body.get("topics") or [] if t["name"] == topic), None)
        if entry is None or entry.get("error"):
            raise error_for(entry["error"] if entry else E.UNKNOWN_TOPIC_OR_PARTITION,
                            f"topic {topic!r}")
        parts = entry["partitions"]
        if isinstance(to, datetime):
            return self._by_time(topic, parts, int(to.timestamp() * 1000))
        out = {}
        for p in parts:
            start, end = p.get("log_start_offset", 0), p.get("high_watermark", 0)
            if to == "earliest":
                target = start
            elif to == "latest":
                target = end
            elif isinstance(to, int) and not isinstance(to, bool):
                target = min(max(to, start), end)  # as kafka-consumer-groups: clamp to the log
            else:
                raise ValueError(f"to={to!r}: use 'earliest', 'latest', an offset or a datetime")
            out[TopicPartition(topic, p["partition"])] = target
        return out

    def _by_time(self, topic: str, parts: list[dict[str, Any]],
                 ts: int) -> dict[TopicPartition, int]:
        by_endpoint: dict[str, list[dict[str, Any]]] = {}
        for p in parts:
            by_endpoint.setdefault(p["endpoint"], []).append(p)
        out = {}
        for ep, ps in by_endpoint.items():
            resp = self.admin._call_endpoint(ep, ApiKey.LIST_OFFSETS, {
                "isolation_level": 0, "topics": [{"name": topic, "partitions": [
                    {"partition": p["partition"], "timestamp": ts} for p in ps]}]}).body
            for t in resp.get("topics") or []:
                for r in t["partitions"]:
                    if r.get("error"):
                        raise error_for(r["error"], f"offset for time in {topic}")
                    end = next(p for p in ps if p["partition"] == r["partition"])
                    off = r["offset"] if r["offset"] >= 0 else end.get("high_watermark", 0)
                    out[TopicPartition(topic, r["partition"])] = off
        return out


__all__ = ["GroupAdmin", "QnodeError"]
