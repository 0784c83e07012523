"""One monotonic clock per run: every time in a run is a perf_counter_ns offset from its start."""

from __future__ import annotations

import time

NS_PER_S = 1_000_000_000


class RunClock:
    """Seconds since the run started, from ``time.perf_counter_ns`` (monotonic, high resolution)."""

    __slots__ = ("start_ns", "wall_start")

    def __init__(self) -> None:
        self.start_ns = time.perf_counter_ns()
        self.wall_start = time.time()  # only for humans: when the run began, as a Unix time

    def restart(self) -> None:
        """Move the origin to now: called when dispatch begins, so set-up never eats schedule."""
        self.start_ns = time.perf_counter_ns()
        self.wall_start = time.time()

    def start_at(self, start_ns: int) -> None:
        """Put the origin at a given ``perf_counter_ns`` instant, possibly in the future (times
        before it are negative). Sharded workers all take the parent's one start instant:
        ``perf_counter_ns`` is CLOCK_MONOTONIC on Linux, common to every process on a machine."""
        self.start_ns = start_ns
        self.wall_start = time.time() + (start_ns - time.perf_counter_ns()) / NS_PER_S

    def now(self) -> float:
        return (time.perf_counter_ns() - self.start_ns) / NS_PER_S

    def to_ns(self, offset_s: float) -> int:
        """Absolute perf_counter_ns of an offset, for sleeping to an absolute schedule."""
        return self.start_ns + round(offset_s * NS_PER_S)
