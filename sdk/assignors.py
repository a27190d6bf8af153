"""Partition assignors run by the group leader: range, round-robin, cooperative-sticky.

Each maps the members' subscriptions (and the partition count of every subscribed topic) to
a list of partitions per member, with every partition of a subscribed topic given to exactly
one member subscribed to it. `range` and `roundrobin` use the eager protocol (every member
gives up everything before a rebalance); `cooperative-sticky` uses the incremental one
(KIP-429): members keep what does not move, and a partition that must move is first left out
of everyone's assignment so its owner revokes it, then handed over in the follow-up rebalance.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Protocol

from qnode.sdk.group_protocol import TP, Subscription

Assignments = dict[str, list[TP]]


class Assignor(Protocol):
    name: ClassVar[str]
    cooperative: ClassVar[bool]

    def assign(self, partitions_per_topic: dict[str, int],
               subscriptions: dict[str, Subscription]) -> Assignments: ...


def _member_order(subscriptions: dict[str, Subscription]) -> list[str]:
    return sorted(subscriptions)


class RangeAssignor:
    """Per topic, contiguous ranges of partitions to the subscribers sorted by member id."""

    name: ClassVar[str] = "range"
    cooperative: ClassVar[bool] = False

    def assign(self, partitions_per_topic: dict[str, int],
               subscriptions: dict[str, Subscription]) -> Assignments:
        out: Assignments = {m: [] for m in subscriptions}
        for topic in sorted(partitions_per_topic):
            members = [m for m in _member_order(subscriptions)
                       if topic in subscriptions[m].topics]
            if not members:
                continue
            n = partitions_per_topic[topic]
            per, extra = divmod(n, len(members))
            start = 0
            for i, m in enumerate(members):
                count = per + (1 if i < extra else 0)
                out[m] += [(topic, p) for p in range(start, start + count)]
                start += count
        return out


class RoundRobinAssignor:
    """All partitions, sorted, dealt to the members in turn (skipping non-subscribers)."""

    name: ClassVar[str] = "roundrobin"
    cooperative: ClassVar[bool] = False

    def assign(self, partitions_per_topic: dict[str, int],
               subscriptions: dict[str, Subscription]) -> Assignments:
        out: Assignments = {m: [] for m in subscriptions}
        members = _member_order(subscriptions)
        if not members:
            return out
        i = 0
        for topic in sorted(partitions_per_topic):
            for p in range(partitions_per_topic[topic]):
                for _ in range(len(members)):
                    m = members[i % len(members)]
                    i += 1
                    if topic in subscriptions[m].topics:
                        out[m].append((topic, p))
                        break
        return out


class CooperativeStickyAssignor:
    """Balanced, moves as little as possible, and never gives a partition away unrevoked."""

    name: ClassVar[str] = "cooperative-sticky"
    cooperative: ClassVar[bool] = True

    def assign(self, partitions_per_topic: dict[str, int],
               subscriptions: dict[str, Subscription]) -> Assignments:
        owners = _current_owners(partitions_per_topic, subscriptions)
        target = _sticky_target(partitions_per_topic, subscriptions, owners)
        # Two phases: a partition moving from a current owner to someone else is withheld now;
        # the owner revokes it and rejoins, and the next rebalance hands it to its new member.
        return {m: [tp for tp in tps if owners.get(tp, m) == m] for m, tps in target.items()}


def _current_owners(partitions_per_topic: dict[str, int],
                    subscriptions: dict[str, Subscription]) -> dict[TP, str]:
    """Who holds each partition now; on a conflicting claim the newest generation wins."""
    claims: dict[TP, tuple[int, str | None]] = {}
    for m in _member_order(subscriptions):
        sub = subscriptions[m]
        for tp in sub.owned_partitions:
            topic, p = tp
            if topic not in sub.topics or not 0 <= p < partitions_per_topic.get(topic, 0):
                continue
            best = claims.get(tp)
            if best is None or sub.generation > best[0]:
                claims[tp] = (sub.generation, m)
            elif sub.generation == best[0]:
                claims[tp] = (sub.generation, None)  # two claims, one generation: trust neither
    return {tp: m for tp, (_, m) in claims.items() if m is not None}


def _sticky_target(partitions_per_topic: dict[str, int], subscriptions: dict[str, Subscription],
                   owners: dict[TP, str]) -> Assignments:
    members = _member_order(subscriptions)
    out: Assignments = {m: [] for m in members}
    if not members:
        return out
    subscribed = {t for s in subscriptions.values() for t in s.topics}
    all_tps = [(t, p) for t in sorted(partitions_per_topic) if t in subscribed
               for p in range(partitions_per_topic[t])]
    total = len(all_tps)
    low, extra = divmod(total, len(members))
    # Keep what members own, up to the quota: the heaviest owners may keep one more.
    owned: dict[str, list[TP]] = defaultdict(list)
    for tp in all_tps:
        if tp in owners:
            owned[owners[tp]].append(tp)
    for m in sorted(members, key=lambda m: -len(owned[m])):
        quota = low + (1 if extra > 0 and len(owned[m]) > low else 0)
        if quota > low:
            extra -= 1
        out[m] = owned[m][:quota]
    taken = {tp for tps in out.values() for tp in tps}
    # Deal the rest to the least-loaded member subscribed to the topic.
    for tp in all_tps:
        if tp in taken:
            continue
        eligible = [m for m in members if tp[0] in subscriptions[m].topics]
        m = min(eligible, key=lambda m: (len(out[m]), members.index(m)))
        out[m].append(tp)
    _rebalance_heterogeneous(out, subscriptions, members)
    return out


def _rebalance_heterogeneous(out: Assignments, subscriptions: dict[str, Subscription],
                             members: list[str]) -> None:
    """With unequal subscriptions the dealing can leave someone 2+ ahead: move one at a time."""
    for _ in range(sum(len(v) for v in out.values())):
        moved = False
        for src in sorted(members, key=lambda m: -len(out[m])):
            for dst in sorted(members, key=lambda m: len(out[m])):
                if len(out[src]) - len(out[dst]) < 2:
                    break
                tp = next((tp for tp in reversed(out[src])
                           if tp[0] in subscriptions[dst].topics), None)
                if tp is not None:
                    out[src].remove(tp)
                    out[dst].append(tp)
                    moved = True
                    break
            if moved:
                break
        if not moved:
            return


ASSIGNORS: dict[str, type] = {
    a.name: a for a in (RangeAssignor, RoundRobinAssignor, CooperativeStickyAssignor)
}


def get_assignor(name: str) -> Assignor:
    """The assignor named as in Kafka's `partition.assignment.strategy`."""
    try:
        return ASSIGNORS[name]()
    except KeyError:
        raise ValueError(f"partition.assignment.strategy={name!r}: "
                         f"allowed are {', '.join(ASSIGNORS)}") from None
