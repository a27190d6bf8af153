"""Memory and descriptors a log holds stay bounded as its backlog grows: a rolled segment
drops its write mapping, the active one keeps only a window behind its tail mapped-resident,
closed segments (data and indexes) are mapped while read and only a few stay mapped, a
closed segment holds one fd. Measured from /proc/self (smaps, fd), as the kernel accounts
them."""

from __future__ import annotations

import os

from storage_log_helpers import make_batch, read_all

from qnode.storage import Log, LogConfig
from qnode.storage.segment import FOLIO_ALIGN, RELEASE_CHUNK, RESIDENT_WINDOW

MiB = 1 << 20
BIG = make_batch(8, 100_000)  # ~800 KB, one batch


def mapped_files(directory: object) -> dict[str, int]:
    """Resident bytes (Rss) of every mapping of a `.log` file under `directory`, by path."""
    prefix = os.fspath(directory)
    out: dict[str, int] = {}
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping header
                path = parts[5] if len(parts) > 5 else ""
                current = path if path.startswith(prefix) and path.endswith(".log") else None
                if current is not None:
                    out.setdefault(current, 0)
            elif current is not None and parts[0] == "Rss:":
                out[current] += int(parts[1]) * 1024
    return out


def fds_under(directory: object) -> int:
    prefix = os.fspath(directory)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                n += 1
        except OSError:
            pass
    return n


def test_rolled_segment_drops_its_write_mapping_and_live_slices_keep_reading(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": str(4 * MiB)})
    log = Log.open(tmp_path / "t-0", cfg)
    for _ in range(4):
        log.append(BIG, 0)
    first = log.active_segment
    held = log.read(0, 1 << 30).slices  # a fetch still being sent across the roll
    expected = [bytes(s) for s in held]
    for _ in range(20):
        log.append(BIG, 0)
    assert len(log.segments) >= 4
    assert not any(s.mapped for s in log.closed_segments())
    assert [bytes(s) for s in held] == expected  # the view kept its mapping alive
    assert first.log_path in mapped_files(tmp_path)
    del held
    assert first.log_path not in mapped_files(tmp_path)  # the last view unmapped it
    assert list(mapped_files(tmp_path)) == [log.active_segment.log_path]
    log.close()


def test_active_segment_keeps_a_bounded_window_resident(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": str(256 * MiB)})
    log = Log.open(tmp_path / "t-0", cfg)
    log.append(BIG, 0)
    early = log.read(0, MiB).slices[0]  # a slice of the head, dropped from RSS later
    head = bytes(early[:4096])
    for _ in range(100):  # ~80 MB into one segment
        log.append(BIG, 0)
    assert len(log.segments) == 1
    resident = mapped_files(tmp_path)[log.active_segment.log_path]
    assert resident <= RESIDENT_WINDOW + RELEASE_CHUNK + 2 * FOLIO_ALIGN, resident
    assert bytes(early[:4096]) == head  # refaulted from the page cache
    log.close()
    log = Log.open(tmp_path / "t-0", cfg)  # recovery scans the tail: it stays bounded too
    assert log.log_end_offset == 101 * 8
    resident = mapped_files(tmp_path).get(log.active_segment.log_path, 0)
    assert resident <= RESIDENT_WINDOW + RELEASE_CHUNK + 2 * FOLIO_ALIGN, resident
    log.close()


def test_reading_back_a_backlog_keeps_few_segments_mapped_and_little_resident(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": str(40 * MiB)})
    log = Log.open(tmp_path / "t-0", cfg, mapped_segments=2)
    for _ in range(130):  # ~104 MB: three segments of 40 MiB
        log.append(BIG, 0)
    log.high_watermark = log.log_end_offset
    closed = log.closed_segments()
    assert len(closed) >= 2
    offset, peak = 0, 0
    while offset < log.log_end_offset:
        data = log.read(offset, MiB)
        offset = _next_offset(data)
        peak = max(peak, max(mapped_files(tmp_path).values()))
        assert log.mapped_segment_count <= 1 + 2
        del data
    assert peak <= RESIDENT_WINDOW + RELEASE_CHUNK + 2 * FOLIO_ALIGN + 2 * MiB, peak
    log.close()


def _next_offset(data: object) -> int:
    from qnode.storage.batch_reader import iter_records

    last = -1
    for s in data.slices:  # type: ignore[attr-defined]
        for r in iter_records(bytes(s)):
            last = r.offset
    return last + 1


def test_unmapped_segments_map_again_on_read_and_lru_bounds_them(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000"})
    log = Log.open(tmp_path / "t-0", cfg, mapped_segments=2)
    for _ in range(40):
        log.append(make_batch(10), 0)
    log.high_watermark = log.log_end_offset
    assert len(log.closed_segments()) >= 10
    assert read_all(log) == list(range(400))  # one read spanning every segment
    assert log.mapped_segment_count <= 3
    for seg in log.closed_segments()[:5]:  # random access: each maps again on demand
        assert read_all(log, seg.base_offset, 100)[:1] == [seg.base_offset]
        assert seg.mapped
    assert sum(s.mapped for s in log.closed_segments()) <= 2
    assert len(mapped_files(tmp_path)) <= 3
    log.close()
    log = Log.open(tmp_path / "t-0", cfg, mapped_segments=2)  # opening maps nothing closed
    assert not any(s.mapped for s in log.closed_segments())
    assert read_all(log) == list(range(400))
    log.close()


def test_closed_segment_holds_one_fd_unless_read(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000"})
    log = Log.open(tmp_path / "t-0", cfg, mapped_segments=2)
    for _ in range(30):
        log.append(make_batch(10), 0)
    closed = len(log.closed_segments())
    assert closed >= 8
    # active: .log, .index, .timeindex (an fd and its mapping's dup each); a closed
    # segment: its .log fd, plus (while mapped) one dup per mapping of .log/.index/.timeindex
    assert fds_under(tmp_path) <= closed + 6
    log.high_watermark = log.log_end_offset
    assert read_all(log) == list(range(300))
    assert fds_under(tmp_path) <= closed + 6 + 3 * 2
    log.truncate_to(log.closed_segments()[-1].base_offset + 5)  # unseal reopens an index fd
    log.append(make_batch(10), 0)
    assert read_all(log)[-1] == log.log_end_offset - 1
    log.close()
    log = Log.open(tmp_path / "t-0", cfg)
    assert fds_under(tmp_path) <= len(log.closed_segments()) + 6
    log.close()
    assert fds_under(tmp_path) == 0
