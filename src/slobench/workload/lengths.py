"""Token length distributions: *how long* requests and answers are.

Each distribution has ``sample(n, rng) -> int64 array``, ``mean`` (the nominal mean, before any
clipping) and ``describe()``. ``parse_length`` reads the CLI forms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from slobench.errors import UserError

LENGTH_FORMS = "512, fixed:512, lognormal:mean=512,cv=0.8[,min=1,max=8192] or uniform:100..200"

# Upper clip when no max is given, so that a heavy tail never overflows int64.
_HARD_MAX = 2**53


@runtime_checkable
class LengthDist(Protocol):
    """A distribution of token counts."""

    @property
    def mean(self) -> float: ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def describe(self) -> str: ...


def _whole(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise UserError(f"{what} {value!r} must be a whole number >= {minimum}")
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{what} {value!r} must be a whole number >= {minimum}") from None
    if not math.isfinite(as_float) or as_float != int(as_float) or as_float < minimum:
        raise UserError(f"{what} {value!r} must be a whole number >= {minimum}")
    if as_float > _HARD_MAX:  # token counts are int64 columns
        raise UserError(f"{what} {value!r} is too large; give at most {_HARD_MAX} tokens")
    return int(as_float)


@dataclass(frozen=True)
class Fixed:
    """Always ``n`` tokens."""

    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _whole(self.n, "fixed length"))

    @property
    def mean(self) -> float:
        return float(self.n)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(int(n), self.n, dtype=np.int64)

    def describe(self) -> str:
        return f"fixed {self.n}"


@dataclass(frozen=True)
class LogNormal:
    """Log-normal with the given ``mean`` and coefficient of variation ``cv``, rounded and clipped.

    sigma² = ln(1 + cv²), mu = ln(mean) − sigma²/2; samples are clipped to [min, max] and rounded to
    whole tokens. ``mean`` is the mean before clipping (clipping a heavy tail lowers it).
    """

    mean: float
    cv: float
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        mean, cv = float(self.mean), float(self.cv)
        if not math.isfinite(mean) or mean <= 0:
            raise UserError(f"lognormal mean {self.mean!r} must be a finite number > 0")
        if not math.isfinite(cv) or cv < 0:
            raise UserError(f"lognormal cv {self.cv!r} must be a finite number >= 0 (e.g. 0.8)")
        lo = _whole(self.min, "lognormal min")
        hi = None if self.max is None else _whole(self.max, "lognormal max")
        if hi is not None and hi < lo:
            raise UserError(f"lognormal max {hi} is below min {lo}; give max >= min")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cv", cv)
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)

    @property
    def sigma(self) -> float:
        return math.sqrt(math.log1p(self.cv * self.cv))

    @property
    def mu(self) -> float:
        return math.log(self.mean) - 0.5 * self.sigma**2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.lognormal(self.mu, self.sigma, int(n))
        hi = _HARD_MAX if self.max is None else self.max
        return np.rint(np.clip(x, self.min, hi)).astype(np.int64)

    def describe(self) -> str:
        bounds = f", min {self.min}" + ("" if self.max is None else f", max {self.max}")
        return f"lognormal mean {self.mean:g}, cv {self.cv:g}{bounds}"


@dataclass(frozen=True)
class Uniform:
    """Uniform over the whole numbers ``lo..hi``, both included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        lo = _whole(self.lo, "uniform low")
        hi = _whole(self.hi, "uniform high")
        if hi < lo:
            raise UserError(f"uniform range {lo}..{hi} is empty; give low <= high, e.g. 100..200")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def mean(self) -> float:
        return 0.5 * (self.lo + self.hi)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=int(n), endpoint=True, dtype=np.int64)

    def describe(self) -> str:
        return f"uniform {self.lo}..{self.hi}"


_INT = r"(\d+)"
_FLOAT = r"((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_BARE = re.compile(rf"^(?:fixed:)?\s*{_INT}$")
_UNIFORM = re.compile(rf"^uniform:\s*{_INT}\s*\.\.\s*{_INT}$")
_KEY_VALUE = re.compile(rf"^(mean|cv|min|max)\s*=\s*{_FLOAT}$")


def _parse_lognormal(body: str, text: str, what: str) -> LogNormal:
    params: dict[str, str] = {}
    for item in body.split(","):
        m = _KEY_VALUE.match(item.strip())
        if not m:
            raise UserError(
                f"{what} {text!r}: bad lognormal parameter {item.strip()!r}; "
                "use lognormal:mean=512,cv=0.8[,min=1,max=8192]"
            )
        if m[1] in params:
            raise UserError(f"{what} {text!r}: lognormal parameter {m[1]!r} is given twice")
        params[m[1]] = m[2]
    missing = [k for k in ("mean", "cv") if k not in params]
    if missing:
        raise UserError(
            f"{what} {text!r}: lognormal needs {' and '.join(missing)}; "
            "use lognormal:mean=512,cv=0.8[,min=1,max=8192]"
        )
    lo = _whole(params.get("min", "1"), f"{what} lognormal min", 1)
    hi = None if "max" not in params else _whole(params["max"], f"{what} lognormal max", 1)
    return LogNormal(float(params["mean"]), float(params["cv"]), lo, hi)


def parse_length(text: str, *, what: str = "--input-tokens") -> LengthDist:
    """Parse a length spec: ``512`` | ``fixed:512`` | ``lognormal:mean=512,cv=0.8[,min=..,max=..]``
    | ``uniform:100..200``. Every length must be at least 1 token."""
    s = str(text).strip().lower()
    try:
        if m := _BARE.match(s):
            return Fixed(_whole(m[1], f"{what} length", 1))
        if m := _UNIFORM.match(s):
            _whole(m[1], f"{what} uniform low", 1)
            return Uniform(int(m[1]), int(m[2]))
        if s.startswith("lognormal:"):
            return _parse_lognormal(s[len("lognormal:"):], text, what)
    except UserError as exc:
        msg = str(exc)
        raise UserError(msg if msg.startswith(what) else f"{what} {text!r}: {msg}") from None
    raise UserError(
        f"{what} {text!r} is not a length; use {LENGTH_FORMS} (whole numbers of tokens >= 1)"
    )


def as_length_dist(value: LengthDist | str | int, *, what: str = "--input-tokens") -> LengthDist:
    """A length distribution from a distribution, a CLI spec string, or a fixed whole number."""
    if isinstance(value, str):
        return parse_length(value, what=what)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return parse_length(str(int(value)), what=what)
    if isinstance(value, LengthDist):
        return value
    raise UserError(f"{what} {value!r} is not a length; use {LENGTH_FORMS}")
