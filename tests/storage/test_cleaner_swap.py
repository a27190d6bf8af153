"""Atomic swap of cleaned segments: a stop after any step recovers to old or new, never a mix."""

from __future__ import annotations

import os

import pytest

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.segment_swap import (
    CLEANED,
    SWAP,
    commit_swap,
    recover_interrupted_clean,
    segment_path,
)

STEPS = ["rename-cleaned-to-swap", "commit", "delete-old", "rename-log-swap",
         "rename-index-swap", "done"]


class Stop(Exception):
    pass


def batch(base: int, n: int, tag: bytes) -> bytes:
    b = BatchBuilder(base_offset=base)
    for i in range(n):
        b.append(b"k%d" % i, tag + b"%d" % i, timestamp_ms=1)
    return b.build()


def make_dir(tmp_path):
    """Old run: segments 0 (offsets 0-9), 10 (10-19), 20 (20-29); active 30. New: 0 (0-29)."""
    for base in (0, 10, 20, 30):
        segment_path(tmp_path, base, ".log").write_bytes(batch(base, 10, b"old"))
        segment_path(tmp_path, base, ".index").write_bytes(b"old-index-%d" % base)
        segment_path(tmp_path, base, ".timeindex").write_bytes(b"old-tindex-%d" % base)
    new_log = batch(0, 5, b"new") + batch(25, 5, b"new")
    segment_path(tmp_path, 0, ".log", CLEANED).write_bytes(new_log)
    segment_path(tmp_path, 0, ".index", CLEANED).write_bytes(b"new-index")
    segment_path(tmp_path, 0, ".timeindex", CLEANED).write_bytes(b"new-tindex")
    return new_log


def state(tmp_path):
    return sorted(os.listdir(tmp_path))


OLD = ["00000000000000000000.index", "00000000000000000000.log",
       "00000000000000000000.timeindex", "00000000000000000010.index",
       "00000000000000000010.log", "00000000000000000010.timeindex",
       "00000000000000000020.index", "00000000000000000020.log",
       "00000000000000000020.timeindex", "00000000000000000030.index",
       "00000000000000000030.log", "00000000000000000030.timeindex"]
NEW = ["00000000000000000000.index", "00000000000000000000.log",
       "00000000000000000000.timeindex", "00000000000000000030.index",
       "00000000000000000030.log", "00000000000000000030.timeindex"]


def test_full_swap_replaces_run(tmp_path):
    new_log = make_dir(tmp_path)
    seen = []
    commit_swap(tmp_path, 0, [0, 10, 20], hook=seen.append)
    assert state(tmp_path) == NEW
    assert segment_path(tmp_path, 0, ".log").read_bytes() == new_log
    assert segment_path(tmp_path, 0, ".index").read_bytes() == b"new-index"
    assert seen == ["rename-cleaned-to-swap", "commit", "delete-old", "delete-old",
                    "delete-old", "rename-log-swap", "rename-index-swap",
                    "rename-index-swap", "done"]
    assert recover_interrupted_clean(tmp_path) == []


@pytest.mark.parametrize("stop_at", range(9))
def test_stop_after_any_step_recovers_to_old_or_new(tmp_path, stop_at):
    new_log = make_dir(tmp_path)
    old_first = segment_path(tmp_path, 0, ".log").read_bytes()
    count = [0]

    def hook(step):
        if count[0] == stop_at:
            raise Stop(step)
        count[0] += 1

    with pytest.raises(Stop) as stopped:
        commit_swap(tmp_path, 0, [0, 10, 20], hook=hook)
    step = stopped.value.args[0]
    actions = recover_interrupted_clean(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.endswith((CLEANED, SWAP))]
    if step in ("rename-cleaned-to-swap", "commit"):
        assert state(tmp_path) == OLD, actions
        assert segment_path(tmp_path, 0, ".log").read_bytes() == old_first
        assert segment_path(tmp_path, 0, ".index").read_bytes() == b"old-index-0"
    else:
        assert state(tmp_path) == NEW, actions
        assert segment_path(tmp_path, 0, ".log").read_bytes() == new_log
        assert segment_path(tmp_path, 0, ".index").read_bytes() == b"new-index"
        assert segment_path(tmp_path, 0, ".timeindex").read_bytes() == b"new-tindex"
    assert segment_path(tmp_path, 30, ".log").exists()
    assert recover_interrupted_clean(tmp_path) == []  # idempotent


def test_swap_without_cleaned_log_is_refused(tmp_path):
    make_dir(tmp_path)
    segment_path(tmp_path, 0, ".log", CLEANED).unlink()
    with pytest.raises(FileNotFoundError):
        commit_swap(tmp_path, 0, [0, 10, 20])
    assert segment_path(tmp_path, 10, ".log").exists()


def test_recovery_ignores_unrelated_files(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "leader-epoch-checkpoint").write_text("0\n0\n")
    (tmp_path / "00000000000000000007.snapshot").write_bytes(b"x")
    recover_interrupted_clean(tmp_path)
    assert (tmp_path / "leader-epoch-checkpoint").exists()
    assert (tmp_path / "00000000000000000007.snapshot").exists()
    assert state(tmp_path) == sorted(OLD + ["00000000000000000007.snapshot",
                                            "leader-epoch-checkpoint"])
