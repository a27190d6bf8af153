"""verify.py: the exactly-once check catches loss and duplicates, on real id files."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnode.loadtest.payload import make_id
from qnode.loadtest.verify import VerificationError, acked_log, consumed_log, main, verify


def _write(ids_dir: Path, acked: dict[int, list[int]], consumed: dict[int, list[int]],
           group: str = "g") -> None:
    for producer, seqs in acked.items():
        log = acked_log(ids_dir, producer)
        for s in seqs:
            log.append(make_id(producer, s))
        log.close()
    for consumer, ids in consumed.items():
        log = consumed_log(ids_dir, group, consumer)
        for rid in ids:
            log.append(rid)
        log.close()


def test_all_consumed_once_passes(tmp_path: Path) -> None:
    ids = [make_id(p, s) for p in (0, 1) for s in range(1000)]
    _write(tmp_path, {0: list(range(1000)), 1: list(range(1000))},
           {0: ids[::2], 1: ids[1::2]})
    result = verify(tmp_path, ["g"])
    assert result.ok, result.lines()
    assert result.acked == 2000
    assert result.groups[0].consumed == 2000
    result.raise_if_failed()


def test_missing_record_fails_and_names_it(tmp_path: Path) -> None:
    _write(tmp_path, {3: list(range(10))}, {0: [make_id(3, s) for s in range(10) if s != 7]})
    result = verify(tmp_path, ["g"])
    assert not result.ok
    g = result.groups[0]
    assert g.missing == 1 and g.missing_sample == [make_id(3, 7)]
    with pytest.raises(VerificationError, match="missing=1"):
        result.raise_if_failed()


def test_duplicate_fails(tmp_path: Path) -> None:
    ids = [make_id(0, s) for s in range(5)]
    _write(tmp_path, {0: list(range(5))}, {0: ids, 1: [ids[2]]})
    result = verify(tmp_path, ["g"])
    assert not result.ok
    assert result.groups[0].duplicates == 1
    assert result.groups[0].duplicate_sample == [ids[2]]


def test_unacknowledged_but_consumed_is_allowed_and_counted(tmp_path: Path) -> None:
    # A send whose answer was lost (worker killed) may still have landed: at-least-once.
    ids = [make_id(0, s) for s in range(5)]
    _write(tmp_path, {0: list(range(4))}, {0: ids})
    result = verify(tmp_path, ["g"])
    assert result.ok
    assert result.groups[0].unacknowledged == 1


def test_group_that_consumed_nothing_fails(tmp_path: Path) -> None:
    _write(tmp_path, {0: [0, 1]}, {})
    result = verify(tmp_path, ["g"])
    assert not result.ok and result.groups[0].missing == 2


def test_each_group_checked_on_its_own(tmp_path: Path) -> None:
    ids = [make_id(0, s) for s in range(3)]
    _write(tmp_path, {0: [0, 1, 2]}, {0: ids}, group="a")
    _write(tmp_path, {}, {0: ids[:2]}, group="b")
    result = verify(tmp_path)
    by_name = {g.group: g for g in result.groups}
    assert by_name["a"].ok and not by_name["b"].ok


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, {0: [0, 1]}, {0: [make_id(0, 0)]})
    assert main([str(tmp_path), "--group", "g"]) == 1
    assert "FAIL" in capsys.readouterr().out
