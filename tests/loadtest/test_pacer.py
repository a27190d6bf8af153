"""pacer.py: a consumer's pace on a fake clock -- the rate holds, short stalls are made up."""

from __future__ import annotations

from qnode.loadtest.pacer import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s
        self.slept += s


def _pacer(rate: float, catchup_s: float = 0.5) -> tuple[Pacer, FakeClock]:
    clock = FakeClock()
    return Pacer(rate, catchup_s, clock=clock, sleep=clock.sleep), clock


def test_holds_the_rate() -> None:
    pacer, clock = _pacer(1000.0)
    for _ in range(3000):
        pacer.take()
    # Record k is due at k / rate: the 3000th at 2.999 s.
    assert abs(clock.now - 100.0 - 2.999) < 0.003


def test_a_short_stall_is_made_up_within_the_second() -> None:
    pacer, clock = _pacer(1000.0)
    done_at = []
    for i in range(2000):
        if i == 300:
            clock.now += 0.2  # e.g. a commit, or no CPU for 200 ms
        pacer.take()
        done_at.append(clock.now - 100.0)
    first_second = sum(1 for t in done_at if t < 1.0)
    assert first_second >= 999  # made up: the second still holds its 1000 records
    assert pacer.dropped_s == 0.0


def test_a_long_stall_is_not_followed_by_a_sprint() -> None:
    pacer, clock = _pacer(1000.0, catchup_s=0.5)
    for _ in range(100):
        pacer.take()
    clock.now += 3.0  # far longer than catchup_s
    start = clock.now
    for _ in range(1500):
        pacer.take()
    # At most catchup_s worth (500 records) goes through at once; the rest at the pace.
    assert clock.now - start >= (1500 - 500) / 1000.0 - 0.01
    assert 2.4 <= pacer.dropped_s <= 2.6


def test_waiting_for_data_is_not_banked() -> None:
    pacer, clock = _pacer(100.0)
    pacer.take()
    clock.now += 0.3
    pacer.idle()  # the poll found nothing: caught up
    start = clock.now
    for _ in range(11):
        pacer.take()
    assert clock.now - start >= 0.099  # no sprint after an idle stretch


def test_no_rate_no_wait() -> None:
    pacer, clock = _pacer(0.0)
    for _ in range(10_000):
        pacer.take()
    assert clock.slept == 0.0
