"""Drive a target with a Workload under a LoadPlan; every finished request goes to the journal.

One asyncio event loop (uvloop when available) on one monotonic clock. The open-loop dispatcher
sleeps to each absolute arrival time, then yields to the loop in a tight poll for the last
``SPIN_S`` so sends are sub-millisecond accurate without blocking network reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from slobench.client.backends.base import Backend
from slobench.client.http1 import ConnectionPool
from slobench.client.journal import Journal
from slobench.client.pacing import LoadPlan
from slobench.client.result import RequestResult
from slobench.clock import RunClock
from slobench.prompts.images import ImagePrompter
from slobench.prompts.synth import PromptSynthesizer
from slobench.schema import session_links

SPIN_S = 0.0015  # uvloop timers have millisecond resolution: sleep to within this, then poll
PREPARE_AHEAD = 256  # payloads built ahead of the schedule, in slack time
BIG_PROMPT_TOKENS = 8192  # prompts from this long are re-tokenized off the event loop
HEALTH_INTERVAL_S = 0.5
DRAIN_MARGIN_S = 1.0  # the end-of-run wait beyond the per-request time limit


@dataclass(frozen=True)
class Timeouts:
    request_s: float = 600.0  # whole request
    connect_s: float = 10.0
    stall_s: float = 60.0  # longest silence between two reads of a response


@dataclass
class Progress:
    """Live counters, read by the progress display."""

    total: int | None = None
    scheduled: int = 0
    done: int = 0
    in_flight: int = 0
    errors: int = 0
    finished: list[dict[str, Any]] = field(default_factory=list)  # rows not yet seen by display

    def take_finished(self) -> list[dict[str, Any]]:
        rows, self.finished = self.finished, []
        return rows


@dataclass
class RunOutcome:
    interrupted: bool
    schedule_end_s: float  # when dispatch of new requests (session follow-ups included) ended
    end_s: float  # when the last request finished or was cancelled
    sent: int
    cpu_samples: list[float]  # client CPU utilisation (fraction of one core) per interval
    spin_s: float  # wall time spent polling just before sends
    polls: int  # idle poll iterations
    poll_cost_s: float  # measured CPU per idle poll iteration


class Runner:
    def __init__(self, workload: pa.Table, backend: Backend, plan: LoadPlan, *,
                 journal: Journal, clock: RunClock | None = None,
                 timeouts: Timeouts = Timeouts(),
                 synthesizer: PromptSynthesizer, images: ImagePrompter | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 worker: int | None = None, user_starts: list[float] | None = None) -> None:
        """``worker``: this Runner's shard index in a sharded run (written to every record);
        ``user_starts``: closed loop / ramp, when each of this Runner's users starts (default:
        the plan's users all at 0, or its ramp), for a shard holding a share of the users."""
        self.backend = backend
        self.worker = worker
        self._user_starts = user_starts
        self.plan = plan.validate()
        self.journal = journal
        self.clock = clock or RunClock()
        self.timeouts = timeouts
        self.on_progress = on_progress
        self.synthesizer = synthesizer
        self.images = images if synthesizer.chat else None  # completions cannot carry images
        self.images_dropped = 0  # rows whose images the completions API could not carry
        order = np.argsort(workload["arrival_s"].to_numpy(), kind="stable")
        wl = workload.take(pa.array(order))
        self._ids: list[str] = wl["request_id"].to_pylist()
        self._clients: list[str] = wl["client_id"].to_pylist()
        self._apps: list[str] = wl["app"].to_pylist()
        self._arrivals: list[float] = wl["arrival_s"].to_pylist()
        self._think: list[float] = wl["think_s"].to_pylist()
        self._inputs: list[int] = wl["input_tokens"].to_pylist()
        self._outputs: list[int] = wl["output_tokens"].to_pylist()
        self._prompts: list[str | None] = wl["prompt"].to_pylist()
        blocks = wl["prefix_blocks"].combine_chunks()
        if isinstance(blocks, pa.ChunkedArray):  # pyarrow < 16
            blocks = (blocks.chunk(0) if blocks.num_chunks
                      else pa.array([], pa.list_(pa.int64())))
        self._block_offsets = blocks.offsets.to_numpy()
        self._block_values = blocks.values.to_numpy()
        imgs = wl["image_tokens"].combine_chunks()
        if isinstance(imgs, pa.ChunkedArray):  # pyarrow < 16
            imgs = imgs.chunk(0) if imgs.num_chunks else pa.array([], pa.list_(pa.int64()))
        self._image_offsets = imgs.offsets.to_numpy()
        self._image_values = imgs.values.to_numpy()
        self._n = len(self._ids)
        # Sessions: a follow-up turn is sent think_s after the turn before it finished (and not
        # before its arrival_s); only session starts follow the open-loop schedule.
        prev, nxt = session_links(wl)
        self._next_turn: list[int] = nxt.tolist()
        self._has_prev: list[bool] = (prev >= 0).tolist()
        self._first_prompts: dict[int, str] = {}  # prepared first turns whose text is history
        self._starts: list[int] = np.flatnonzero(prev < 0).tolist()
        self._last_followup_s = 0.0  # follow-ups are sent after the dispatcher has ended
        self._payloads: dict[int, bytes] = {}
        self._prepared_upto = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._interrupted = False
        self._sigints = 0
        self._spin_s = 0.0
        self._polls = 0  # empty-handed loop iterations of the send poll
        self._poll_cost_s = 0.0  # CPU of one such iteration, measured at start
        self._next = 0  # closed loop: next workload row to take
        self._cycle = 0
        self._sent = 0
        limit = plan.max_requests
        total = self._n if plan.mode == "open" else None
        if limit is not None:
            total = limit if total is None else min(total, limit)
        self.progress = Progress(total=total)
        self._pool: ConnectionPool | None = None
        self._sem = (asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None)
        self.cpu_samples: list[float] = []  # filled while running (see _monitor)
        # rows whose big prompt is being re-tokenized on a thread (see _check_on_thread)
        self._big_checks: dict[int, asyncio.Future[str]] = {}

    @property
    def sent(self) -> int:
        """Requests sent so far (started, whatever their outcome)."""
        return self._sent

    # -- payloads ----------------------------------------------------------------------------

    def _payload(self, i: int, suffix: str = "") -> bytes:
        payload = None if suffix else self._payloads.pop(i, None)
        if payload is None:  # no slack to build it ahead: skip the re-tokenizing check
            if self._big_checks and not suffix:
                self._big_checks.pop(i, None)  # a check still running is not waited for
            payload = self._build(i, check=False, suffix=suffix)
        return payload

    def _is_big(self, i: int) -> bool:
        """A row sent on its own (a lone request or a session's first turn) whose synthesized
        text prompt is long enough that re-tokenizing it would stall the streams being read
        (0.5 s for 120k tokens with a HF tokenizer)."""
        return (self._inputs[i] >= BIG_PROMPT_TOKENS and self._prompts[i] is None
                and self._image_offsets[i + 1] == self._image_offsets[i])

    def _check_on_thread(self, i: int) -> None:
        """Build row ``i``'s text on the loop (a slice of the corpus: milliseconds), re-tokenize
        it on a thread (HF tokenizers release the GIL), and store the payload once checked."""
        checks = self._big_checks
        if i in checks:
            return
        a, b = self._block_offsets[i], self._block_offsets[i + 1]
        blocks = self._block_values[a:b].tolist() if b > a else ()
        synth, rid, n = self.synthesizer, self._ids[i], int(self._inputs[i])
        text = synth.text(rid, n, blocks)
        future = asyncio.get_running_loop().run_in_executor(None, synth.fit, rid, text, n)
        checks[i] = future

        def checked(done: asyncio.Future[str]) -> None:
            if checks.get(i) is not done:  # sent meanwhile, unchecked
                if not done.cancelled():
                    done.exception()  # retrieved: nothing to log
                return
            del checks[i]
            if done.cancelled() or done.exception() is not None:
                return  # _payload builds it at send time
            text = done.result()
            self._payloads[i] = self.backend.prepare(text, max(int(self._outputs[i]), 1))
            if self._next_turn[i] >= 0:  # a session's first turn: the next turn's history
                self._first_prompts[i] = text

        future.add_done_callback(checked)

    def _image_tokens(self, i: int) -> list[int]:
        a, b = self._image_offsets[i], self._image_offsets[i + 1]
        return self._image_values[a:b].tolist() if b > a else []

    def _prompt(self, i: int, check: bool = True, suffix: str = ""
                ) -> str | list[dict[str, Any]]:
        """Row ``i`` as a standalone request: its own text, or synthesized text of exactly its
        input_tokens; with images (chat), the images first, sized by the vision encoder, and
        the text taking the tokens they leave."""
        prompt = self._prompts[i]
        images = self._image_tokens(i)
        if images and self.images is None:
            self.images_dropped += 1
            images = []
        cost = self.images.cost(images) if images else 0  # type: ignore[union-attr]
        if prompt is None:
            a, b = self._block_offsets[i], self._block_offsets[i + 1]
            blocks = self._block_values[a:b].tolist() if b > a else ()
            synth = self.synthesizer
            make = synth.exact if check else synth.text
            prompt = make(self._ids[i] + suffix, self._inputs[i] - cost, blocks)
            if not check:
                synth.stats.unchecked += 1
        if images:
            parts = self.images.parts(prompt, images, seed=self._ids[i] + suffix)  # type: ignore[union-attr]
            return [{"role": "user", "content": parts.parts}]
        return prompt

    def _build(self, i: int, check: bool = True, suffix: str = "") -> bytes:
        prompt = self._prompt(i, check, suffix)
        if self._next_turn[i] >= 0 and not suffix:
            self._first_prompts[i] = prompt
        return self.backend.prepare(prompt, max(int(self._outputs[i]), 1))

    # -- sessions ----------------------------------------------------------------------------

    async def _follow_up_payload(self, i: int, history: list[dict[str, str]] | str,
                                 suffix: str) -> tuple[bytes, list[dict[str, str]] | str]:
        """:meth:`_turn_payload` of a follow-up; one of ``BIG_PROMPT_TOKENS`` or more (its
        whole history re-tokenized: 0.5 s for 120k tokens with a HF tokenizer) is built on a
        thread, so the streams being read meanwhile do not stall."""
        if self._inputs[i] < BIG_PROMPT_TOKENS or self._prompts[i] is not None:
            return self._turn_payload(i, history, suffix)
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._turn_payload, i, history, suffix, off_loop=True))

    def _turn_payload(self, i: int, history: list[dict[str, str]] | str | None, suffix: str,
                      *, off_loop: bool = False) -> tuple[bytes, list[dict[str, str]] | str]:
        """Payload of row ``i`` of a session, and what it sends (the history of the next
        turn): a first turn stands alone; a follow-up carries the earlier prompts and the
        server's actual answers plus a new message, sized to the row's input_tokens."""
        if history is None:
            prompt = None if suffix else self._first_prompts.pop(i, None)
            payload = None if suffix else self._payloads.pop(i, None)
            if self._big_checks and not suffix:
                self._big_checks.pop(i, None)  # a check still running is not waited for
            if prompt is None or payload is None:
                prompt = self._prompt(i, check=False, suffix=suffix)
                payload = self.backend.prepare(prompt, max(int(self._outputs[i]), 1))
            return payload, prompt
        given = self._prompts[i]
        images = self._image_tokens(i) if self.images is not None else []
        sent: list[dict[str, Any]] | str
        if given is not None:
            sent = (history + "\n" + given if isinstance(history, str)
                    else [*history, {"role": "user", "content": given}])
        else:  # the images of the whole history count; only new ones are attached below
            cost = self.images.cost(images) if images else 0  # type: ignore[union-attr]
            sent = self.synthesizer.follow_up(self._ids[i] + suffix, self._inputs[i] - cost,
                                              history, off_loop=off_loop)
        if images and isinstance(sent, list):
            new = images[_count_images(history):]
            if new:
                last = sent[-1]
                parts = self.images.parts(last["content"], new, seed=self._ids[i] + suffix)  # type: ignore[union-attr]
                sent = [*sent[:-1], {"role": "user", "content": parts.parts}]
        return self.backend.prepare(sent, max(int(self._outputs[i]), 1)), sent

    def _with_answer(self, sent: list[dict[str, Any]] | str, res: RequestResult
                     ) -> list[dict[str, str]] | str:
        answer = "".join(res.answer or ())
        if isinstance(sent, str):
            if self.synthesizer.chat:
                return [{"role": "user", "content": sent}, {"role": "assistant", "content": answer}]
            return sent + answer
        return [*sent, {"role": "assistant", "content": answer}]

    def _prepare_ahead(self, i: int, budget_s: float) -> None:
        """Build upcoming payloads while there is slack before the next send."""
        deadline = time.perf_counter() + budget_s
        j = max(self._prepared_upto, i)
        while j < min(i + PREPARE_AHEAD, self._n) and time.perf_counter() < deadline:
            if j not in self._payloads and not self._has_prev[j]:  # follow-ups need history
                if self._is_big(j):
                    self._check_on_thread(j)
                else:
                    self._payloads[j] = self._build(j)
            j += 1
        self._prepared_upto = j

    # -- timing ------------------------------------------------------------------------------

    async def _sleep_until(self, t: float, i: int | None = None) -> None:
        clock = self.clock
        while True:
            delta = t - clock.now()
            if delta <= 0 or self._stop.is_set():
                return
            if delta > SPIN_S:
                if i is not None and delta > 0.004:
                    self._prepare_ahead(i, min(delta - 0.003, 0.05))
                    delta = t - clock.now()
                if delta > SPIN_S:
                    await asyncio.sleep(min(delta - SPIN_S, 0.1))
                continue
            spin_start = time.perf_counter()
            polls = 0
            while clock.now() < t:
                await asyncio.sleep(0)  # poll: network callbacks still run
                polls += 1
            self._spin_s += time.perf_counter() - spin_start
            self._polls += polls
            return

    # -- requests ----------------------------------------------------------------------------

    def _result_for(self, i: int, scheduled: float, suffix: str = "") -> RequestResult:
        return RequestResult(self._ids[i] + suffix, self._clients[i], self._apps[i], scheduled,
                             int(self._inputs[i]))

    async def _execute(self, i: int, scheduled: float, suffix: str = "", *,
                       payload: bytes | None = None, keep_answer: bool = False
                       ) -> RequestResult:
        """Send row ``i`` (its prepared payload unless one is given); the result, whose
        ``done_s`` is set when it finished or failed."""
        res = self._result_for(i, scheduled, suffix)
        if keep_answer:
            res.answer = []
        progress = self.progress
        progress.in_flight += 1
        self._sent += 1
        try:
            if payload is None:
                payload = self._payload(i, suffix)
            if self._sem is not None:
                waited_from = self.clock.now()
                try:
                    await self._sem.acquire()
                except asyncio.CancelledError:
                    res.fail("cancelled", "cancelled while queued for a concurrency slot",
                             self.clock.now())
                    raise
                res.queue_s = self.clock.now() - waited_from
                try:
                    await self._send(payload, res)
                finally:
                    self._sem.release()
            else:
                await self._send(payload, res)
        except asyncio.CancelledError:
            if res.status != "cancelled" or res.done_s is None:
                res.fail("cancelled", "cancelled before completion", self.clock.now())
        except Exception as exc:  # a bug in parsing must not kill the run: classify, keep going
            res.fail("protocol_error", f"client error: {type(exc).__name__}: {exc}",
                     self.clock.now())
        finally:
            progress.in_flight -= 1
            progress.done += 1
            if res.status != "ok":
                progress.errors += 1
            row = res.to_row()
            if self.worker is not None:
                row["worker"] = self.worker
            self.journal.append(row)
            if self.on_progress is not None:  # only a live display consumes them
                progress.finished.append(row)
        if res.done_s is None:
            res.done_s = self.clock.now()
        return res

    async def _send(self, payload: bytes, res: RequestResult) -> None:
        """``backend.send`` under the request's two limits: the whole request (``request_s``
        from sending) and the stall limit (no response bytes for ``stall_s``: ``res.last_io_s``,
        kept by the backend; before the response's headers, the time since sending). One timer
        per request, set for the nearer deadline and moved on when it finds the stream alive,
        instead of a timer reset per chunk. At a deadline the task is cancelled and the request
        recorded as a timeout."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None and self._pool is not None
        clock = self.clock
        stall, whole = self.timeouts.stall_s, self.timeouts.request_s
        start = clock.now()
        expired: str | None = None
        check: asyncio.TimerHandle | None = None

        def watch() -> None:
            nonlocal check, expired
            now = clock.now()
            last = res.last_io_s if res.last_io_s is not None else start
            left = min(stall - (now - last), whole - (now - start))
            if left > 0:
                check = loop.call_later(left, watch)
                return
            expired = ("the whole request took longer than its time limit "
                       f"({whole:g} s)" if now - start >= whole else
                       f"no data from the server for {stall:g} s (the stall limit)")
            task.cancel()

        check = loop.call_later(min(stall, whole), watch)
        try:
            await self.backend.send(self._pool, payload, res, clock)
        except asyncio.CancelledError:
            if expired is None:
                raise
            if hasattr(task, "uncancel"):  # 3.11+: this cancellation is handled here
                task.uncancel()
            res.fail("timeout", f"timed out: {expired}", clock.now())
        finally:
            if check is not None:
                check.cancel()

    def _spawn(self, i: int, scheduled: float) -> None:
        coro = (self._run_session(i, scheduled) if self._next_turn[i] >= 0
                else self._execute(i, scheduled))
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.progress.scheduled += 1

    def _may_send(self, t: float) -> bool:
        limit = self.plan.max_requests
        return not (self._stop.is_set() or self._past_end(t)
                    or (limit is not None and self.progress.scheduled >= limit))

    async def _run_session(self, i: int, scheduled: float) -> None:
        """Open loop: a session's turns, each sent when the one before it is done plus think_s
        (never before its own arrival_s). Turns due after the end of the run are not sent."""
        payload, sent = self._turn_payload(i, None, "")
        while True:
            j = self._next_turn[i]
            res = await self._execute(i, scheduled, payload=payload, keep_answer=j >= 0)
            if j < 0:
                return
            done = res.done_s if res.done_s is not None else self.clock.now()
            t = max(self._arrivals[j], done + self._think[j])
            if not self._may_send(t):
                return
            # built during the think time: only what runs past the send time shows as lag
            payload, sent = await self._follow_up_payload(j, self._with_answer(sent, res), "")
            await self._sleep_until(t)
            if not self._may_send(t):
                return
            self.progress.scheduled += 1
            self._last_followup_s = max(self._last_followup_s, t)
            i, scheduled = j, t

    # -- load modes --------------------------------------------------------------------------

    def _past_end(self, t: float) -> bool:
        d = self.plan.duration_s
        return d is not None and t >= d

    async def _open_loop(self) -> None:
        for i in self._starts:
            t = self._arrivals[i]
            if not self._may_send(t):
                return
            await self._sleep_until(t, i)
            if not self._may_send(t):
                return
            self._spawn(i, t)

    def _take(self) -> tuple[int, str] | None:
        """Closed loop: the first row of the next session (a lone request is a session of one);
        the Workload is cycled when a duration asks for more requests than it holds (ids of
        later cycles get a ~k suffix)."""
        limit = self.plan.max_requests
        if limit is not None and self.progress.scheduled >= limit:
            return None
        if self._next >= len(self._starts):
            if self.plan.duration_s is None or self._n == 0:
                return None
            self._next, self._cycle = 0, self._cycle + 1
        i = self._starts[self._next]
        self._next += 1
        self.progress.scheduled += 1
        return i, (f"~{self._cycle}" if self._cycle else "")

    async def _user(self, start_at: float) -> None:
        me = asyncio.current_task()
        assert me is not None
        await self._sleep_until(start_at)
        while not self._stop.is_set():
            scheduled = self.clock.now()
            if self._past_end(scheduled):
                return
            taken = self._take()
            if taken is None:
                return
            i, suffix = taken
            payload: bytes | None = None
            sent: list[dict[str, str]] | str = ""
            if self._next_turn[i] >= 0:
                payload, sent = self._turn_payload(i, None, suffix)
            while True:  # the session's turns, one after another
                j = self._next_turn[i]
                # sent from this task, not a new one: a task's first step waits a whole loop
                # iteration (every stream's reads first), which would count as send lag. While
                # the request is out, this task is what a stop cancels.
                self._tasks.add(me)
                try:
                    res = await self._execute(i, scheduled, suffix, payload=payload,
                                              keep_answer=j >= 0)
                except asyncio.CancelledError:
                    return
                finally:
                    self._tasks.discard(me)
                if j < 0:
                    break
                if res.status == "cancelled":
                    return
                think = self.plan.think_s if self.plan.think_s is not None else self._think[j]
                t = self.clock.now() + think
                if not self._may_send(t):
                    return
                # built during the think time: only what runs past the send time shows as lag
                payload, sent = await self._follow_up_payload(
                    j, self._with_answer(sent, res), suffix)
                await self._sleep_until(t)
                scheduled = t
                if not self._may_send(scheduled):
                    return
                self.progress.scheduled += 1
                self._last_followup_s = max(self._last_followup_s, scheduled)
                i = j
            think = self.plan.think_s if self.plan.think_s is not None else self._think[i]
            if think > 0:
                await self._sleep_until(self.clock.now() + think)

    async def _closed_loop(self) -> None:
        if self._user_starts is not None:
            starts = list(self._user_starts)
        elif self.plan.mode == "ramp":
            starts = self.plan.ramp_start_times()
        else:
            starts = [0.0] * self.plan.users
        users = [asyncio.get_running_loop().create_task(self._user(s)) for s in starts]
        try:
            # a user cancelled by a stop just as its request ended is no failure of the run
            outcomes = await asyncio.gather(*users, return_exceptions=True)
        finally:
            for u in users:
                u.cancel()
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome

    # -- health and progress -----------------------------------------------------------------

    async def _calibrate_poll(self, iterations: int = 2000) -> None:
        """CPU cost of one idle poll iteration, so the health check can take out the cost of
        polling itself (its share grows with the rate, not with the work) while keeping the
        network callbacks that run inside the poll as load."""
        start = time.process_time()
        for _ in range(iterations):
            await asyncio.sleep(0)
        self._poll_cost_s = (time.process_time() - start) / iterations

    async def _monitor(self, samples: list[float]) -> None:
        last_cpu, last_wall, last_polls = time.process_time(), time.perf_counter(), self._polls
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            cpu, wall, polls = time.process_time(), time.perf_counter(), self._polls
            busy = (cpu - last_cpu) - (polls - last_polls) * self._poll_cost_s
            samples.append(max(busy, 0.0) / max(wall - last_wall, 1e-9))
            last_cpu, last_wall, last_polls = cpu, wall, polls
            if self.on_progress:
                self.on_progress(self.progress)

    # -- interruption ------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop as on a first Ctrl-C: no more sends, requests in flight cancelled (and
        journaled as such). Idempotent; called on the loop (a sharded worker's parent asks)."""
        if self._interrupted:
            return
        self._interrupted = True
        self._stop.set()
        for t in list(self._tasks):
            t.cancel()

    def _on_signal(self) -> None:
        self._sigints += 1
        if self._sigints == 1:
            self.interrupt()
        else:  # second Ctrl-C: leave now; the journal keeps what finished
            self.journal.flush()
            os._exit(130)

    # -- run ---------------------------------------------------------------------------------

    async def run(self, drain_timeout_s: float | None = None, *,
                  start_gate: Callable[[], Awaitable[int | None]] | None = None) -> RunOutcome:
        """Drive the whole plan. ``start_gate`` (a sharded worker): awaited once everything is
        ready to send; it returns the shared start instant (``perf_counter_ns``, a little in the
        future) the run clock takes as its origin, or None to stop before sending anything."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        raise_open_file_limit()
        samples = self.cpu_samples
        await self._calibrate_poll()
        self.journal.start()
        monitor = loop.create_task(self._monitor(samples))
        try:
            pool = self._pool = ConnectionPool(self.backend.url, self.clock.now,
                                               connect_timeout_s=self.timeouts.connect_s)
            try:
                self._prepare_ahead(0, 0.5)
                if start_gate is None:
                    self.clock.restart()
                else:
                    start_ns = await start_gate()
                    if start_ns is None:
                        self.interrupt()
                    else:
                        self.clock.start_at(start_ns)
                        await self._sleep_until(0.0)
                if self.plan.mode == "open":
                    await self._open_loop()
                else:
                    await self._closed_loop()
                schedule_end = self.clock.now()
                pending = list(self._tasks)
                if pending and not self._stop.is_set():
                    # a little past the request limit: a request running to its limit ends as
                    # a timeout (its own timer), not cancelled by the drain racing that timer
                    drain = (self.timeouts.request_s + DRAIN_MARGIN_S if drain_timeout_s is None
                             else drain_timeout_s)
                    done_wait = asyncio.ensure_future(asyncio.wait(pending, timeout=drain))
                    stop_wait = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait({done_wait, stop_wait},
                                       return_when=asyncio.FIRST_COMPLETED)
                    stop_wait.cancel()
                    done_wait.cancel()
                self._stop.set()  # a cancelled turn must not let its session send the next one
                for t in list(self._tasks):
                    t.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            finally:
                pool.close()
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await self.journal.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self.on_progress:
            self.on_progress(self.progress)
        if self._last_followup_s >= schedule_end:
            schedule_end = self._last_followup_s + 1e-9
        return RunOutcome(interrupted=self._interrupted, schedule_end_s=schedule_end,
                          end_s=self.clock.now(), sent=self._sent, cpu_samples=samples,
                          spin_s=self._spin_s, polls=self._polls,
                          poll_cost_s=self._poll_cost_s)


def _count_images(history: Any) -> int:
    if not isinstance(history, list):
        return 0
    return sum(1 for m in history if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C is dropped inside (main thread only): for the bounded work of finishing a run
    that has already stopped (leaving a Ray cluster, writing the run directory), which a second
    press of a double Ctrl-C would otherwise cut short, leaving the run unfinished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved if saved is not None else signal.default_int_handler)


def raise_open_file_limit() -> None:
    """One socket per request in flight: lift the soft limit on open files to the hard one, so
    a high open-loop load is not cut short by the client's own descriptor limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.new_event_loop()
