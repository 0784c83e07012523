"""One clock-agnostic continuous-batching scheduler in the style of vLLM v1.

The HTTP emulator (real clock) and the simulator (virtual clock) both drive this class: they add
requests, call :meth:`Scheduler.step` with the current time, and deliver what the step emits at its
end (``now + duration_s``). Semantics (see docs/simulator.md for the full story):

* **Steps.** Each step has a token budget (``max_num_batched_tokens``) and at most
  ``max_num_seqs`` running sequences. Running decodes go first (one token each), then the prefill
  chunks of running, partially prefilled requests, then new requests from the waiting queue. With
  chunked prefill a prompt is split across steps; without it a prompt is scheduled whole or waits.
* **Tokens.** A request's first output token is sampled at the end of the step that completes its
  prefill; every later step that decodes it emits one more. After ``max_output_tokens`` tokens it
  finishes and frees its KV blocks. No token is ever emitted by a step that did not compute it.
* **KV cache.** Paged blocks (:mod:`slobench.engine.kvcache`) are allocated as tokens are
  scheduled; prefix caching by the Workload's block hashes lets a request skip its cached leading
  blocks (at most ``prompt - 1`` tokens: the last prompt token is always computed).
* **Preemption by recompute.** When a running request needs a block and none is free (after
  evicting unreferenced cached blocks), the last admitted running request (under ``priority``: the
  lowest priority, latest arrival) is preempted: its blocks are freed and it goes back to the front
  of the waiting queue. When it runs again, its prompt *and* the tokens it had generated are
  prefilled again (minus whatever is still in the prefix cache). No new request is admitted in a
  step that preempted.
* **Rejection.** A request that can never fit (prompt + output beyond the whole KV cache, or,
  with chunked prefill off, beyond the token budget, as vLLM's ``max_model_len`` check) is not
  queued: its id is appended to ``rejected`` (reason in ``reject_reasons``) and reported in the
  ``finished`` list of the next step with no token emitted.
* **Policies.** ``fcfs``; ``priority`` (``EngineRequest.priority``, lower first, ties by
  arrival); ``slo`` (earliest first-token deadline first, with soft admission control: a waiting
  request that has not had its first token and whose deadline has passed or cannot be met given
  the prefill work ahead of it is deferred, for good, behind every request that can still make
  its deadline; it is still served, best effort). Running requests are never reordered.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any

from slobench.engine.core import EngineRequest, StepCostModel, StepResult, StepShape
from slobench.engine.kvcache import KVCache, SeqKV
from slobench.errors import UserError

__all__ = ["POLICIES", "REJECT_BUDGET", "REJECT_KV", "Scheduler", "SchedulerConfig"]

POLICIES = ("fcfs", "priority", "slo")
REJECT_KV = "prompt + output exceed KV capacity"
REJECT_BUDGET = "prompt + output exceed max_num_batched_tokens (chunked prefill is off)"

WAITING, PREFILL, DECODE, DONE, ABORTED = range(5)
_INF = float("inf")


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM-style engine settings. ``kv_capacity_tokens=None`` asks the cost model.

    ``prefix_block_tokens`` is how many prompt tokens one Workload ``prefix_blocks`` hash covers
    (None: one KV block, ``block_size``; Mooncake traces use 512); a multiple of ``block_size``.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    kv_capacity_tokens: int | None = None
    prefix_block_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"scheduler {name}={value!r} must be a whole number >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise UserError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires; raise the budget or lower max_num_seqs"
            )
        if self.policy not in POLICIES:
            raise UserError(f"scheduler policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < self.block_size:
            raise UserError(
                f"kv_capacity_tokens={self.kv_capacity_tokens} holds not even one block of "
                f"{self.block_size} tokens"
            )
        pbt = self.prefix_block_tokens
        if pbt is not None and (pbt < self.block_size or pbt % self.block_size):
            raise UserError(
                f"prefix_block_tokens={pbt} must be a multiple of block_size={self.block_size}"
            )


class _Req(SeqKV):
    """A request inside the scheduler (KV state inherited from SeqKV)."""

    __slots__ = (
        "O",
        "P",
        "R",
        "arrival",
        "chunk",
        "comp",
        "comp0",
        "deadline",
        "done_step",
        "epoch",
        "first_step",
        "g",
        "g0",
        "join",
        "phase",
        "prio",
        "rid",
        "segs",
        "seqno",
        "state",
    )

    def __init__(self, req: EngineRequest, seqno: int, hashes: list[int]) -> None:
        super().__init__(hashes)
        self.rid = req.request_id
        self.P = max(int(req.prompt_tokens), 1)  # an engine computes at least one prompt token
        self.O = max(int(req.max_output_tokens), 0)
        self.R = max(int(req.reasoning_tokens), 0)
        self.arrival = float(req.arrival_s)
        self.prio = req.priority
        ttft = req.ttft_deadline_s
        self.deadline = self.arrival + ttft if ttft is not None else _INF
        self.seqno = seqno
        self.state = WAITING
        self.comp = 0  # computed tokens (KV present); for decoders: comp0 + (step - join)
        self.g = 0  # output tokens generated; for decoders: g0 + (step - join)
        self.chunk = 0  # prefill tokens scheduled in the current step
        self.join = 0  # step index at which it began decoding
        self.comp0 = 0
        self.g0 = 0
        self.phase = 0  # decoders need a new block at steps s with s % block_size == phase
        self.epoch = 0  # bumped on preemption/abort: invalidates its finish-heap entry
        self.segs: list[int] = []  # [start, stop) step-index ranges in which it emitted tokens
        self.first_step = -1
        self.done_step = -1


def _prio_key(r: _Req) -> tuple[int, float, int]:
    return (r.prio, r.arrival, r.seqno)


class Scheduler:
    """Continuous batching with a token budget, chunked prefill, paged KV, prefix caching and
    preemption by recompute. Clock-agnostic: every call that needs a time is given ``now``."""

    def __init__(self, cost: StepCostModel, config: SchedulerConfig = SchedulerConfig()) -> None:
        self.cost = cost
        self.config = config
        bs = config.block_size
        cap_tokens = config.kv_capacity_tokens
        if cap_tokens is None:
            cap_tokens = int(cost.kv_capacity_tokens())
        if cap_tokens < bs:
            raise UserError(
                f"the KV cache holds {cap_tokens} tokens, not even one block of {bs}: the model "
                "does not fit in this GPU's memory with room for a KV cache; use more GPUs "
                "(tensor parallelism) or a smaller model"
            )
        unit_tokens = config.prefix_block_tokens or bs
        self.kv = KVCache(
            cap_tokens // bs,
            bs,
            unit_blocks=unit_tokens // bs,
            enable_caching=config.enable_prefix_caching,
        )
        self._bs = bs
        self._unit = unit_tokens // bs
        self._unit_tokens = unit_tokens
        self._budget = config.max_num_batched_tokens
        self._max_seqs = config.max_num_seqs
        self._chunked = config.enable_chunked_prefill
        self._caching = config.enable_prefix_caching
        self._policy = config.policy

        self._step = 0  # index of the next step
        self._seqno = 0
        self._active: dict[str, _Req] = {}
        self._running: dict[_Req, None] = {}  # admission order (prefilling and decoding)
        self._prefilling: dict[_Req, None] = {}  # admission order
        # decoders as one group: count, count per block phase, sum of their contexts
        self._n_dec = 0
        self._cnt = [0] * bs
        self._dec_kv = 0
        self._fin: list[tuple[int, int, int, _Req]] = []  # (finish step, seqno, epoch, req)
        # waiting queues
        self._n_waiting = 0
        self._wq: deque[_Req] = deque()  # fcfs queue; slo: preempted requests to resume first
        self._wh: list[tuple[Any, float, int, _Req]] = []  # priority / slo (EDF) heap
        self._deferred: deque[_Req] = deque()  # slo: requests that cannot make their deadline
        self._src = 0  # where the last peeked request came from (0 deque, 1 heap, 2 deferred)
        # per-step scratch
        self._pf: list[_Req] = []
        self._preempted: list[_Req] = []
        self._emitted_first: list[_Req] = []
        self._finished: list[_Req] = []
        self._dec_alloc = False
        # the state repeats step after step until something finishes/arrives (fast-forward)
        self._stable = False
        self._pending_rejects: list[str] = []
        # The simulator clears this when a finish can release new work (a session's next turn):
        # fast-forward must then stop at every finish, as it does when requests wait.
        self.fast_forward_past_finishes = True

        self.rejected: list[str] = []
        self.reject_reasons: dict[str, str] = {}
        self.preemptions_total = 0
        self.deferrals_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefill_tokens_computed = 0  # prompt and recomputed tokens computed by steps
        self.decode_tokens_computed = 0
        self.hit_tokens_total = 0  # tokens skipped thanks to the prefix cache (all admissions)
        self.lost_tokens_total = 0  # computed tokens discarded by preemption
        self.steps_total = 0
        self.max_waiting = 0
        self.max_running = 0
        self.trace: list[tuple[int, StepShape | None, int, int]] | None = None

        # soft admission control (slo): estimated prefill cost per token and per step
        if self._policy == "slo":
            n = max(2, min(self._budget, 2048))
            t1 = cost.step_time(StepShape(1, 1, 0, 0, 1.0))
            tn = cost.step_time(StepShape(1, n, 0, 0, n * (n + 1) / 2))
            self._pf_step = t1
            self._pf_tok = max(tn - t1, 0.0) / (n - 1)
        else:
            self._pf_step = self._pf_tok = 0.0

    # ---- public API ---------------------------------------------------------------------------

    def add(self, req: EngineRequest) -> None:
        """Queue a request. One that can never fit is rejected (see the module docstring)."""
        if self._add(req) is None:
            self._pending_rejects.append(req.request_id)

    def abort(self, request_id: str) -> None:
        """The client went away: free the request's KV blocks and drop it (no-op if unknown)."""
        if request_id in self._pending_rejects:
            self._pending_rejects.remove(request_id)
            return
        r = self._active.pop(request_id, None)
        if r is None:
            return
        kv = self.kv
        if r.state == WAITING:
            self._n_waiting -= 1
            kv.drop_chain(r)
        elif r.state == PREFILL:
            del self._prefilling[r]
            del self._running[r]
            kv.release(r)
        elif r.state == DECODE:
            d = self._step - r.join
            comp = r.comp0 + d
            self._n_dec -= 1
            self._cnt[r.phase] -= 1
            self._dec_kv -= comp
            r.priv = -(-comp // self._bs) - r.nu * self._unit
            del self._running[r]
            kv.release(r)
            r.segs.append(self._step)
        r.state = ABORTED
        r.epoch += 1
        self._stable = False

    def has_work(self) -> bool:
        return bool(self._running or self._n_waiting or self._pending_rejects)

    def step(self, now: float) -> StepResult | None:
        """Plan and commit one step starting at ``now``; None when there is nothing to do.

        The step's tokens are emitted (and its requests finished) at ``now + duration_s``.
        """
        rejects = self._pending_rejects
        if rejects:
            self._pending_rejects = []
        shape = self._plan(now) if (self._running or self._n_waiting) else None
        if shape is None and not self._preempted:
            if self._n_waiting:
                raise RuntimeError("scheduler made no progress with requests waiting (a bug)")
            if rejects:
                return StepResult(0.0, [], rejects, [], None)
            return None
        decoding = [r.rid for r in self._running if r.state == DECODE]
        duration = self.cost.step_time(shape) if shape is not None else 0.0
        self._commit(shape)
        emitted = [(rid, 1) for rid in decoding]
        emitted += [(r.rid, 1) for r in self._emitted_first]
        finished = [r.rid for r in self._finished]
        finished += rejects
        return StepResult(
            duration, emitted, finished, [r.rid for r in self._preempted], shape
        )

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "running": len(self._running),
            "waiting": self._n_waiting,
            "kv_usage": self.kv.usage,
            "prefix_cache_queries": self.kv.queries,
            "prefix_cache_hits": self.kv.hits,
            "preemptions_total": self.preemptions_total,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "rejected_total": len(self.rejected),
            "deferrals_total": self.deferrals_total,
            "prefill_tokens_computed": self.prefill_tokens_computed,
            "decode_tokens_computed": self.decode_tokens_computed,
            "hit_tokens_total": self.hit_tokens_total,
            "lost_tokens_total": self.lost_tokens_total,
            "steps_total": self.steps_total,
            "max_waiting": self.max_waiting,
            "max_running": self.max_running,
            "kv_capacity_tokens": self.kv.capacity_blocks * self._bs,
        }

    # ---- requests in and out ------------------------------------------------------------------

    def _reject_reason(self, prompt: int, output: int) -> str | None:
        kv_tokens = max(prompt, 1) + max(output, 1) - 1  # the last token is never computed
        if -(-kv_tokens // self._bs) > self.kv.capacity_blocks:
            return REJECT_KV
        if not self._chunked and max(prompt, 1) + output > self._budget:
            return REJECT_BUDGET
        return None

    def _add(self, req: EngineRequest) -> _Req | None:
        """Queue ``req``; returns its internal record, or None if it was rejected."""
        rid = req.request_id
        if rid in self._active:
            raise ValueError(f"request id {rid!r} is already in the scheduler")
        reason = self._reject_reason(int(req.prompt_tokens), int(req.max_output_tokens))
        if reason is not None:
            self.rejected.append(rid)
            self.reject_reasons[rid] = reason
            return None
        hashes: list[int] = []
        if self._caching and req.prefix_blocks:
            n_units = max(int(req.prompt_tokens), 1) // self._unit_tokens
            hashes = list(req.prefix_blocks[:n_units])
        r = _Req(req, self._seqno, hashes)
        self._seqno += 1
        self._active[rid] = r
        self._enqueue(r, front=False)
        self._stable = False
        return r

    def _enqueue(self, r: _Req, *, front: bool) -> None:
        policy = self._policy
        if policy == "fcfs":
            if front:
                self._wq.appendleft(r)
            else:
                self._wq.append(r)
        elif policy == "priority":
            heapq.heappush(self._wh, (r.prio, r.arrival, r.seqno, r))
        elif front:  # slo: a preempted request already had its first token: resume it first
            self._wq.appendleft(r)
        else:
            heapq.heappush(self._wh, (r.deadline, r.arrival, r.seqno, r))
        self._n_waiting += 1
        if self._n_waiting > self.max_waiting:
            self.max_waiting = self._n_waiting

    def _peek(self, now: float, ahead: int) -> _Req | None:
        """The next waiting request to try (skipping aborted ones); sets ``_src``."""
        q = self._wq
        while q:
            r = q[0]
            if r.state == WAITING:
                self._src = 0
                return r
            q.popleft()
        h = self._wh
        slo = self._policy == "slo"
        while h:
            r = h[0][3]
            if r.state != WAITING:
                heapq.heappop(h)
                continue
            if slo and r.deadline != _INF:
                est = now + self._pf_step * (1 + (ahead + r.P) // self._budget)
                est += (ahead + r.P + r.g) * self._pf_tok
                if est > r.deadline:  # soft admission control: defer behind feasible ones
                    heapq.heappop(h)
                    self._deferred.append(r)
                    self.deferrals_total += 1
                    continue
            self._src = 1
            return r
        q = self._deferred
        while q:
            r = q[0]
            if r.state == WAITING:
                self._src = 2
                return r
            q.popleft()
        return None

    def _pop(self) -> None:
        """Remove the request ``_peek`` returned."""
        src = self._src
        if src == 0:
            self._wq.popleft()
        elif src == 1:
            heapq.heappop(self._wh)
        else:
            self._deferred.popleft()
        self._n_waiting -= 1

    # ---- one step -----------------------------------------------------------------------------

    def _victim(self) -> _Req:
        if self._policy == "priority":
            return max(self._running, key=_prio_key)
        return next(reversed(self._running))

    def _preempt(self, v: _Req) -> None:
        """Evict ``v`` (recompute): free its blocks, put it at the front of the waiting queue."""
        s = self._step
        bs = self._bs
        if v.state == DECODE:
            d = s - v.join
            comp = v.comp0 + d
            v.g = v.g0 + d
            self._cnt[v.phase] -= 1
            self._n_dec -= 1
            self._dec_kv -= comp
            held = comp + 1 if self._dec_alloc else comp  # its block for this step, if allocated
            v.priv = -(-held // bs) - v.nu * self._unit
            v.comp = comp
            v.segs.append(s)
        drop_from = None
        if v.state == PREFILL:
            del self._prefilling[v]
            if v.chunk:  # scheduled in this step: its chunk is not computed
                self._pf.remove(v)
                v.chunk = 0
                drop_from = v.comp // self._unit_tokens
        del self._running[v]
        keep = 0
        if self._caching and v.nu == len(v.hashes) and (drop_from is None or drop_from >= v.nu):
            keep = max(0, v.comp // bs - v.nu * self._unit)
        self.kv.release(v, keep, drop_from)
        self.lost_tokens_total += v.comp
        v.comp = 0
        v.epoch += 1
        v.state = WAITING
        self.preemptions_total += 1
        self._preempted.append(v)
        self._enqueue(v, front=True)

    def _plan(self, now: float) -> StepShape | None:
        """Choose the work of the next step and allocate its blocks (state: see _commit)."""
        kv = self.kv
        pf: list[_Req] = []
        self._pf = pf
        self._preempted = []
        self._dec_alloc = False
        if kv.fresh:
            kv.fresh.clear()
        if self._n_dec:
            ph = self._step % self._bs
            need = self._cnt[ph]
            while need > kv.free + kv.evictable:
                v = self._victim()
                if v.state == DECODE and v.phase == ph:
                    need -= 1
                self._preempt(v)
            if need:
                kv.alloc(need)
        self._dec_alloc = True
        budget = self._budget - self._n_dec

        if self._prefilling:
            for r in list(self._prefilling):
                if r.state != PREFILL:
                    continue
                if budget <= 0:
                    break
                tokens = min(r.P + r.g, r.comp + budget)
                need = kv.grow_need(r, tokens)
                preempted_self = False
                while need > kv.free + kv.evictable:
                    v = self._victim()
                    self._preempt(v)
                    if v is r:
                        preempted_self = True
                        break
                    need = kv.grow_need(r, tokens)
                if preempted_self:
                    break
                if self._preempted:  # budget freed by preempted decoders or chunks
                    budget = self._budget - self._n_dec - sum(x.chunk for x in pf)
                kv.grow(r, tokens)
                r.chunk = tokens - r.comp
                budget -= r.chunk
                pf.append(r)

        if not self._preempted and self._n_waiting:
            n_run = len(self._running)
            max_seqs = self._max_seqs
            blocked = False
            ahead = 0
            if self._policy == "slo":
                ahead = sum(x.P + x.g - x.comp for x in self._prefilling)
            bs = self._bs
            unit = self._unit
            while budget > 0 and n_run < max_seqs:
                r = self._peek(now, ahead)
                if r is None:
                    break
                num_tokens = r.P + r.g
                hu, ch = kv.lookup(r, num_tokens)
                hit = (hu * unit + ch) * bs
                new = num_tokens - hit
                if new > budget:
                    if not self._chunked:
                        blocked = True
                        break
                    new = budget
                if kv.admit_need(r, hu, ch, hit + new) > kv.free + kv.evictable:
                    blocked = True
                    break
                self._pop()
                kv.admit(r, num_tokens, hu, ch, hit + new)
                self.hit_tokens_total += hit
                r.state = PREFILL
                r.comp = hit
                r.chunk = new
                self._running[r] = None
                self._prefilling[r] = None
                pf.append(r)
                budget -= new
                ahead += num_tokens - hit
                n_run += 1
            if n_run > self.max_running:
                self.max_running = n_run
            self._stable = (
                not pf
                and self._n_waiting > 0
                and (n_run >= max_seqs or (blocked and self._policy != "slo"))
            )
        else:
            self._stable = False

        n_dec = self._n_dec
        if pf:
            p_tok = 0
            ctx = 0
            pairs = 0.0
            for r in pf:
                c = r.chunk
                p_tok += c
                ctx += r.comp
                pairs += c * (r.comp + (c + 1) / 2)
            return StepShape(n_dec + len(pf), p_tok, n_dec, self._dec_kv + ctx, pairs)
        if n_dec:
            return StepShape(n_dec, 0, n_dec, self._dec_kv, 0.0)
        return None

    def _commit(self, shape: StepShape | None) -> None:
        """Apply the planned step: tokens computed, tokens sampled, requests finished."""
        s = self._step
        self._step = s + 1
        self.steps_total += 1
        n = self._n_dec
        self._dec_kv += n
        self.decode_tokens_computed += n
        gen = n
        first: list[_Req] = []
        finished: list[_Req] = []
        self._emitted_first = first
        self._finished = finished
        if self._pf:
            bs = self._bs
            for r in self._pf:
                c = r.chunk
                r.comp += c
                r.chunk = 0
                self.prefill_tokens_computed += c
                if r.comp < r.P + r.g:
                    continue
                del self._prefilling[r]
                if r.first_step < 0:
                    self.prompt_tokens_total += r.P
                if r.O == 0:  # nothing to generate: done once the prompt is in
                    r.first_step = s
                    self._finish(r, s)
                    finished.append(r)
                    continue
                if r.first_step < 0:
                    r.first_step = s
                r.g += 1
                gen += 1
                first.append(r)
                r.segs.append(s)
                if r.g >= r.O:
                    r.segs.append(s + 1)
                    self._finish(r, s)
                    finished.append(r)
                    continue
                r.state = DECODE
                r.join = s + 1
                r.comp0 = r.comp
                r.g0 = r.g
                ph = (s + 1 - r.comp) % bs
                r.phase = ph
                self._cnt[ph] += 1
                self._n_dec += 1
                self._dec_kv += r.comp
                heapq.heappush(self._fin, (s + r.O - r.g, r.seqno, r.epoch, r))
        self.generation_tokens_total += gen
        heap = self._fin
        if heap and heap[0][0] <= s:
            self._finish_decoders(s, finished)
        if self.trace is not None:
            self.trace.append((s, shape, gen, len(first)))

    def _finish_decoders(self, s: int, finished: list[_Req]) -> None:
        """Finish the decoders whose last token was emitted by step ``s`` (already committed)."""
        heap = self._fin
        bs = self._bs
        unit = self._unit
        while heap and heap[0][0] <= s:
            _, _, epoch, r = heapq.heappop(heap)
            if r.epoch != epoch or r.state != DECODE:
                continue
            comp = r.comp0 + (s + 1 - r.join)
            self._n_dec -= 1
            self._cnt[r.phase] -= 1
            self._dec_kv -= comp
            r.comp = comp
            r.g = r.O
            r.priv = -(-comp // bs) - r.nu * unit
            r.segs.append(s + 1)
            self._finish(r, s)
            finished.append(r)

    def _finish(self, r: _Req, s: int) -> None:
        r.state = DONE
        r.done_step = s
        del self._running[r]
        self.kv.release(r)
        del self._active[r.rid]
        self._stable = False

    # ---- fast path for the simulator ----------------------------------------------------------

    def _sim_step(self, now: float) -> float | None:
        """One step for the simulator (no per-request lists); its duration, or None if idle.

        ``_finished`` holds the requests it finished.
        """
        shape = self._plan(now) if (self._running or self._n_waiting) else None
        if shape is None and not self._preempted:
            self._finished = []
            if self._n_waiting:
                raise RuntimeError("scheduler made no progress with requests waiting (a bug)")
            return None
        duration = self.cost.step_time(shape) if shape is not None else 0.0
        self._commit(shape)
        return duration

    def _can_fast_forward(self) -> bool:
        """Pure decode with nothing that can change until a finish, an arrival or a block
        shortage: the next steps differ only in their contexts."""
        return (
            self._n_dec > 0
            and not self._prefilling
            and (self._n_waiting == 0 or self._stable)
            and not self._pending_rejects
        )

    def _fast_forward(self, now: float, t_limit: float, max_steps: int = 1 << 30) -> list[float]:
        """Run consecutive pure-decode steps from ``now``; returns their end times.

        Stops after the first step ending at or after ``t_limit`` (the next arrival: a later step
        would see it), before a step whose block needs exceed the free blocks (single-stepping
        then preempts), after ``max_steps``, when no decoder is left, and, when requests are
        waiting, after the first step that finishes a request (its slot and blocks may let one
        in). With nothing waiting, finishing requests only shrink the batch, so it goes on.
        Gives exactly what as many single steps would; ``_finished`` lists the requests it
        finished. May return [] (the next step must preempt).
        """
        heap = self._fin
        kv = self.kv
        cnt = self._cnt
        bs = self._bs
        step_time = self.cost.step_time
        trace = self.trace
        through = self._n_waiting == 0 and self.fast_forward_past_finishes
        finished: list[_Req] = []
        self._finished = finished
        ends: list[float] = []
        t = now
        s = self._step
        stop = s + max_steps
        while True:
            while heap and (heap[0][3].epoch != heap[0][2] or heap[0][3].state != DECODE):
                heapq.heappop(heap)
            s0 = s
            last = heap[0][0]
            n = self._n_dec
            kvr = self._dec_kv
            avail = kv.free + kv.evictable
            used = 0
            short = False
            while True:
                need = cnt[s % bs]
                if used + need > avail:
                    short = True  # the next step must preempt: single-step it
                    break
                used += need
                shape = StepShape(n, 0, n, kvr, 0.0)
                t += step_time(shape)
                ends.append(t)
                if trace is not None:
                    trace.append((s, shape, n, 0))
                kvr += n
                s += 1
                if s > last or t >= t_limit or s >= stop:
                    break
            k = s - s0
            done = not short and s > last
            if k:
                if used:
                    kv.alloc(used)
                self._step = s
                self._dec_kv = kvr
                self.steps_total += k
                self.decode_tokens_computed += n * k
                self.generation_tokens_total += n * k
                if done:
                    self._finish_decoders(s - 1, finished)
            if not (through and done and self._n_dec and t < t_limit and s < stop):
                return ends
