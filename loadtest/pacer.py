"""The pace of a load-test consumer: a fixed processing rate held on a monotonic schedule.

A paced consumer stands for a downstream service that can do `rate` records a second and no
more. Record k of a busy stretch is due at `anchor + k / rate`; the pacer sleeps until the
next record is due. What it must get right on a small, shared box:

- A short stall of the consumer's own making or the machine's -- a synchronous commit, a
  fetch answer that came late, a few tens of milliseconds without a CPU -- is caught up:
  the schedule runs on while the consumer is stalled, and the records that fell due are then
  processed without sleeping. So the rate measured over a second stays at `rate`.
- It never banks more than `catchup_s` of schedule, so a long stall is not followed by a
  sprint that would make the consume rate look higher than the service can go.
- `idle()` (a poll found nothing: the consumer is caught up with the log) restarts the
  schedule at now: waiting for data is not a stall to be made up for.

Clock and sleep are passed in (monotonic seconds), so the tests can drive it exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CATCHUP_S = 0.5     # most schedule a stalled consumer may make up for
MIN_SLEEP_S = 0.002  # sleep only when this far ahead: fewer, longer sleeps


class Pacer:
    """Lets `rate` records/s through; rate <= 0: no limit."""

    def __init__(self, rate: float, catchup_s: float = CATCHUP_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        assert catchup_s >= 0
        self.rate = rate
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.catchup_s = catchup_s
        self._clock = clock
        self._sleep = sleep
        self.next_due = clock()  # when the next record may be processed
        self.dropped_s = 0.0     # schedule given up (stalls longer than catchup_s)

    def take(self, n: int = 1) -> None:
        """Wait until `n` more records may be processed (on the schedule)."""
        if not self.interval:
            return
        now = self._clock()
        floor = now - self.catchup_s
        if self.next_due < floor:
            self.dropped_s += floor - self.next_due
            self.next_due = floor
        due = self.next_due
        self.next_due = due + n * self.interval
        # Sleep until the last of the n is due: their processing takes that long.
        ahead = self.next_due - self.interval - now
        if ahead > MIN_SLEEP_S:
            self._sleep(ahead)

    def idle(self) -> None:
        """Nothing to process right now: the schedule restarts when records come again."""
        self.next_due = max(self.next_due, self._clock())
