"""Recovery on open: tail validation past the recovery point, torn/corrupt tails, indexes,
leftovers of interrupted rolls, deletes and cleaner swaps."""

from __future__ import annotations

import os

from storage_log_helpers import make_batch, read_all

from qnode.storage import Log, LogConfig
from qnode.storage.segment import Segment, segment_path

CFG = LogConfig.from_topic_config({"segment.bytes": "6000", "index.interval.bytes": "300"})


def filled(path, n=30, records=5, cfg=CFG) -> Log:
    log = Log.open(path, cfg)
    for i in range(n):
        log.append(make_batch(records, ts=1000 + i), 0)
    return log


def active_log_file(path) -> str:
    return sorted(p for p in os.listdir(path) if p.endswith(".log"))[-1]


def test_torn_tail_is_cut_at_last_whole_batch(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path)
    leo = log.log_end_offset
    data_end = log.active_segment.size
    log.close_without_flush()
    last = path / active_log_file(path)
    whole = make_batch(5)
    # a crash mid-append leaves half a batch right after the data, in the file's reserved
    # (zero) tail
    with open(last, "r+b") as f:
        f.seek(data_end)
        f.write(whole[: len(whole) // 2])
    log = Log.open(path, CFG)
    rep = log.recovery_report
    # the header frames the whole batch; its missing half reads as the reserved zeros, so
    # the CRC check is what refuses it
    assert rep.truncated_bytes == len(whole)
    assert "CRC" in rep.truncation_reason
    assert log.log_end_offset == leo
    assert read_all(log) == list(range(leo))
    log.append(make_batch(5), 0)
    assert read_all(log) == list(range(leo + 5))
    log.close()


def test_crc_damage_in_tail_cuts_there_and_drops_later_segments(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path)
    segs = log.segments
    victim = segs[-3]
    hdr = next(iter(victim.walk(0)))
    victim_base = victim.base_offset
    log.close_without_flush()
    with open(segment_path(str(path), victim_base, ".log"), "r+b") as f:
        f.seek(hdr[0] + 70)
        b = f.read(1)
        f.seek(hdr[0] + 70)
        f.write(bytes([b[0] ^ 0xFF]))
    log = Log.open(path, CFG, recovery_point=victim_base)
    rep = log.recovery_report
    assert "CRC" in rep.truncation_reason
    assert len(rep.deleted_segments) == 2
    assert log.log_end_offset == victim_base
    assert read_all(log) == list(range(victim_base))
    log.close()


def test_only_the_tail_past_the_recovery_point_is_validated(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=20)
    log.flush()
    rp = log.recovery_point
    assert rp == 100
    for _ in range(3):
        log.append(make_batch(5), 0)
    log.close_without_flush()
    log = Log.open(path, CFG, recovery_point=rp)
    rep = log.recovery_report
    assert rep.validated_batches == 3 and not rep.truncated
    assert log.log_end_offset == 115
    assert read_all(log) == list(range(115))
    log.close()


def test_missing_and_corrupt_indexes_are_rebuilt(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=40)
    bases = [s.base_offset for s in log.segments]
    hit_before = log.offset_for_timestamp(1017)
    log.close()
    os.unlink(segment_path(str(path), bases[0], ".index"))
    os.unlink(segment_path(str(path), bases[0], ".timeindex"))
    with open(segment_path(str(path), bases[1], ".index"), "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\xff" * 16)  # nonsense last entries: positions past the end of the log
    log = Log.open(path, CFG)
    rep = log.recovery_report
    assert bases[0] in rep.rebuilt_indexes and bases[1] in rep.rebuilt_indexes
    assert read_all(log) == list(range(200))
    for off in (0, 7, 33, 77, 150):
        assert read_all(log, off)[0] == off
    assert log.offset_for_timestamp(1017) == hit_before
    log.close()


def test_untrimmed_index_of_a_crashed_active_segment(tmp_path):
    path = tmp_path / "t-0"
    cfg = LogConfig.from_topic_config({"index.interval.bytes": "100"})
    log = filled(path, n=50, cfg=cfg)
    log.flush()
    log.close_without_flush()  # indexes stay preallocated to segment.index.bytes
    idx = segment_path(str(path), 0, ".index")
    assert os.path.getsize(idx) == cfg.segment_index_bytes
    log = Log.open(path, cfg, recovery_point=250)
    assert log.recovery_report.validated_batches == 0
    assert log.active_segment.index.entries == 49
    for off in (0, 99, 249):
        assert read_all(log, off)[0] == off
    log.close()
    assert os.path.getsize(idx) == 49 * 8


def test_leftovers_are_removed(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=5)
    log.close()
    for name in ("00000000000000000000.log.deleted", "00000000000000000099.index",
                 "00000000000000000099.timeindex", "00000000000000000007.log.cleaned",
                 "leader.tmp"):
        (path / name).write_bytes(b"junk")
    log = Log.open(path, CFG)
    assert sorted(log.recovery_report.removed_files) == sorted([
        "00000000000000000000.log.deleted", "00000000000000000099.index",
        "00000000000000000099.timeindex", "00000000000000000007.log.cleaned", "leader.tmp"])
    assert read_all(log) == list(range(25))
    log.close()


def _cleaned_copy(log: Log, olds: list[Segment]) -> Segment:
    """A `.cleaned` segment holding every batch of `olds` (what a cleaner with nothing to
    drop would write)."""
    new = Segment.create(log.directory, olds[0].base_offset, index_interval_bytes=300,
                         index_max_bytes=1 << 16, suffix=".cleaned")
    for seg in olds:
        for pos, size, base, last, ts in seg.walk(0):
            new.append(seg.view(pos, pos + size), [(0, size, base, last, ts)])
    return new


def test_replace_segments_swaps_atomically(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=40)
    olds = log.segments[:3]
    end = olds[-1].next_offset
    new = _cleaned_copy(log, olds)
    gen = log.segment_generation
    log.replace_segments(olds, [new])
    assert log.segment_generation > gen
    assert log.segments[0] is new and log.segments[1].base_offset == end
    assert read_all(log) == list(range(200))
    log.close()
    names = os.listdir(path)
    assert not [n for n in names if n.endswith((".swap", ".cleaned", ".deleted"))]
    log = Log.open(path, CFG)
    assert read_all(log) == list(range(200))
    log.close()


def test_committed_swap_is_finished_on_open(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=40)
    olds = log.segments[:3]
    new = _cleaned_copy(log, olds)
    new.seal()
    new.change_suffix(".swap")  # crash right after the commit rename
    new.close()
    log.close()
    log = Log.open(path, CFG)
    rep = log.recovery_report
    assert rep.completed_swaps == [0]
    assert log.segments[0].base_offset == 0
    assert log.segments[1].base_offset == olds[-1].next_offset
    assert read_all(log) == list(range(200))
    log.close()


def test_uncommitted_clean_rolls_back(tmp_path):
    path = tmp_path / "t-0"
    log = filled(path, n=40)
    olds = log.segments[:3]
    new = _cleaned_copy(log, olds)
    new.close()
    log.close()
    log = Log.open(path, CFG)
    assert len(log.recovery_report.removed_files) == 3
    assert [s.base_offset for s in log.segments[:3]] == [s.base_offset for s in olds]
    assert read_all(log) == list(range(200))
    log.close()
