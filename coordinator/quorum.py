"""The metadata quorum: a Raft-shaped replicated log over the metadata log (KRaft style).

The quorum's voters are this node plus its `peers`. State a voter must not forget — its
current term and whom it voted for — lives in `<metadata dir>/quorum-state` (JSON, written
atomically). A leader appends records stamped with its term (the RecordBatch's partition
leader epoch), tracks each voter's match offset, and commits an offset once a majority holds
it: with a single voter the majority is the leader itself, so an append commits as soon as it
is durable on local disk — the same rule, not a special case. A new leader's first record is
a `leader_change` of its term, which commits everything before it.

Elections here are the local half of Raft: a voter becomes candidate, bumps its term, votes
for itself, and leads once it holds a majority of votes. Vote requests and log replication to
other voters travel over ZeroMQ and arrive with the multi-node work; until then a voter of a
multi-voter quorum cannot win alone and stays a candidate, and callers get NotControllerError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnode.coordinator import records as rec
from qnode.coordinator.metadata_log import MetadataLog


class NotControllerError(Exception):
    """This voter is not the quorum leader (wire: NOT_CONTROLLER)."""


@dataclass
class QuorumState:
    """What a voter persists before answering anything (Raft's currentTerm and votedFor)."""

    current_term: int = 0
    voted_for: int | None = None

    @classmethod
    def load(cls, path: Path) -> QuorumState:
        try:
            d = json.loads(path.read_text())
            return cls(int(d["current_term"]), d.get("voted_for"))
        except FileNotFoundError:
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"current_term": self.current_term, "voted_for": self.voted_for}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass
class Quorum:
    """One voter's view of the metadata quorum over its local `MetadataLog`."""

    node_id: int
    voters: frozenset[int]
    log: MetadataLog
    state_path: Path
    state: QuorumState = field(init=False)
    leader_id: int | None = field(init=False, default=None)
    committed_offset: int = field(init=False, default=0)  # records below it are committed
    match_offsets: dict[int, int] = field(init=False, default_factory=dict)
    _listeners: list[Callable[[int, int], None]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        assert self.node_id in self.voters, "a quorum member must be one of its voters"
        self.state = QuorumState.load(self.state_path)

    def recovered(self, checkpoint_offset: int) -> None:
        """The local log was opened; records below `checkpoint_offset` are known committed (a
        checkpoint only ever covers committed records). What lies past it is committed again
        by the leader of the next term (see `_become_leader`)."""
        self.committed_offset = checkpoint_offset

    @property
    def term(self) -> int:
        return self.state.current_term

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.node_id

    def on_commit(self, listener: Callable[[int, int], None]) -> None:
        """Call `listener(old_committed, new_committed)` whenever the commit offset advances."""
        self._listeners.append(listener)

    def start_election(self) -> None:
        """Become candidate for a new term; lead if our own vote is already a majority."""
        self.state = QuorumState(self.state.current_term + 1, self.node_id)
        self.state.save(self.state_path)
        votes = {self.node_id}
        if self._is_majority(votes):
            self._become_leader()
        else:
            self.leader_id = None

    def _become_leader(self) -> None:
        """Lead the new term. As in Raft (and KRaft's LeaderChangeMessage), the new leader
        appends a record of its own term: once a majority holds it, it and every record
        before it are committed — which is how the records past the last checkpoint become
        committed again after a restart, for one voter exactly as for five."""
        self.leader_id = self.node_id
        self.match_offsets = {v: 0 for v in self.voters}
        self.match_offsets[self.node_id] = self.log.end_offset
        self.append([rec.leader_change(self.node_id, self.term, sorted(self.voters))])

    def _is_majority(self, members: set[int]) -> bool:
        return len(members & self.voters) * 2 > len(self.voters)

    def append(self, records: list[dict[str, Any]]) -> tuple[int, int]:
        """Append `records` as one atomic batch in the current term; (first, last) offset.

        Raises NotControllerError unless this voter leads. The records are committed (and
        listeners told) once a majority holds them: at once when this voter is the majority.
        """
        if not self.is_leader:
            raise NotControllerError(
                f"node {self.node_id} is not the metadata quorum leader"
                f" (leader: {self.leader_id if self.leader_id is not None else 'none'})"
            )
        first, last = self.log.append(records, self.term)
        self.match_offsets[self.node_id] = last + 1
        self._advance_commit()
        return first, last

    def record_match(self, voter: int, offset: int) -> None:
        """A follower reports it holds the log up to `offset` (exclusive)."""
        if voter in self.voters and self.is_leader:
            self.match_offsets[voter] = max(self.match_offsets.get(voter, 0), offset)
            self._advance_commit()

    def _advance_commit(self) -> None:
        # The highest offset a majority of voters hold: the median of sorted match offsets.
        matches = sorted((self.match_offsets.get(v, 0) for v in self.voters), reverse=True)
        majority_match = matches[len(self.voters) // 2]
        if majority_match > self.committed_offset:
            old, self.committed_offset = self.committed_offset, majority_match
            for listener in self._listeners:
                listener(old, majority_match)
