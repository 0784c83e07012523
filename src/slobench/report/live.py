"""Live progress while a run is in flight: requests done, in flight, errors, current goodput.

Judging finished requests against their SLOs takes milliseconds per batch, so it runs on the
display's own thread: the runner's callback only hands over the rows, and the event loop that
keeps the send schedule is never held up by the display.
"""

from __future__ import annotations

import queue
import threading
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

    The bar tracks the run's duration when it has one, otherwise the number of requests.
    """

    def __init__(self, console: Console, slos: SLOSet, *, total: int | None,
                 duration_s: float | None) -> None:
        self.slos = slos
        self.duration_s = duration_s
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            TaskProgressColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("running", total=duration_s if duration_s else total,
                                           status="")
        self._good: deque[tuple[float, bool]] = deque()
        self._start = time.perf_counter()
        self._inbox: queue.SimpleQueue[tuple[dict[str, Any], list[dict[str, Any]]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name="slobench-display", daemon=True)

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=5)
        self.progress.stop()

    def update(self, p: RunProgress) -> None:
        """Called on the event loop: copy the counters, hand over the rows, return at once."""
        counters = {"done": p.done, "total": p.total, "scheduled": p.scheduled,
                    "in_flight": p.in_flight, "errors": p.errors}
        self._inbox.put((counters, p.take_finished()))

    def _work(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            counters, rows = item
            while True:  # catch up: only the newest counters matter, every row does
                try:
                    nxt = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._inbox.put(None)
                    break
                counters, rows = nxt[0], rows + nxt[1]
            self._show(counters, rows)

    def _show(self, c: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        now = time.perf_counter() - self._start
        if rows:
            table = conform_records(pa.Table.from_pylist(rows))
            for ok in meets(derive(table), table, self.slos):
                self._good.append((now, bool(ok)))
        while self._good and self._good[0][0] < now - GOODPUT_WINDOW_S:
            self._good.popleft()
        span = min(now, GOODPUT_WINDOW_S) or 1.0
        goodput = sum(1 for _, ok in self._good if ok) / span
        err = f"[red]{c['errors']} err[/red]" if c["errors"] else "0 err"
        status = (f"{c['done']}/{c['total'] or c['scheduled']} done · {c['in_flight']} in "
                  f"flight · {err} · goodput {goodput:.3g}/s")
        completed = min(now, self.duration_s) if self.duration_s else c["done"]
        self.progress.update(self.task, completed=completed, status=status)
