"""The contracts between the engine model's parts: cost model, scheduler, and the two drivers.

    StepCostModel (hardware x model x parallelism)  -- how long one engine step takes
    Scheduler (clock-agnostic: it is told "now")      -- which work goes into the next step
    drivers: simulator (virtual clock), HTTP emulator (real clock) -- advance time, deliver tokens

The engine package knows nothing of the client (DESIGN.md): it produces Records rows through
the shared schema only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StepShape:
    """Everything a roofline needs to know about one engine step, as aggregates (summing over
    the batch is the scheduler's job, so the cost model is O(1) per step)."""

    num_seqs: int  # sequences that do work in this step
    prefill_tokens: int  # new tokens of prefill chunks (prompt tokens computed this step)
    decode_tokens: int  # decoding sequences (one new token each)
    kv_read_tokens: int  # sum over sequences of the context (tokens already cached) they attend to
    prefill_attn_pairs: float  # sum over prefill chunks of new * (context + (new + 1) / 2)


class StepCostModel(Protocol):
    def step_time(self, shape: StepShape) -> float:
        """Seconds one engine step of this shape takes."""
        ...

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit in the memory left after weights and activations."""
        ...


@dataclass(slots=True)
class EngineRequest:
    """One request as the engine sees it."""

    request_id: str
    prompt_tokens: int
    max_output_tokens: int  # the engine generates exactly this many (ignore_eos semantics)
    arrival_s: float  # when the engine received it (virtual or real clock)
    prefix_blocks: list[int] = field(default_factory=list)  # block hashes of the prompt (KV reuse)
    reasoning_tokens: int = 0  # the first R output tokens are reasoning
    app: str = "chatbot"
    priority: int = 0  # lower runs first under the priority policy
    ttft_deadline_s: float | None = None  # SLO-aware policy: first token due by arrival + this
    tpot_deadline_s: float | None = None  # SLO-aware policy: per-token pace after the first


@dataclass(slots=True)
class StepResult:
    """What one scheduled step does. Tokens emitted by a step become visible at its end."""

    duration_s: float
    emitted: list[tuple[str, int]]  # (request_id, tokens emitted at the end of this step)
    finished: list[str]  # requests whose last token is among ``emitted``
    preempted: list[str] = field(default_factory=list)  # evicted (recompute) during this step
    shape: StepShape | None = None
