"""Arrival processes and rate functions: *when* requests arrive.

Time-varying rates use time rescaling: draw a unit-rate renewal sequence (gaps of mean 1), then map
each cumulative position ``y`` to the time ``t = Λ⁻¹(y)`` where ``Λ(t) = ∫₀ᵗ rate`` is the expected
number of arrivals by ``t``. A constant rate therefore reproduces the plain process, and every
process (Poisson, gamma, constant) follows any rate function.

Everything is vectorized with numpy and deterministic under a ``np.random.Generator``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from slobench.errors import UserError
from slobench.units import UNIT_PATTERN, unit_seconds

PROCESSES = ("poisson", "gamma", "constant")

# A guard against asking for more arrivals than fit in memory (each is 8 bytes, several columns).
MAX_ARRIVALS = 50_000_000

RATE_FORMS = (
    "a number of requests/s (10), a linear ramp (ramp:1..20/60s) "
    "or a step ramp (step:2+2/30s..20)"
)


@runtime_checkable
class RateFunction(Protocol):
    """A request rate over time (req/s), with its cumulative integral Λ and the inverse of Λ."""

    def rate(self, t: np.ndarray | float) -> np.ndarray: ...

    def integral(self, t: np.ndarray | float) -> np.ndarray: ...

    def inverse_integral(self, y: np.ndarray | float) -> np.ndarray: ...

    def describe(self) -> str: ...


def _check_rate(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what} {value:g} must be a finite number of requests/s > 0; e.g. 10")
    return value


def _check_nonneg(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{what} {value:g} must be a finite number >= 0")
    return value


def _check_positive(value: float, what: str, unit: str = "s") -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what} {value:g} must be a finite number > 0 ({unit})")
    return value


@dataclass(frozen=True)
class ConstantRate:
    """``rate`` requests per second, forever."""

    rate_rps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_rps", _check_rate(self.rate_rps, "rate"))

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        return np.full_like(np.asarray(t, dtype=np.float64), self.rate_rps)

    def integral(self, t: np.ndarray | float) -> np.ndarray:
        return np.asarray(t, dtype=np.float64) * self.rate_rps

    def inverse_integral(self, y: np.ndarray | float) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) / self.rate_rps

    def describe(self) -> str:
        return f"{self.rate_rps:g} req/s"


@dataclass(frozen=True)
class LinearRampRate:
    """Rate rising (or falling) linearly from ``start`` to ``end`` over ``ramp_s``, then ``end``."""

    start: float
    end: float
    ramp_s: float

    def __post_init__(self) -> None:
        start = _check_nonneg(self.start, "ramp start rate")
        end = float(self.end)
        if not math.isfinite(end) or end <= 0:
            raise UserError(
                f"ramp end rate {end:g} must be a finite number of requests/s > 0 "
                "(it holds after the ramp); e.g. ramp:1..20/60s"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "ramp_s", _check_positive(self.ramp_s, "ramp duration"))

    @property
    def _slope(self) -> float:
        return (self.end - self.start) / self.ramp_s

    @property
    def _ramp_mass(self) -> float:
        return 0.5 * (self.start + self.end) * self.ramp_s

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return np.where(t < self.ramp_s, self.start + self._slope * t, self.end)

    def integral(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        tr = np.minimum(t, self.ramp_s)
        inside = self.start * tr + 0.5 * self._slope * tr * tr
        return inside + self.end * np.maximum(t - self.ramp_s, 0.0)

    def inverse_integral(self, y: np.ndarray | float) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        yr = np.minimum(y, self._ramp_mass)
        # Solve start*t + slope*t²/2 = yr in the form that is stable for any slope (zero included).
        disc = np.maximum(self.start * self.start + 2.0 * self._slope * yr, 0.0)
        denom = self.start + np.sqrt(disc)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = np.where(denom > 0, 2.0 * yr / denom, 0.0)
        inside = np.minimum(inside, self.ramp_s)
        return inside + np.maximum(y - self._ramp_mass, 0.0) / self.end

    def describe(self) -> str:
        return f"ramp {self.start:g}→{self.end:g} req/s over {self.ramp_s:g} s, then {self.end:g}"


@dataclass(frozen=True)
class StepRate:
    """``start`` req/s for ``interval_s``, then ``start + step``, ... capped at ``max_rate``."""

    start: float
    step: float
    interval_s: float
    max_rate: float

    def __post_init__(self) -> None:
        start = _check_rate(self.start, "step start rate")
        step = _check_positive(self.step, "step increment", "requests/s")
        interval = _check_positive(self.interval_s, "step interval")
        max_rate = _check_rate(self.max_rate, "step maximum rate")
        if max_rate < start:
            raise UserError(
                f"step maximum rate {max_rate:g} is below the start rate {start:g}; "
                "give a maximum >= start, e.g. step:2+2/30s..20"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "interval_s", interval)
        object.__setattr__(self, "max_rate", max_rate)

    @property
    def n_steps(self) -> int:
        """Index of the first interval at the cap (``start + k*step >= max_rate``)."""
        return max(math.ceil((self.max_rate - self.start) / self.step - 1e-12), 0)

    def _level(self, k: np.ndarray) -> np.ndarray:
        return np.minimum(self.start + self.step * k, self.max_rate)

    def _mass_at_boundary(self, k: np.ndarray) -> np.ndarray:
        """Λ(k·interval) for integer k <= n_steps (all intervals before k are below the cap)."""
        return self.interval_s * (k * self.start + 0.5 * self.step * k * (k - 1))

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return self._level(np.floor(np.maximum(t, 0.0) / self.interval_s))

    def integral(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        k = np.minimum(np.floor(np.maximum(t, 0.0) / self.interval_s), self.n_steps)
        return self._mass_at_boundary(k) + self._level(k) * (t - k * self.interval_s)

    def inverse_integral(self, y: np.ndarray | float) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        ks = self.n_steps
        # Interval index k with Λ(k·I) <= y < Λ((k+1)·I), from the quadratic in k, then made exact.
        b = self.start - 0.5 * self.step
        c = y / self.interval_s
        k = np.floor((-b + np.sqrt(b * b + 2.0 * self.step * c)) / self.step)
        k = np.clip(k, 0, ks)
        k = np.where((k > 0) & (self._mass_at_boundary(k) > y), k - 1, k)
        k = np.where((k < ks) & (self._mass_at_boundary(k + 1) <= y), k + 1, k)
        return k * self.interval_s + (y - self._mass_at_boundary(k)) / self._level(k)

    def describe(self) -> str:
        return (
            f"step {self.start:g} req/s +{self.step:g} every {self.interval_s:g} s "
            f"up to {self.max_rate:g}"
        )


def as_rate_function(rate: RateFunction | str | float | int) -> RateFunction:
    """A rate function from a rate function, a CLI rate string, or a plain number of req/s."""
    if isinstance(rate, str):
        return parse_rate(rate)
    if isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, bool):
        return ConstantRate(float(rate))
    if isinstance(rate, RateFunction):
        return rate
    raise UserError(f"rate {rate!r} is not a rate; use {RATE_FORMS}")


def _unit_positions(process: str, cv: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Cumulative positions of ``count`` events of a unit-rate renewal process."""
    if process == "constant":
        return np.arange(count, dtype=np.float64)
    if process == "poisson":
        gaps = rng.standard_exponential(count)
    else:  # gamma: mean 1, coefficient of variation cv
        shape = 1.0 / (cv * cv)
        gaps = rng.standard_gamma(shape, count) / shape
    return np.cumsum(gaps)


def arrival_times(
    process: str,
    rate_fn: RateFunction | str | float,
    *,
    cv: float = 1.0,
    n: int | None = None,
    duration_s: float | None = None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Arrival offsets (seconds, float64, non-decreasing) of ``process`` following ``rate_fn``.

    ``process``: "poisson" (exponential gaps), "gamma" (gamma gaps with coefficient of variation
    ``cv``; cv > 1 is burstier than Poisson, cv < 1 smoother) or "constant" (evenly spaced in Λ,
    first arrival at 0). Stops after ``n`` arrivals or before ``duration_s``, whichever comes first
    when both are given.
    """
    if process not in PROCESSES:
        raise UserError(
            f"arrival process {process!r} is unknown; use one of {', '.join(PROCESSES)}"
        )
    cv = float(cv)
    if not math.isfinite(cv) or cv <= 0:
        raise UserError(f"--cv {cv:g} must be a finite number > 0 (1 is Poisson, >1 burstier)")
    if n is None and duration_s is None:
        raise UserError(
            "give a number of requests or a duration (e.g. --requests 1000 or --duration 60)"
        )
    if n is not None:
        if isinstance(n, bool) or int(n) != n or n <= 0:
            raise UserError(f"number of requests {n} must be a whole number > 0")
        n = int(n)
        if n > MAX_ARRIVALS:
            raise UserError(f"{n} requests is more than the limit {MAX_ARRIVALS}; ask for fewer")
    if duration_s is not None:
        duration_s = float(duration_s)
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise UserError(f"duration {duration_s:g} must be a finite number of seconds > 0")
    rate_fn = as_rate_function(rate_fn)
    if process == "poisson":
        cv = 1.0

    if duration_s is None:
        assert n is not None
        positions = _unit_positions(process, cv, n, rng)
    else:
        mass = float(rate_fn.integral(duration_s))
        if process == "constant":
            count = math.ceil(mass)
            if n is not None:
                count = min(count, n)
            if count > MAX_ARRIVALS:
                raise UserError(
                    f"about {count} requests expected in {duration_s:g} s, more than the limit "
                    f"{MAX_ARRIVALS}; lower the rate or the duration"
                )
            positions = _unit_positions(process, cv, count, rng)
        else:
            if mass > MAX_ARRIVALS:
                raise UserError(
                    f"about {mass:.0f} requests expected in {duration_s:g} s, more than the limit "
                    f"{MAX_ARRIVALS}; lower the rate or the duration"
                )
            # Draw in chunks until the unit-rate sequence passes Λ(duration) (or n is reached).
            chunk = int(mass + 6.0 * max(cv, 1.0) * math.sqrt(mass) + 16)
            if n is not None:
                chunk = min(chunk, n)
            parts: list[np.ndarray] = []
            offset, drawn = 0.0, 0
            while True:
                part = _unit_positions(process, cv, chunk, rng) + offset
                parts.append(part)
                drawn += len(part)
                offset = float(part[-1])
                if offset >= mass or (n is not None and drawn >= n):
                    break
                if drawn > MAX_ARRIVALS:
                    raise UserError(
                        f"more than {MAX_ARRIVALS} requests in {duration_s:g} s; "
                        "lower the rate or the duration"
                    )
                chunk = max(16, int((mass - offset) + 6.0 * max(cv, 1.0) * math.sqrt(mass) + 16))
            positions = np.concatenate(parts)
            if n is not None:
                positions = positions[:n]
            positions = positions[positions < mass]

    times = rate_fn.inverse_integral(positions)
    if duration_s is not None:
        times = times[times < duration_s]
    return np.ascontiguousarray(times, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# CLI parsing

_NUM_RE = r"((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_DUR_RE = _NUM_RE + rf"\s*{UNIT_PATTERN}?"

_CONST = re.compile(rf"^{_NUM_RE}$")
_RAMP = re.compile(rf"^ramp:\s*{_NUM_RE}\s*\.\.\s*{_NUM_RE}\s*/\s*{_DUR_RE}$")
_STEP = re.compile(rf"^step:\s*{_NUM_RE}\s*\+\s*{_NUM_RE}\s*/\s*{_DUR_RE}\s*\.\.\s*{_NUM_RE}$")


def _seconds(value: str, unit: str | None) -> float:
    return float(value) * unit_seconds(unit)


def parse_rate(text: str) -> RateFunction:
    """Parse a ``--rate``: ``10`` | ``ramp:1..20/60s`` | ``step:2+2/30s..20``.

    Durations take an optional unit: ``ms``, ``s`` (default), ``min`` or ``h``.
    """
    s = str(text).strip().lower()
    try:
        if m := _CONST.match(s):
            return ConstantRate(float(m[1]))
        if m := _RAMP.match(s):
            return LinearRampRate(float(m[1]), float(m[2]), _seconds(m[3], m[4]))
        if m := _STEP.match(s):
            return StepRate(float(m[1]), float(m[2]), _seconds(m[3], m[4]), float(m[5]))
    except UserError as exc:
        raise UserError(f"--rate {text!r}: {exc}") from None
    if re.search(r"-\s*[\d.]", s):
        raise UserError(
            f"--rate {text!r}: rates and durations must not be negative; use {RATE_FORMS}"
        )
    raise UserError(f"--rate {text!r} is not a rate; use {RATE_FORMS}")
