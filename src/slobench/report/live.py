"""Live progress while a run is in flight: requests done, in flight, errors, current goodput."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from slobench.client.runner import Progress as RunProgress
from slobench.schema import conform_records
from slobench.slo.metrics import derive, meets
from slobench.slo.spec import SLOSet

GOODPUT_WINDOW_S = 10.0


class LiveDisplay:
    """A rich progress bar fed by the runner's progress callback (called about twice a second).

    The bar tracks requests when their number is known, otherwise the run's duration.
    """

    def __init__(self, console: Console, slos: SLOSet, *, total: int | None,
                 duration_s: float | None) -> None:
        self.slos = slos
        self.duration_s = duration_s
        self.total = total
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            TaskProgressColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("running", total=duration_s if duration_s else total,
                                           status="")
        self._good: deque[tuple[float, bool]] = deque()
        self._start = time.perf_counter()

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, p: RunProgress) -> None:
        now = time.perf_counter() - self._start
        rows = p.take_finished()
        if rows:
            table = conform_records(pa.Table.from_pylist(rows))
            met = meets(derive(table), table, self.slos)
            for ok in met:
                self._good.append((now, bool(ok)))
        while self._good and self._good[0][0] < now - GOODPUT_WINDOW_S:
            self._good.popleft()
        span = min(now, GOODPUT_WINDOW_S) or 1.0
        goodput = sum(1 for _, ok in self._good if ok) / span
        err = f"[red]{p.errors} err[/red]" if p.errors else "0 err"
        status = (f"{p.done}/{p.total if p.total else p.scheduled} done · {p.in_flight} in flight"
                  f" · {err} · goodput {goodput:.3g}/s")
        completed = min(now, self.duration_s) if self.duration_s else p.done
        self.progress.update(self.task, completed=completed, status=status)
