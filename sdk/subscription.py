"""What a consumer reads: its assigned partitions, their positions, pauses and pending resets.

Owned by the consumer's thread. The position is the offset of the next record to hand to the
application; `fetch_epoch` changes whenever the position is moved from outside (seek, reset,
reassignment) so fetch data that was requested for the old position is dropped, never
returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qnode.sdk.errors import ConsumerStateError
from qnode.sdk.types import TopicPartition

EARLIEST = -2  # ListOffsets timestamps
LATEST = -1


@dataclass(slots=True)
class PartitionState:
    position: int | None = None
    reset_to: int | None = None  # EARLIEST / LATEST / a timestamp to look up, pending
    paused: bool = False
    fetch_epoch: int = 0
    next_fetch_offset: int | None = None  # past the data already fetched or in flight
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1
    retry_at: float = 0.0  # after NOT_LEADER etc.: back off before fetching again


class SubscriptionState:
    """Assigned partitions (manually or by a group) and their read state."""

    def __init__(self, default_reset: str) -> None:
        if default_reset not in ("earliest", "latest", "none"):
            raise ValueError(
                f"auto_offset_reset={default_reset!r} is not one of earliest, latest, none")
        self.default_reset = default_reset
        self.assignment: dict[TopicPartition, PartitionState] = {}
        self.subscription: set[str] = set()  # topics subscribed through a group
        self._epochs = 0

    # ------------------------------------------------------------------ assignment
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Replace the assignment; partitions kept keep their position."""
        new: dict[TopicPartition, PartitionState] = {}
        for tp in partitions:
            if not isinstance(tp, TopicPartition):
                raise TypeError(f"assign() takes TopicPartition objects, not {tp!r}")
            new[tp] = self.assignment.get(tp) or PartitionState(fetch_epoch=self._bump())
        self.assignment = new

    def state(self, tp: TopicPartition) -> PartitionState:
        st = self.assignment.get(tp)
        if st is None:
            raise ConsumerStateError(f"partition {tp.topic}-{tp.partition} is not assigned")
        return st

    def _bump(self) -> int:
        self._epochs += 1
        return self._epochs

    # ------------------------------------------------------------------ positions
    def seek(self, tp: TopicPartition, offset: int) -> None:
        if offset.__class__ is not int:  # bool and float are refused too: an offset is exact
            raise TypeError(f"seek offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"seek offset must be >= 0, not {offset}")
        st = self.state(tp)
        st.position = offset
        st.reset_to = None
        st.next_fetch_offset = offset
        st.fetch_epoch = self._bump()

    def request_reset(self, tp: TopicPartition, to: int) -> None:
        st = self.state(tp)
        st.reset_to = to
        st.position = None
        st.next_fetch_offset = None
        st.fetch_epoch = self._bump()

    def needs_reset(self) -> list[TopicPartition]:
        """Partitions with no position: a pending reset, or none yet (default strategy)."""
        return [tp for tp, st in self.assignment.items()
                if st.position is None]

    def default_reset_target(self) -> int | None:
        return {"earliest": EARLIEST, "latest": LATEST}.get(self.default_reset)

    def fetchable(self) -> list[TopicPartition]:
        return [tp for tp, st in self.assignment.items()
                if not st.paused and st.position is not None]

    def positions(self) -> dict[TopicPartition, int]:
        """Current positions (what a group commits)."""
        return {tp: st.position for tp, st in self.assignment.items()
                if st.position is not None}

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.state(tp).paused = True

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.state(tp).paused = False

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, st in self.assignment.items() if st.paused}
