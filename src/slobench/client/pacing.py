"""Load modes: when each request is scheduled and how many are in flight.

- open loop: requests go out at the Workload's ``arrival_s`` on an absolute schedule, whatever the
  server does (this is what exposes queueing; no coordinated omission);
- closed loop: N users, each sends, waits for the answer, thinks, sends again;
- step ramp: closed-loop users added k at a time every T seconds up to a maximum;
- a rate ramp is an open-loop Workload whose arrivals follow a ramping rate (see workload.arrivals).
A global concurrency cap can sit on top of any mode; time spent waiting for a slot is recorded as
``queue_s`` and still counts in TTFT and E2E, which are measured from the scheduled time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from slobench.errors import UserError

Mode = Literal["open", "closed", "ramp"]


@dataclass(frozen=True)
class LoadPlan:
    mode: Mode = "open"
    users: int = 1  # closed loop
    think_s: float | None = None  # closed loop; None: each request's own think_s from the Workload
    ramp_start: int = 1  # step ramp: start with this many users,
    ramp_step: int = 1  # add this many
    ramp_interval_s: float = 10.0  # every this many seconds,
    ramp_max: int = 8  # up to this many
    max_concurrency: int | None = None
    duration_s: float | None = None
    max_requests: int | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0

    def validate(self) -> LoadPlan:
        def bad(opt: str, why: str) -> UserError:
            return UserError(f"{opt}: {why}")

        if self.mode not in ("open", "closed", "ramp"):
            raise bad("--mode", f"unknown mode '{self.mode}'; choose open, closed or ramp")
        if self.users < 1:
            raise bad("--users", f"{self.users} users; give at least 1")
        if self.think_s is not None and self.think_s < 0:
            raise bad("--think-time", "must be >= 0")
        if self.mode == "ramp" and (self.ramp_start < 1 or self.ramp_step < 1
                                    or self.ramp_max < self.ramp_start
                                    or self.ramp_interval_s <= 0):
            raise bad("--ramp", "needs start >= 1, step >= 1, interval > 0 and max >= start")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise bad("--max-concurrency", "must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise bad("--duration", f"{self.duration_s}s; give a positive duration like 60s")
        if self.max_requests is not None and self.max_requests < 1:
            raise bad("--requests", "must be >= 1")
        if self.warmup_s < 0 or self.cooldown_s < 0:
            raise bad("--warmup/--cooldown", "must be >= 0")
        if (self.duration_s is not None
                and self.warmup_s + self.cooldown_s >= self.duration_s):
            raise bad("--warmup/--cooldown",
                      f"warm-up {self.warmup_s}s + cool-down {self.cooldown_s}s leave nothing of "
                      f"the {self.duration_s}s run to measure; shorten them")
        return self

    def ramp_start_times(self) -> list[float]:
        """When each user of a step ramp joins: k at 0, k more at T, ... up to the maximum."""
        starts: list[float] = []
        step = 0
        while len(starts) < self.ramp_max:
            joining = self.ramp_start if step == 0 else self.ramp_step
            starts += [step * self.ramp_interval_s] * min(joining, self.ramp_max - len(starts))
            step += 1
        return starts
