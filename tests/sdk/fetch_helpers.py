"""What the fetcher tests share: one partition, and a subscription positioned on it."""

from __future__ import annotations

from qnode.sdk.subscription import SubscriptionState
from qnode.sdk.types import TopicPartition

TP = TopicPartition("t", 0)


def state(position: int) -> SubscriptionState:
    subs = SubscriptionState("earliest")
    subs.assign([TP])
    subs.seek(TP, position)
    return subs
