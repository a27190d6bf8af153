"""Wire handlers of the group APIs (docs/internals.md §1), plugged into the coordinator server.

Bodies arrive validated against `transport.messages` (required keys present, types right), so
a handler only checks what the schema cannot: that this coordinator owns the group's
partition of `__consumer_offsets` and has loaded it (NOT_COORDINATOR /
COORDINATOR_LOAD_IN_PROGRESS otherwise). JoinGroup and SyncGroup may answer later: the reply
callable is kept by the state machine and called when the barrier completes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from qnode.coordinator.group_coordinator import CommitItem, GroupCoordinator
from qnode.coordinator.group_model import GroupState, JoinRequest
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], str, Reply], None]  # (body, client_id, reply)
E = ErrorCode


class GroupPlacement(Protocol):
    """What the handlers need to know about where groups live."""

    def status(self, group_id: str) -> ErrorCode:
        """NONE when this coordinator leads and has loaded the group's offsets partition."""
        ...

    def find_coordinator(self, key: str, key_type: int) -> dict[str, Any]:
        """The FindCoordinator answer `{"error", "node_id", "endpoint"}` (may create the topic)."""
        ...


class GroupHandlers:
    def __init__(self, coordinator: GroupCoordinator, placement: GroupPlacement) -> None:
        self.coordinator = coordinator
        self.placement = placement

    def handlers(self) -> dict[ApiKey, Handler]:
        return {
            ApiKey.FIND_COORDINATOR: self.find_coordinator,
            ApiKey.JOIN_GROUP: self.join_group,
            ApiKey.SYNC_GROUP: self.sync_group,
            ApiKey.HEARTBEAT: self.heartbeat,
            ApiKey.LEAVE_GROUP: self.leave_group,
            ApiKey.OFFSET_COMMIT: self.offset_commit,
            ApiKey.OFFSET_FETCH: self.offset_fetch,
            ApiKey.LIST_GROUPS: self.list_groups,
            ApiKey.DESCRIBE_GROUPS: self.describe_groups,
            ApiKey.DELETE_GROUPS: self.delete_groups,
        }

    def _status(self, group_id: str) -> ErrorCode:
        if not group_id:
            return E.INVALID_GROUP_ID
        return self.placement.status(group_id)

    # ---- membership ---------------------------------------------------------------------

    def find_coordinator(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        if body["key_type"] not in (0, 1):
            return reply({"error": int(E.INVALID_REQUEST), "node_id": -1, "endpoint": "",
                          "message": f"key_type {body['key_type']} is not 0 (group) or 1"})
        if body["key_type"] == 0 and not body["key"]:
            return reply({"error": int(E.INVALID_GROUP_ID), "node_id": -1, "endpoint": ""})
        reply(self.placement.find_coordinator(body["key"], body["key_type"]))

    def join_group(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        status = self._status(body["group_id"])
        if status:
            return reply({"error": int(status), "generation_id": -1, "protocol_name": None,
                          "leader": "", "member_id": body["member_id"], "members": []})
        rebalance = body["rebalance_timeout_ms"]
        req = JoinRequest(
            body["group_id"], body["member_id"], body["group_instance_id"],
            body["session_timeout_ms"], rebalance if rebalance >= 0 else body["session_timeout_ms"],
            body["protocol_type"], [(p["name"], bytes(p["metadata"])) for p in body["protocols"]],
            client_id, "")
        self.coordinator.join_group(req, lambda r: reply(r.body()))

    def sync_group(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        status = self._status(body["group_id"])
        if status:
            return reply({"error": int(status), "assignment": b""})
        assignments = {a["member_id"]: bytes(a["assignment"]) for a in body["assignments"]}
        self.coordinator.sync_group(body["group_id"], body["generation_id"], body["member_id"],
                                    body["group_instance_id"], assignments,
                                    lambda r: reply(r.body()))

    def heartbeat(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        status = self._status(body["group_id"])
        if status:
            return reply({"error": int(status)})
        err = self.coordinator.heartbeat(body["group_id"], body["generation_id"],
                                         body["member_id"], body["group_instance_id"])
        reply({"error": int(err)})

    def leave_group(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        status = self._status(body["group_id"])
        members = body["members"]
        if status:
            return reply({"error": int(status), "members": [
                {"member_id": m["member_id"], "group_instance_id": m["group_instance_id"],
                 "error": int(status)} for m in members]})
        top, per = self.coordinator.leave_group(
            body["group_id"], [(m["member_id"], m["group_instance_id"]) for m in members])
        reply({"error": int(top), "members": [
            {"member_id": m["member_id"], "group_instance_id": m["group_instance_id"],
             "error": int(e)} for m, e in zip(members, per, strict=True)]})

    # ---- offsets ------------------------------------------------------------------------

    def offset_commit(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        items = [CommitItem(t["name"], p["partition"], p["offset"], p["leader_epoch"],
                            p["metadata"] or "")
                 for t in body["topics"] for p in t["partitions"]]

        def answer(results: list[tuple[str, int, ErrorCode]]) -> None:
            topics: dict[str, list[dict[str, int]]] = {}
            for topic, partition, err in results:
                topics.setdefault(topic, []).append({"partition": partition, "error": int(err)})
            reply({"topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})

        status = self._status(body["group_id"])
        if status:
            return answer([(i.topic, i.partition, status) for i in items])
        self.coordinator.commit_offsets(body["group_id"], body["generation_id"],
                                        body["member_id"], body["group_instance_id"], items,
                                        answer)

    def offset_fetch(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        status = self._status(body["group_id"])
        if status:
            return reply({"error": int(status), "topics": []})
        wanted = None
        if body["topics"] is not None:
            wanted = [(t["name"], p) for t in body["topics"] for p in t["partitions"]]
        found = self.coordinator.fetch_offsets(body["group_id"], wanted)
        keys = wanted if wanted is not None else sorted(found)
        topics: dict[str, list[dict[str, Any]]] = {}
        for topic, partition in keys:
            e = found.get((topic, partition))
            topics.setdefault(topic, []).append({
                "partition": partition, "offset": e.offset if e else -1,
                "leader_epoch": e.leader_epoch if e else -1,
                "metadata": e.metadata if e else "", "error": 0})
        reply({"error": 0, "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})

    # ---- admin --------------------------------------------------------------------------

    def list_groups(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        groups = [g for g in self.coordinator.groups()
                  if g.state is not GroupState.DEAD and not self.placement.status(g.group_id)]
        reply({"error": 0, "groups": [
            {"group_id": g.group_id, "protocol_type": g.protocol_type or "",
             "state": g.state.value} for g in sorted(groups, key=lambda g: g.group_id)]})

    def describe_groups(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        out = []
        for gid in body["groups"]:
            status = self._status(gid)
            group = self.coordinator.group(gid) if not status else None
            if group is None:
                out.append({"error": int(status), "group_id": gid, "state": "Dead",
                            "protocol_type": "", "protocol": "", "members": []})
                continue
            proto = group.protocol
            out.append({
                "error": 0, "group_id": gid, "state": group.state.value,
                "protocol_type": group.protocol_type or "", "protocol": proto or "",
                "members": [{
                    "member_id": m.member_id, "group_instance_id": m.group_instance_id,
                    "client_id": m.client_id, "client_host": m.client_host,
                    "metadata": m.metadata_for(proto) if proto and any(
                        n == proto for n, _ in m.protocols) else b"",
                    "assignment": m.assignment,
                } for m in group.members.values()],
            })
        reply({"groups": out})

    def delete_groups(self, body: dict[str, Any], client_id: str, reply: Reply) -> None:
        gids = list(body["groups"])
        early = {gid: self._status(gid) for gid in gids}
        local = [gid for gid in gids if not early[gid]]

        def answer(results: list[tuple[str, ErrorCode]]) -> None:
            merged = dict(early)
            merged.update(results)
            reply({"results": [{"group_id": gid, "error": int(merged[gid])} for gid in gids]})

        if not local:
            return answer([])
        self.coordinator.delete_groups(local, answer)
