"""Multi-turn chat and agent sessions: turn a single-turn Workload table into sessions.

A *session shape* (:class:`SessionShape`) says, per application class, how many turns a session
has, how long the client waits between turns (user think time for chat; tool execution time for
agents), how long the system prompt shared by all sessions of a client and app is, how many
tokens each tool result adds (agents) and the context limit. :func:`sessionize` turns a table of
single requests (a profile, a pool, a synthetic workload or a trace) into sessions:

- **Starts.** With ``rate_of="requests"`` each row starts a session with probability
  ``1 / E[turns]`` of its app's shape (independent thinning), so starts plus follow-ups keep the
  table's request count and rate in the long run; with ``rate_of="sessions"`` every row starts one
  (the request rate grows by the mean turn count).
- **Follow-ups.** Turn ``k`` is due ``think_s`` after turn ``k − 1``'s arrival (the earliest send
  time; a runner sends at ``max(arrival_s, previous done + think_s)``). Its new user message and
  its output lengths are bootstrapped from rows of the same client, independently per field.
- **Context.** Turn 0's prompt is the system prompt plus its own row's input; each later prompt is
  the previous prompt, plus the previous *visible* output (``output_tokens − reasoning_tokens``:
  APIs drop the reasoning from the history), plus the new message (chat) or a tool result (agent).
  Images already sent stay in the history (``image_tokens`` lists them all). When the next prompt
  would exceed ``max_context_tokens``, the session ends and its remaining turns carry on in a fresh
  session (the user opens a new chat; the agent compacts its context), so no request is lost.
- **Prefix blocks.** Each session is one growing token stream cut into ``block_tokens`` blocks
  (Mooncake-style ids, allocated from a counter so that different content never shares an id):
  full blocks of the shared system prompt have the same ids in every session of that client and
  app, the session's other full blocks are reused by its later turns, and the partial last block
  of a prompt has an id of its own.

- **Steady start** (``start="steady"``, the default). At 0 the workload looks like a system that
  has run for long: sessions started before 0 are a stationary process with the start rate of
  the input's first ``min(STEADY_WINDOW_S, duration_s)`` seconds, so each of those rows stands
  for Poisson(p · E[span] / window) sessions under way (Little's law; p the start probability).
  For each, 0 falls in the gap before turn k ≥ 1 with probability ∝ P(T > k); that gap's think
  time is length-biased (density ∝ x f(x)) and 0 uniform in it; T is drawn given T > k. Turns
  before k are made (context, images, blocks) but not kept; turn k keeps its number and has no
  predecessor in the table. ``start="empty"``: no session before 0 (a start-up transient).

Randomness is counter-based: every draw is a hash of (seed, stream name, row index, turn), so the
result does not depend on how the table is cut into batches (:func:`iter_sessionized`), only the
bootstrap pools and the numbering of block ids do.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import ndtr, ndtri

from slobench.errors import UserError, did_you_mean
from slobench.schema import WORKLOAD_SCHEMA, conform_workload
from slobench.schema import string_codes as _codes
from slobench.units import parse_duration
from slobench.workload.lengths import (
    _HARD_MAX,
    LENGTH_FORMS,
    Fixed,
    LengthDist,
    LogNormal,
    Uniform,
    parse_length,
)
from slobench.workload.synthetic import _normalize_mix, parse_app_mix

__all__ = [
    "APP_SCOPES",
    "DEFAULT_BLOCK_TOKENS",
    "DEFAULT_SHAPES",
    "KINDS",
    "MAX_TURNS",
    "RATE_OF",
    "SESSION_MODES",
    "STARTS",
    "STEADY_WINDOW_S",
    "Geometric",
    "Pmf",
    "Seconds",
    "SessionShape",
    "iter_sessionized",
    "load_shapes",
    "mean_turns",
    "parse_seconds",
    "parse_turns",
    "session_summary",
    "sessionize",
    "shapes_for_mode",
    "steady_after_s",
]

KINDS = ("single", "chat", "agent")
RATE_OF = ("requests", "sessions")
STARTS = ("steady", "empty")
# Sessions under way at 0 follow the mean rate of the input's first this many seconds.
STEADY_WINDOW_S = 600.0
APP_SCOPES = ("session", "client")
SESSION_MODES = "off, auto, chat, agent or file:shapes.toml"
# A session has at most this many turns (keeps per-turn random counters and tables small).
MAX_TURNS = 1000
DEFAULT_BLOCK_TOKENS = 512  # the Mooncake trace's hash block size
# max_position_embeddings of the default model (llama-3.1-8b in engine/models.py).
DEFAULT_MAX_CONTEXT = 131072
TURN_FORMS = f"geometric:mean=3.5, pmf:1=0.5,2=0.3,3=0.2, or a length: {LENGTH_FORMS}"
SECONDS_FORMS = ("30s, fixed:30s, uniform:1s..5s, exp:mean=30s or "
                 "lognormal:mean=30s,cv=1.5[,min=0s,max=10min]")
_TURN_KEY = 1024  # > MAX_TURNS: per-turn random counters are row * _TURN_KEY + turn
# Sessions under way at 0 count their random counters from here (input rows stay below 2^40).
_PRE_G = 1 << 40
_GRID = 200_000  # quantile grid of the length-biased think time (as Seconds.realized_mean)


# ---------------------------------------------------------------------------------------------
# Turn-count distributions


@dataclass(frozen=True)
class Geometric:
    """1 + a geometric number of further turns: P(T = k) = p (1 − p)^(k − 1), k ≥ 1, p = 1/mean
    (each turn is the last with the same probability)."""

    mean: float

    def __post_init__(self) -> None:
        m = float(self.mean)
        if not math.isfinite(m) or m < 1:
            raise UserError(f"geometric mean {self.mean!r} must be a number >= 1 (turns)")
        object.__setattr__(self, "mean", m)

    def describe(self) -> str:
        return f"1 + geometric, mean {self.mean:g}"


@dataclass(frozen=True)
class Pmf:
    """An empirical distribution: ``values[i]`` turns with probability ``probs[i]``."""

    values: tuple[int, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        vals = tuple(int(v) for v in self.values)
        probs = [float(p) for p in self.probs]
        if not vals or len(vals) != len(probs):
            raise UserError("pmf needs one probability per value, e.g. pmf:1=0.5,2=0.3,3=0.2")
        if len(set(vals)) != len(vals) or any(not 1 <= v <= MAX_TURNS for v in vals):
            raise UserError(f"pmf values must be distinct whole numbers 1..{MAX_TURNS}")
        if any(not math.isfinite(p) or p < 0 for p in probs) or sum(probs) <= 0:
            raise UserError("pmf probabilities must be numbers >= 0 with a sum > 0")
        total = sum(probs)
        order = sorted(range(len(vals)), key=vals.__getitem__)
        object.__setattr__(self, "values", tuple(vals[i] for i in order))
        object.__setattr__(self, "probs", tuple(probs[i] / total for i in order))

    def describe(self) -> str:
        return "pmf " + ", ".join(f"{v}:{p:.3g}" for v, p in zip(self.values, self.probs,
                                                                 strict=True))


TurnDist = Union[Fixed, Uniform, LogNormal, Geometric, Pmf, LengthDist]  # noqa: UP007


def turn_cdf(dist: Any) -> np.ndarray:
    """``P(T <= k)`` for k = 1..MAX_TURNS; the last entry is 1 (turns are capped at MAX_TURNS).
    Sampling inverts exactly this table, so :func:`mean_turns` is the realized mean."""
    k = np.arange(1, MAX_TURNS + 1, dtype=np.float64)
    if isinstance(dist, Fixed):
        c = (k >= dist.n).astype(np.float64)
    elif isinstance(dist, Uniform):
        c = np.clip((k - dist.lo + 1) / (dist.hi - dist.lo + 1), 0.0, 1.0)
    elif isinstance(dist, LogNormal):
        hi = math.inf if dist.max is None else dist.max
        if dist.sigma == 0:
            c = (k >= min(max(round(dist.mean), dist.min), hi)).astype(np.float64)
        else:
            c = ndtr((np.log(k + 0.5) - dist.mu) / dist.sigma)  # rint(X) <= k  <=>  X < k + 0.5
            c = np.where(k < dist.min, 0.0, np.where(k >= hi, 1.0, c))
    elif isinstance(dist, Geometric):
        c = -np.expm1(k * math.log1p(-1.0 / dist.mean)) if dist.mean > 1 else np.ones_like(k)
    elif isinstance(dist, Pmf):
        pmf = np.zeros(MAX_TURNS)
        pmf[np.array(dist.values) - 1] = dist.probs
        c = np.cumsum(pmf)
    elif isinstance(dist, LengthDist):  # another distribution: estimate its table once
        s = np.clip(dist.sample(200_000, np.random.default_rng(0)), 1, MAX_TURNS)
        c = np.searchsorted(np.sort(s), k, side="right") / len(s)
    else:
        raise UserError(f"turns {dist!r} is not a turn distribution; use {TURN_FORMS}")
    c = np.maximum.accumulate(np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0))
    c[-1] = 1.0
    return c


def mean_turns(dist: Any) -> float:
    """The mean number of turns sampled from ``dist`` (after rounding and the MAX_TURNS cap)."""
    c = turn_cdf(dist)
    return 1.0 + float(np.sum(1.0 - c[:-1]))


_NUM = r"((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_GEOMETRIC = re.compile(rf"^geometric:\s*mean\s*=\s*{_NUM}$")
_PMF_ITEM = re.compile(rf"^(\d+)\s*=\s*{_NUM}$")


def parse_turns(text: str | int, *, what: str = "turns") -> TurnDist:
    """Turns per session: ``geometric:mean=3.5`` | ``pmf:1=0.5,2=0.3,3=0.2`` | a length form
    (``3``, ``uniform:2..6``, ``lognormal:mean=8.8,cv=4.3,max=1000``); at most MAX_TURNS."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise UserError(f"{what} {text!r} is not a turn distribution; use {TURN_FORMS}")
    s = str(text).strip().lower()
    try:
        if m := _GEOMETRIC.match(s):
            return Geometric(float(m[1]))
        if s.startswith("pmf:"):
            items = [_PMF_ITEM.match(i.strip()) for i in s[4:].split(",")]
            if not all(items):
                raise UserError("use pmf:1=0.5,2=0.3,3=0.2 (turns=probability)")
            return Pmf(tuple(int(m[1]) for m in items if m),  # type: ignore[index]
                       tuple(float(m[2]) for m in items if m))  # type: ignore[index]
        if s.startswith(("fixed:", "uniform:", "lognormal:")) or s.isdigit():
            dist = parse_length(s, what=what)
            top = {Fixed: lambda d: d.n, Uniform: lambda d: d.hi,
                   LogNormal: lambda d: d.max or 0}[type(dist)](dist)
            if top > MAX_TURNS:
                raise UserError(f"at most {MAX_TURNS} turns per session; lower it")
            return dist
    except UserError as exc:
        msg = str(exc)
        raise UserError(msg if msg.startswith(what) else f"{what} {text!r}: {msg}") from None
    raise UserError(f"{what} {text!r} is not a turn distribution; use {TURN_FORMS}")


# ---------------------------------------------------------------------------------------------
# Durations (think time, tool time)


@dataclass(frozen=True)
class Seconds:
    """A distribution of seconds: ``fixed`` (``a``), ``uniform`` (``a``..``b``), ``exp`` (mean
    ``a``) or ``lognormal`` (mean ``a``, CV ``b``, clipped to [``lo``, ``hi``]; the mean is
    before clipping, as for token lengths)."""

    kind: str
    a: float = 0.0
    b: float = 0.0
    lo: float = 0.0
    hi: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "exp", "lognormal"):
            raise UserError(f"seconds distribution {self.kind!r}: use {SECONDS_FORMS}")
        vals = [self.a, self.b, self.lo] + ([] if self.hi is None else [self.hi])
        if any(not math.isfinite(float(v)) or float(v) < 0 for v in vals):
            raise UserError("durations must be finite and >= 0")
        if self.kind == "uniform" and self.b < self.a:
            raise UserError(f"uniform range {self.a:g}s..{self.b:g}s is empty; give low <= high")
        if self.kind in ("exp", "lognormal") and self.a <= 0:
            raise UserError(f"{self.kind} mean must be > 0 seconds")
        if self.hi is not None and self.hi < self.lo:
            raise UserError(f"max {self.hi:g}s is below min {self.lo:g}s")

    @property
    def mean(self) -> float:
        """The mean in seconds (for lognormal: before clipping)."""
        return {"fixed": self.a, "uniform": 0.5 * (self.a + self.b)}.get(self.kind, self.a)

    @property
    def realized_mean(self) -> float:
        """The mean of what is sampled (after clipping): the quantile function's average."""
        if self.kind != "lognormal" or (self.hi is None and self.lo == 0):
            return self.mean
        u = (np.arange(200_000) + 0.5) / 200_000
        return float(self.quantile(u).mean())

    def quantile(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        if self.kind == "fixed":
            return np.full(u.shape, self.a)
        if self.kind == "uniform":
            return self.a + u * (self.b - self.a)
        if self.kind == "exp":
            return -self.a * np.log1p(-u)
        sigma = math.sqrt(math.log1p(self.b * self.b))
        mu = math.log(self.a) - 0.5 * sigma * sigma
        x = np.exp(mu + sigma * ndtri(u))
        return np.clip(x, self.lo, math.inf if self.hi is None else self.hi)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.a:g} s"
        if self.kind == "uniform":
            return f"uniform {self.a:g}..{self.b:g} s"
        if self.kind == "exp":
            return f"exponential, mean {self.a:g} s"
        top = "" if self.hi is None else f", max {self.hi:g} s"
        return f"lognormal mean {self.a:g} s, cv {self.b:g}, min {self.lo:g} s{top}"


_SECONDS_KV = re.compile(r"^(mean|cv|min|max)\s*=\s*(.+)$")


def parse_seconds(text: str | float | int, *, what: str = "think_s") -> Seconds:
    """A duration distribution: ``30s`` | ``fixed:30s`` | ``uniform:1s..5s`` | ``exp:mean=30s``
    | ``lognormal:mean=30s,cv=1.5[,min=0s,max=10min]``; a bare number means seconds."""
    if isinstance(text, bool):
        raise UserError(f"{what} {text!r} is not a duration; use {SECONDS_FORMS}")
    if isinstance(text, int | float):
        return Seconds("fixed", float(parse_duration(float(text), what) or 0.0))
    if not isinstance(text, str):
        raise UserError(f"{what} {text!r} is not a duration; use {SECONDS_FORMS}")
    s = text.strip().lower()

    def dur(v: str) -> float:
        return float(parse_duration(v.strip(), what) or 0.0)

    try:
        if s.startswith("fixed:"):
            return Seconds("fixed", dur(s[6:]))
        if s.startswith("uniform:"):
            lo, sep, hi = s[8:].partition("..")
            if not sep:
                raise UserError("use uniform:1s..5s")
            return Seconds("uniform", dur(lo), dur(hi))
        if s.startswith(("exp:", "lognormal:")):
            kind, _, body = s.partition(":")
            params: dict[str, str] = {}
            for item in body.split(","):
                m = _SECONDS_KV.match(item.strip())
                if not m or m[1] in params or (kind == "exp" and m[1] != "mean"):
                    raise UserError(f"bad parameter {item.strip()!r}; use {SECONDS_FORMS}")
                params[m[1]] = m[2]
            if "mean" not in params or (kind == "lognormal" and "cv" not in params):
                raise UserError(f"missing parameters; use {SECONDS_FORMS}")
            if kind == "exp":
                return Seconds("exp", dur(params["mean"]))
            try:
                cv = float(params["cv"])
            except ValueError:
                raise UserError(f"cv {params['cv']!r} is not a number") from None
            hi = dur(params["max"]) if "max" in params else None
            return Seconds("lognormal", dur(params["mean"]), cv, dur(params.get("min", "0")), hi)
        return Seconds("fixed", dur(s))
    except UserError as exc:
        msg = str(exc)
        raise UserError(msg if msg.startswith(what) else f"{what} {text!r}: {msg}") from None


def _as_tokens(value: Any, *, what: str) -> LengthDist:
    """Token counts that may be 0 (system prompt, tool result): a whole number or a length form."""
    if isinstance(value, bool):
        raise UserError(f"{what} {value!r} is not a token count; use 0, 512 or {LENGTH_FORMS}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip() == "0"):
        if int(value) < 0:
            raise UserError(f"{what} {value!r} must be >= 0")
        return Fixed(int(value))
    if isinstance(value, str):
        return parse_length(value, what=what)
    if isinstance(value, LengthDist):
        return value
    raise UserError(f"{what} {value!r} is not a token count; use 0, 512 or {LENGTH_FORMS}")


# ---------------------------------------------------------------------------------------------
# Session shapes

_ONE, _NONE, _NO_WAIT = Fixed(1), Fixed(0), Seconds("fixed", 0.0)  # immutable defaults


@dataclass(frozen=True)
class SessionShape:
    """How the sessions of one application class look (fields accept the text forms too).

    ``kind``: ``single`` (one turn), ``chat`` (a user who reads and answers) or ``agent`` (a loop
    of model calls and tool calls). ``turns``: turns (steps) per session. ``think_s``: the delay
    between the end of a turn and the next send (think time; tool execution time for agents).
    ``system_tokens``: the system prompt shared by all sessions of a client and app, drawn once
    per (client, app). ``tool_result_tokens``: tokens each tool result adds (agents only).
    ``max_context_tokens``: the longest prompt; a session ends before a turn would exceed it.
    """

    kind: str
    turns: Any = _ONE
    think_s: Any = _NO_WAIT
    system_tokens: Any = _NONE
    tool_result_tokens: Any = _NONE
    max_context_tokens: int = DEFAULT_MAX_CONTEXT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"kind {self.kind!r}: use one of {', '.join(KINDS)}")
        turns = self.turns if not isinstance(self.turns, str | int) else parse_turns(self.turns)
        think = (self.think_s if isinstance(self.think_s, Seconds)
                 else parse_seconds(self.think_s))
        system = _as_tokens(self.system_tokens, what="system_tokens")
        tool = _as_tokens(self.tool_result_tokens, what="tool_result_tokens")
        ctx = self.max_context_tokens
        if isinstance(ctx, bool) or not isinstance(ctx, int | np.integer) or ctx < 1:
            raise UserError(f"max_context_tokens {ctx!r} must be a whole number >= 1")
        if isinstance(system, Fixed) and system.n >= ctx:
            raise UserError(f"system_tokens {system.n} leave no room under max_context_tokens "
                            f"{ctx}; lower it")
        cdf = turn_cdf(turns)
        if self.kind == "single" and cdf[0] < 1.0:
            raise UserError("turns: a 'single' session has exactly one turn; use kind chat or "
                            "agent for more")
        if self.kind != "agent" and not (isinstance(tool, Fixed) and tool.n == 0):
            raise UserError("tool_result_tokens: only agent sessions have tool results; drop "
                            "it or use kind agent")
        for name, value in (("turns", turns), ("think_s", think), ("system_tokens", system),
                            ("tool_result_tokens", tool), ("max_context_tokens", int(ctx))):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_cdf", cdf)

    @property
    def cdf(self) -> np.ndarray:
        return self._cdf  # type: ignore[attr-defined,no-any-return]

    @property
    def mean_turns(self) -> float:
        return 1.0 + float(np.sum(1.0 - self.cdf[:-1]))

    @property
    def mean_span_s(self) -> float:
        """Mean time from a session's first send to its last (think times only; the responses
        add to it)."""
        return (self.mean_turns - 1.0) * self.think_s.realized_mean

    @property
    def mean_age_s(self) -> float:
        """Mean time from a session's start to one of its requests, over requests (think times
        only): E[T(T−1)] / (2 E[T]) · E[think]. A workload that starts with no session under
        way lacks about ``rate × mean_age_s`` requests at the start: the start-up transient.
        Longer than the mean span when turn counts are heavy-tailed (long sessions hold many
        late requests)."""
        pmf = np.diff(np.concatenate([[0.0], self.cdf]))
        k = np.arange(1, len(pmf) + 1, dtype=np.float64)
        turns_age = float(np.sum(pmf * k * (k - 1))) / (2.0 * self.mean_turns)
        return turns_age * self.think_s.realized_mean

    def describe(self) -> dict[str, str]:
        d = {"kind": self.kind, "turns": f"{self.turns.describe()} (mean {self.mean_turns:.3g})",
             "think_s": self.think_s.describe(), "system_tokens": self.system_tokens.describe(),
             "max_context_tokens": str(self.max_context_tokens)}
        if self.kind == "agent":
            d["tool_result_tokens"] = self.tool_result_tokens.describe()
        return d


# The defaults and their sources: docs/sessions.md.
DEFAULT_SHAPES: dict[str, SessionShape] = {
    # ShareGPT: 3.51 turns per conversation on average (ShareChat, arXiv 2512.17843, Table 1).
    "chatbot": SessionShape(
        "chat", turns="geometric:mean=3.5",
        think_s="lognormal:mean=30s,cv=1.5,max=10min",  # assumption
        system_tokens=0),  # assumption
    # Coding agents: TraceLab (arXiv 2606.30560): 1 + 7.8 tool-initiated steps per request on
    # average (p50 2, p90 21 steps); tool latency p50 0.3 s, p90 13.6 s; appended tokens per
    # step p50 ~0.8k, p90 3.7k-6.1k.
    "coding": SessionShape(
        "agent", turns="lognormal:mean=8.8,cv=4.3,max=1000",
        think_s="lognormal:mean=25s,cv=84,max=10min",
        system_tokens=8192,  # assumption
        tool_result_tokens="lognormal:mean=2000,cv=2.7,max=32768"),
    "tool": SessionShape(  # assumptions, except the tool latency (TraceLab, as coding)
        "agent", turns="geometric:mean=3",
        think_s="lognormal:mean=25s,cv=84,max=10min",
        system_tokens=2048, tool_result_tokens="lognormal:mean=500,cv=1.5,max=8192"),
    "summarization": SessionShape("single"),
    "reasoning": SessionShape(  # assumption
        "chat", turns="geometric:mean=2",
        think_s="lognormal:mean=30s,cv=1.5,max=10min", system_tokens=0),
}
_TEMPLATES = {"single": DEFAULT_SHAPES["summarization"], "chat": DEFAULT_SHAPES["chatbot"],
              "agent": DEFAULT_SHAPES["coding"]}
DEFAULT_KEY = "default"  # a shapes entry for apps without their own


def shapes_for_mode(mode: str) -> dict[str, SessionShape] | None:
    """The shapes of a ``--sessions`` mode: ``off`` (None), ``auto`` (DEFAULT_SHAPES), ``chat`` or
    ``agent`` (that kind for every app: an app's own default shape when it has that kind, else
    the chatbot / coding shape), ``file:shapes.toml`` (:func:`load_shapes`)."""
    m = str(mode).strip()
    low = m.lower()
    if low == "off":
        return None
    if low == "auto":
        return dict(DEFAULT_SHAPES)
    if low in ("chat", "agent"):
        forced = {a: s if s.kind == low else _TEMPLATES[low] for a, s in DEFAULT_SHAPES.items()}
        return {**forced, DEFAULT_KEY: _TEMPLATES[low]}
    if low.startswith("file:"):
        return load_shapes(m[5:].strip())
    raise UserError(f"--sessions {mode!r}: use {SESSION_MODES}")


_FIELDS = ("kind", "turns", "think_s", "system_tokens", "tool_result_tokens",
           "max_context_tokens")
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_shapes(path: str | Path) -> dict[str, SessionShape]:
    """Session shapes from a TOML or JSON file: one table per app (``[coding]``) with any of the
    fields of :class:`SessionShape`, overriding the app's default shape (or the default shape of
    the given ``kind``); ``[default]`` covers apps with no shape of their own. Strict: unknown
    apps' sections need a ``kind``; unknown keys and wrong types are errors naming the key."""
    path = Path(path)
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{label}: cannot read the shapes file ({exc.strerror or exc}); check "
                        "the path") from None
    if path.suffix.lower() == ".toml":
        from slobench import tomlread

        try:
            data: Any = tomlread.loads(raw.decode("utf-8"))
        except (tomlread.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{label}: not valid TOML ({exc})") from None
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{label}: not valid JSON ({exc}); a .toml file is read as "
                            "TOML") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{label}: expected one table per app, e.g. [coding] with kind, turns, "
                        "think_s, ...")
    shapes = dict(DEFAULT_SHAPES)
    for app, section in data.items():
        where = f"{label}: [{app}]"
        if not isinstance(app, str) or not _APP_NAME.match(app):
            raise UserError(f"{where}: app names are letters, digits, '_', '-' or '.'")
        if not isinstance(section, dict):
            raise UserError(f"{where}: expected a table of {', '.join(_FIELDS)}")
        for key in section:
            if key not in _FIELDS:
                raise UserError(f"{where} {key}: unknown key; {did_you_mean(key, _FIELDS)}"
                                f"use {', '.join(_FIELDS)}")
        shapes[app] = _override(shapes.get(app), section, where)
    return shapes


_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "turns": (str, int), "think_s": (str, int, float),
    "system_tokens": (str, int), "tool_result_tokens": (str, int), "max_context_tokens": (int,)}


def _override(base: SessionShape | None, section: dict[str, Any], where: str) -> SessionShape:
    for key, value in section.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            kinds = " or ".join({str: "a string", int: "a whole number",
                                 float: "a number"}[t] for t in _TYPES[key])
            raise UserError(f"{where} {key}: {value!r} has the wrong type; give {kinds}")
    kind = section.get("kind", base.kind if base is not None else None)
    if kind is None:
        raise UserError(f"{where} kind: required for an app with no built-in shape; use one of "
                        f"{', '.join(KINDS)}")
    if kind not in KINDS:
        raise UserError(f"{where} kind: {kind!r} is not one of {', '.join(KINDS)}")
    start = base if base is not None and base.kind == kind else _TEMPLATES[kind]
    fields = {f: getattr(start, f) for f in _FIELDS}
    if kind != "agent":
        fields["tool_result_tokens"] = Fixed(0)
    if kind == "single":
        fields["turns"], fields["think_s"] = Fixed(1), Seconds("fixed", 0.0)
    parsers = {"turns": parse_turns, "think_s": parse_seconds, "system_tokens": _as_tokens,
               "tool_result_tokens": _as_tokens}
    for key, value in section.items():
        if key == "kind":
            continue
        try:
            fields[key] = parsers[key](value, what=f"{where} {key}") if key in parsers else value
        except UserError as exc:
            raise UserError(_located(str(exc), f"{where} {key}")) from None
    try:
        return SessionShape(**fields)
    except UserError as exc:
        msg = str(exc)
        key = next((f for f in _FIELDS if msg.startswith(f)), None)
        if key is not None:
            raise UserError(_located(msg[len(key):], f"{where} {key}")) from None
        raise UserError(f"{where}: {msg}") from None


def _located(msg: str, head: str) -> str:
    """``head: detail`` from a message that may already start with ``head``."""
    if msg.startswith(head):
        msg = msg[len(head):]
    return f"{head}: {msg.lstrip(' :')}"


def _shape_for(shapes: Mapping[str, SessionShape], app: str) -> SessionShape:
    shape = shapes.get(app) or shapes.get(DEFAULT_KEY)
    if shape is None:
        raise UserError(f"no session shape for app {app!r}; {did_you_mean(app, list(shapes))}"
                        f"give one in a shapes file ([{app}] with a kind, or [default]), or use "
                        "--sessions chat / agent")
    return shape


# ---------------------------------------------------------------------------------------------
# Counter-based randomness: a draw depends on (seed, stream, row, turn), not on batching.

STREAMS = ("app", "start", "turns", "think", "message", "output", "tool", "system", "client_app",
           # sessions under way at 0 (start="steady"); appended so the others keep their keys
           "pre_count", "pre_app", "pre_gap", "pre_turns", "pre_think", "pre_age")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer (wrapping uint64 arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _stream_keys(seed: int) -> dict[str, np.uint64]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UserError(f"--seed {seed!r} must be a whole number >= 0")
    s = np.array([int(seed) % 2**64], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return {name: np.uint64(_mix64(_mix64(s) + _GOLDEN * np.uint64(i + 1))[0])
                for i, name in enumerate(STREAMS)}


def _uniform(key: np.uint64, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers, one per counter (splitmix64 of key + counter · golden)."""
    c = np.asarray(counter).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix64(c * _GOLDEN + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _name_counter(*names: str) -> np.ndarray:
    """A stable 64-bit counter for a name (a client, a client+app pair)."""
    h = hashlib.blake2b("\x00".join(names).encode("utf-8"), digest_size=8).digest()
    return np.array([int.from_bytes(h, "little")], dtype=np.uint64)


def _length_quantile(dist: LengthDist, u: np.ndarray) -> np.ndarray:
    """Token counts with uniform numbers ``u`` (inverse CDF of the length forms)."""
    if isinstance(dist, Fixed):
        return np.full(len(u), dist.n, dtype=np.int64)
    if isinstance(dist, Uniform):
        width = dist.hi - dist.lo + 1
        return dist.lo + np.minimum(np.floor(u * width).astype(np.int64), width - 1)
    if isinstance(dist, LogNormal):
        x = np.exp(dist.mu + dist.sigma * ndtri(u))
        hi = _HARD_MAX if dist.max is None else dist.max
        return np.rint(np.clip(x, dist.min, hi)).astype(np.int64)
    # Another LengthDist: its own sampler, seeded from the numbers (deterministic per batch).
    digest = hashlib.blake2b(np.ascontiguousarray(u[:64]).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return np.asarray(dist.sample(len(u), rng), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Sessionizing


def _seg_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every True of ``starts`` (``starts[0]`` must be True)."""
    cs = np.cumsum(values)
    first = np.flatnonzero(starts)
    base = cs[first] - values[first]
    return cs - base[np.cumsum(starts) - 1]


def _chain(first: np.ndarray, step: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``x = first`` at turn 0, else the previous turn's ``x + step``: added turn by turn, so
    that the float result never depends on what else is in the batch."""
    x = np.asarray(first, dtype=np.float64).copy()
    order = np.argsort(k, kind="stable")
    ends = np.cumsum(np.bincount(k))
    for j in range(1, len(ends)):
        idx = order[ends[j - 1]:ends[j]]
        x[idx] = x[idx - 1] + step[idx]
    return x


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] .. starts[i] + lengths[i] - 1``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - offsets,
                                                        lengths)


def _list_array(lengths: np.ndarray, values: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise UserError("more than 2^31 prefix blocks in one batch; use a shorter duration or a "
                        "larger block size")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values, pa.int64()))


@dataclass(frozen=True)
class _Cols:
    """The columns of one input batch that sessions are made from."""

    ids: pa.Array
    g: np.ndarray  # the rows' numbers in the whole input (random counters)
    arrival: np.ndarray
    client: np.ndarray
    clients: list[str]
    row_app: np.ndarray
    row_apps: list[str]
    inp: np.ndarray
    out: np.ndarray
    rea: np.ndarray
    vis: np.ndarray
    img_len: np.ndarray
    img_flat: np.ndarray
    img_off: np.ndarray


class _Sessionizer:
    """The state that carries across batches: random keys, block-id counter, system prompts."""

    def __init__(self, shapes: Mapping[str, SessionShape], apps: Mapping[str, float] | str | None,
                 app_scope: str, rate_of: str, block_tokens: int, seed: int,
                 duration_s: float | None, start: str = "steady") -> None:
        if not shapes:
            raise UserError("no session shapes given")
        for name, shape in shapes.items():
            if not isinstance(shape, SessionShape):
                raise UserError(f"session shape of {name!r} is not a SessionShape")
        if app_scope not in APP_SCOPES:
            raise UserError(f"--app-scope {app_scope!r}: use one of {', '.join(APP_SCOPES)}")
        if rate_of not in RATE_OF:
            raise UserError(f"--session-rate {rate_of!r}: use one of {', '.join(RATE_OF)}")
        if start not in STARTS:
            raise UserError(f"--session-start {start!r}: use one of {', '.join(STARTS)}")
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, int | np.integer) \
                or block_tokens < 1:
            raise UserError(f"block_tokens {block_tokens!r} must be a whole number >= 1")
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise UserError(f"duration {duration_s!r} must be a finite number of seconds > 0")
        self.shapes = shapes
        self.mix = (None if apps is None else parse_app_mix(apps) if isinstance(apps, str)
                    else _normalize_mix(apps, str(dict(apps))))
        self.app_scope, self.rate_of = app_scope, rate_of
        self.block = int(block_tokens)
        self.duration_s = duration_s
        self.window_cap = min(STEADY_WINDOW_S, math.inf if duration_s is None else duration_s)
        self.gaps: dict[Seconds, tuple[np.ndarray, float]] = {}
        self.keys = _stream_keys(seed)
        self.next_block = 0
        self.rows_seen = 0
        self.client_app: dict[str, str] = {}
        # (client, app) -> (system tokens, first block id, full system blocks)
        self.system: dict[tuple[str, str], tuple[int, int, int]] = {}

    # -- per-row app ---------------------------------------------------------------------------

    @staticmethod
    def _draw(mix: Mapping[str, float], u: np.ndarray) -> np.ndarray:
        cum = np.cumsum(list(mix.values()))
        return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(mix) - 1)

    def _apps(self, g: np.ndarray, client: np.ndarray, clients: list[str],
              row_app: np.ndarray, row_apps: list[str]) -> tuple[np.ndarray, list[str]]:
        """(app index per row, app names)."""
        if self.app_scope == "session":
            if self.mix is None:
                return row_app, row_apps
            names = list(self.mix)
            return self._draw(self.mix, _uniform(self.keys["app"], g)), names
        mix = self.mix
        if mix is None:  # the table's own request shares
            counts = np.bincount(row_app, minlength=len(row_apps))
            mix = {a: float(c) for a, c in zip(row_apps, counts, strict=True) if c > 0}
        for c in clients:
            if c not in self.client_app:
                u = _uniform(self.keys["client_app"], _name_counter(c))
                self.client_app[c] = list(mix)[int(self._draw(mix, u)[0])]
        names = sorted({self.client_app[c] for c in clients})
        index = {a: i for i, a in enumerate(names)}
        per_client = np.array([index[self.client_app[c]] for c in clients], dtype=np.int64)
        return per_client[client], names

    def _system_of(self, client: str, app: str, shape: SessionShape) -> tuple[int, int, int]:
        key = (client, app)
        if key not in self.system:
            u = _uniform(self.keys["system"], _name_counter(client, app))
            tokens = int(_length_quantile(shape.system_tokens, u)[0])
            n_full = tokens // self.block
            self.system[key] = (tokens, self.next_block, n_full)
            self.next_block += n_full
        return self.system[key]

    # -- one batch ------------------------------------------------------------------------------

    def _columns(self, table: pa.Table, g0: int) -> _Cols:
        arrival = table["arrival_s"].to_numpy().astype(np.float64)
        client, clients = _codes(table["client_id"])
        row_app, row_apps = _codes(table["app"])
        out = table["output_tokens"].to_numpy().astype(np.int64)
        rea = np.clip(table["reasoning_tokens"].to_numpy().astype(np.int64), 0, None)
        img_col = table["image_tokens"].combine_chunks()
        img_len = np.nan_to_num(pc.list_value_length(img_col).to_numpy(zero_copy_only=False)
                                .astype(np.float64)).astype(np.int64)
        return _Cols(
            ids=table["request_id"].combine_chunks(),
            g=np.arange(g0, g0 + table.num_rows, dtype=np.int64), arrival=arrival,
            client=client, clients=clients, row_app=row_app, row_apps=row_apps,
            inp=table["input_tokens"].to_numpy().astype(np.int64), out=out, rea=rea,
            vis=np.clip(out - rea, 0, None), img_len=img_len,
            img_flat=pc.list_flatten(img_col).to_numpy(zero_copy_only=False).astype(np.int64),
            img_off=np.cumsum(img_len) - img_len)

    def run(self, table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """Sessions started by the rows of ``table``: (rows, start row number, turn index), not
        yet sorted; the last two break ties in the arrival order."""
        table = conform_workload(table, "sessionize")
        n = table.num_rows
        g0 = self.rows_seen
        self.rows_seen += n
        if n == 0:
            return _no_rows()
        if n_follow := int(np.count_nonzero(table["turn"].to_numpy() > 0)):
            raise UserError(f"the workload already has sessions ({n_follow} follow-up turns); "
                            "sessions are made from single-turn workloads")
        c = self._columns(table, g0)
        app, names = self._apps(c.g, c.client, c.clients, c.row_app, c.row_apps)
        shapes = [_shape_for(self.shapes, a) for a in names]

        # Starts: independent thinning keeps the request rate (E[turns] requests per start).
        if self.rate_of == "requests":
            p = 1.0 / np.array([s.mean_turns for s in shapes])[app]
            starts = np.flatnonzero(_uniform(self.keys["start"], c.g) < p)
        else:
            starts = np.arange(n)
        s_app = app[starts]
        s_g = c.g[starts]
        n_turns = np.ones(len(starts), dtype=np.int64)
        u_turns = _uniform(self.keys["turns"], s_g)
        for a in np.unique(s_app):
            sel = s_app == a
            n_turns[sel] = np.searchsorted(shapes[a].cdf, u_turns[sel], side="right") + 1
        zero = np.zeros(len(starts), dtype=np.int64)
        return self._sessions(c, names, shapes, starts, s_app, s_g, n_turns, skip=zero,
                              at=c.arrival[starts], gap=np.zeros(len(starts)), tag=zero - 1)

    # -- sessions under way at time 0 (start="steady") -----------------------------------------

    def _gap_table(self, think: Seconds) -> tuple[np.ndarray, float]:
        """(cumulative weights of the length-biased think time over a quantile grid, the mean
        think time on that grid)."""
        if think not in self.gaps:
            x = think.quantile((np.arange(_GRID) + 0.5) / _GRID)
            total = float(x.sum())
            cum = np.cumsum(x) / total if total > 0 else np.zeros(_GRID)
            cum[-1] = 1.0
            self.gaps[think] = (cum, total / _GRID)
        return self.gaps[think]

    def _busy_s(self, shape: SessionShape) -> float:
        """Sessions of ``shape`` under way at any time, per input request per second: the
        session-start rate per request times the mean span (Little's law)."""
        per_request = 1.0 / shape.mean_turns if self.rate_of == "requests" else 1.0
        return per_request * (shape.mean_turns - 1.0) * self._gap_table(shape.think_s)[1]

    def _length_biased(self, think: Seconds, u: np.ndarray) -> np.ndarray:
        """Think times drawn with density ∝ x·f(x): the gap a fixed instant falls into."""
        cum, _ = self._gap_table(think)
        j = np.minimum(np.searchsorted(cum, u, side="right"), _GRID - 1)
        lo = np.where(j > 0, cum[np.maximum(j - 1, 0)], 0.0)
        width = cum[j] - lo
        frac = np.divide(u - lo, width, out=np.full(len(u), 0.5), where=width > 0)
        q = np.minimum((j + np.clip(frac, 0.0, 1.0)) / _GRID, np.nextafter(1.0, 0.0))
        return think.quantile(q)

    def prior(self, table: pa.Table, window_s: float) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The turns at or after 0 of sessions that started before 0, in the stationary state of
        a session-start process with the mean rate of ``table`` (the input's rows before
        ``window_s``, the first rows of the input). See "Steady start" in the module doc."""
        table = conform_workload(table, "sessionize")
        n = table.num_rows
        if n == 0 or not window_s > 0:
            return _no_rows()
        c = self._columns(table, 0)
        mix = self.mix if self.app_scope == "session" else None
        mixed = mix is not None
        if mix is not None:  # each session draws its app: weigh the mix by how long they last
            names = list(mix)
            shapes = [_shape_for(self.shapes, a) for a in names]
            share = np.array(list(mix.values()), dtype=np.float64)
            busy = share / share.sum() * np.array([self._busy_s(s) for s in shapes])
            lam = np.full(n, busy.sum() / window_s)
        else:
            app, names = self._apps(c.g, c.client, c.clients, c.row_app, c.row_apps)
            shapes = [_shape_for(self.shapes, a) for a in names]
            busy = np.array([self._busy_s(s) for s in shapes])
            lam = busy[app] / window_s
        # Each row stands for Poisson(lam) sessions under way (its client, its first message).
        count = np.zeros(n, dtype=np.int64)
        pos = lam > 0
        u = _uniform(self.keys["pre_count"], c.g[pos])
        from scipy.stats import poisson  # here: scipy.stats costs every CLI start 0.4 s

        count[pos] = np.maximum(poisson.ppf(u, lam[pos]), 0).astype(np.int64)
        total = int(count.sum())
        if total == 0:
            return _no_rows()
        s_row = np.repeat(np.arange(n), count)
        tag = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        s_g = _PRE_G + np.arange(total, dtype=np.int64)  # counters apart from the input rows'
        if mixed:
            s_app = self._draw(dict(zip(names, busy, strict=True)),
                               _uniform(self.keys["pre_app"], s_g))
        else:
            s_app = app[s_row]
        # Where 0 falls in the session: in the gap before turn k (k >= 1) with probability
        # ∝ P(T > k); that gap is length-biased, 0 uniform in it; T given T > k.
        skip = np.zeros(total, dtype=np.int64)
        n_turns = np.zeros(total, dtype=np.int64)
        gap = np.zeros(total)
        u_gap, u_turns = _uniform(self.keys["pre_gap"], s_g), _uniform(self.keys["pre_turns"], s_g)
        u_think = _uniform(self.keys["pre_think"], s_g)
        for a in np.unique(s_app):
            sel = s_app == a
            cdf = shapes[a].cdf
            w = np.cumsum(1.0 - cdf[:-1])
            k = np.minimum(np.searchsorted(w / w[-1], u_gap[sel], side="right"), MAX_TURNS - 2) + 1
            lo = cdf[k - 1]
            t = np.searchsorted(cdf, lo + u_turns[sel] * (1.0 - lo), side="right") + 1
            skip[sel], n_turns[sel] = k, np.clip(t, k + 1, MAX_TURNS)
            gap[sel] = self._length_biased(shapes[a].think_s, u_think[sel])
        at = _uniform(self.keys["pre_age"], s_g) * gap
        if self.duration_s is not None:  # next turn after the end: nothing of it is kept
            live = np.flatnonzero(at < self.duration_s)
            s_row, s_app, s_g, n_turns, skip, at, gap, tag = (
                x[live] for x in (s_row, s_app, s_g, n_turns, skip, at, gap, tag))
        return self._sessions(c, names, shapes, s_row, s_app, s_g, n_turns, skip=skip, at=at,
                              gap=gap, tag=tag)

    # -- turns of sessions ----------------------------------------------------------------------

    def _sessions(self, c: _Cols, names: list[str], shapes: list[SessionShape],
                  s_row: np.ndarray, s_app: np.ndarray, s_g: np.ndarray, n_turns: np.ndarray, *,
                  skip: np.ndarray, at: np.ndarray, gap: np.ndarray, tag: np.ndarray
                  ) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The rows of sessions: session ``i`` has the client and first message of batch row
        ``s_row[i]``, app ``s_app[i]``, ``n_turns[i]`` turns and random counter ``s_g[i]``.
        Turns before ``skip[i]`` are history only (not in the result); turn ``skip[i]`` is due
        at ``at[i]`` (after a think time ``gap[i]`` when skip > 0). ``tag[i] >= 0`` names a
        session under way at 0 (ids ``<row id>.p<tag>.t<k>``)."""
        kind = np.array([KINDS.index(s.kind) for s in shapes], dtype=np.int64)
        # One entry per planned turn, sessions in order.
        sess = np.repeat(np.arange(len(s_row)), n_turns)
        k = np.arange(len(sess), dtype=np.int64) - np.repeat(np.cumsum(n_turns) - n_turns,
                                                            n_turns)
        row0 = s_row[sess]
        t_app = s_app[sess]
        t_kind = kind[t_app]
        t_client = c.client[row0]
        counter = s_g[sess].astype(np.uint64) * np.uint64(_TURN_KEY) + k.astype(np.uint64)
        follow = k > 0

        # Bootstrap pools: the rows of each client in this batch.
        by_client = np.argsort(c.client, kind="stable")
        pool_size = np.bincount(c.client, minlength=len(c.clients))
        pool_first = np.cumsum(pool_size) - pool_size

        def pick(stream: str, mask: np.ndarray) -> np.ndarray:
            cl = t_client[mask]
            j = np.floor(_uniform(self.keys[stream], counter[mask]) * pool_size[cl]).astype(
                np.int64)
            return by_client[pool_first[cl] + np.minimum(j, pool_size[cl] - 1)]

        out_row = row0.copy()
        out_row[follow] = pick("output", follow)
        msg_row = np.where(follow, -1, row0)
        chat_follow = follow & (t_kind == KINDS.index("chat"))
        msg_row[chat_follow] = pick("message", chat_follow)

        added = np.zeros(len(k), dtype=np.int64)  # the new message or tool result
        has_msg = msg_row >= 0
        added[has_msg] = c.inp[msg_row[has_msg]]
        think = np.zeros(len(k))
        agent_follow = follow & (t_kind == KINDS.index("agent"))
        u_think = _uniform(self.keys["think"], counter[follow])
        u_tool = _uniform(self.keys["tool"], counter[agent_follow])
        f_app, a_app = t_app[follow], t_app[agent_follow]
        think_f = np.zeros(len(f_app))
        tool_a = np.zeros(len(a_app), dtype=np.int64)
        for a in np.unique(t_app):
            sel = f_app == a
            think_f[sel] = shapes[a].think_s.quantile(u_think[sel])
            sel = a_app == a
            if sel.any():
                tool_a[sel] = _length_quantile(shapes[a].tool_result_tokens, u_tool[sel])
        think[follow] = think_f
        added[agent_follow] = tool_a
        t_skip = skip[sess]
        resumed = follow & (k == t_skip)  # the first turn at or after 0 of a session under way
        think[resumed] = gap[sess[resumed]]
        arr = _chain(at[sess], think, np.maximum(k - t_skip, 0))

        # System prompts per (client, app) pair.
        pair = t_client * len(names) + t_app
        sys_tok = np.zeros(len(k), dtype=np.int64)
        sys_base = np.zeros(len(k), dtype=np.int64)
        sys_full = np.zeros(len(k), dtype=np.int64)
        for pr in np.unique(pair):
            cl, a = divmod(int(pr), len(names))
            tok, base, full = self._system_of(c.clients[cl], names[a], shapes[a])
            sel = pair == pr
            sys_tok[sel], sys_base[sel], sys_full[sel] = tok, base, full
        limit = np.array([s.max_context_tokens for s in shapes], dtype=np.int64)[t_app]

        # Context growth; a turn that would exceed the limit opens a fresh session instead.
        vis_prev = np.zeros(len(k), dtype=np.int64)
        vis_prev[1:] = c.vis[out_row[:-1]]
        seg = ~follow
        ctx = _seg_cumsum(np.where(seg, sys_tok + added, vis_prev + added), seg)
        todo = np.arange(len(k))  # turns of the sessions that may still be cut
        while True:
            over = todo[~seg[todo] & (ctx[todo] > limit[todo])]
            if len(over) == 0:
                break
            _, first = np.unique(sess[over], return_index=True)  # the first cut per session
            seg[over[first]] = True
            todo = todo[np.isin(sess[todo], sess[over])]
            sub = seg[todo]
            ctx[todo] = _seg_cumsum(np.where(sub, sys_tok[todo] + added[todo],
                                             vis_prev[todo] + added[todo]), sub)
        # Segments (sessions after cuts) over all turns, history included: turn numbers,
        # session ids and the images already sent come from there.
        seg_of = np.cumsum(seg) - 1
        seg_first = np.flatnonzero(seg)
        turn_all = np.arange(len(k)) - seg_first[seg_of]
        new_len = np.where(has_msg, c.img_len[np.maximum(msg_row, 0)], 0)
        new_end = np.cumsum(new_len)
        img_start = (new_end - new_len)[seg_first][seg_of]

        keep = k >= t_skip
        if self.duration_s is not None:
            keep &= arr < self.duration_s
        idx = np.flatnonzero(keep)
        m = len(idx)
        if m == 0:
            return _no_rows()
        label = seg_of[idx]
        kseg = np.ones(m, dtype=bool)
        kseg[1:] = label[1:] != label[:-1]  # kept turns of a segment are contiguous
        seg_id = np.cumsum(kseg) - 1
        first = np.flatnonzero(kseg)
        last = np.append(first[1:] - 1, m - 1)

        # Prefix blocks: [system blocks][this session's blocks][a partial block of its own].
        b = self.block
        ctx_k, sys_full_k = ctx[idx], sys_full[idx]
        full = ctx_k // b
        part = (ctx_k % b != 0).astype(np.int64)
        own = np.maximum(full[last] - sys_full_k[first], 0)
        seg_base = self.next_block + np.cumsum(own) - own
        self.next_block += int(own.sum())
        part_id = self.next_block + np.cumsum(part) - part
        self.next_block += int(part.sum())
        lengths3 = np.stack([sys_full_k, full - sys_full_k, part], axis=1).ravel()
        starts3 = np.stack([sys_base[idx], seg_base[seg_id], part_id], axis=1).ravel()
        blocks = _list_array(full + part, _runs(starts3, lengths3))

        # Images: every image sent so far in the session (the history is re-sent).
        i_start, i_len = img_start[idx], new_end[idx] - img_start[idx]
        if i_len.any():
            new_flat = c.img_flat[_runs(c.img_off[np.maximum(msg_row, 0)], new_len)]
            images = _list_array(i_len, new_flat[_runs(i_start, i_len)])
        else:
            images = _list_array(np.zeros(m, np.int64), np.zeros(0, np.int64))

        stem = c.ids.take(pa.array(s_row))
        if (tag >= 0).any():
            stem = pc.if_else(pa.array(tag >= 0), pc.binary_join_element_wise(
                stem, pa.array(np.maximum(tag, 0)).cast(pa.string()), ".p"), stem)

        def rid_of(i: np.ndarray) -> pa.Array:
            st = stem.take(pa.array(sess[i]))
            return pc.if_else(pa.array(k[i] == 0), st, pc.binary_join_element_wise(
                st, pa.array(k[i]).cast(pa.string()), ".t"))

        rid = rid_of(idx)
        # A session's id is its first turn's, which may be history (not kept).
        sid = (rid.take(pa.array(first[seg_id])) if m == len(k)
               else rid_of(seg_first[label]))
        out_k = out_row[idx]
        cols = [
            rid,
            pa.array(arr[idx], pa.float64()),
            pa.DictionaryArray.from_arrays(pa.array(t_client[idx].astype(np.int32)),
                                           pa.array(c.clients, pa.string())).cast(pa.string()),
            pa.DictionaryArray.from_arrays(pa.array(t_app[idx].astype(np.int32)),
                                           pa.array(names, pa.string())).cast(pa.string()),
            sid,
            pa.array(turn_all[idx], pa.int32()),
            pa.array(np.where(seg[idx], 0.0, think[idx]), pa.float64()),
            pa.array(ctx_k, pa.int64()),
            pa.array(c.out[out_k], pa.int64()),
            pa.array(c.rea[out_k], pa.int64()),
            blocks,
            images,
            pa.nulls(m, pa.string()),
        ]
        rows = pa.Table.from_arrays(cols, schema=WORKLOAD_SCHEMA)
        return rows, s_g[sess[idx]], k[idx]


def _no_rows() -> tuple[pa.Table, np.ndarray, np.ndarray]:
    return WORKLOAD_SCHEMA.empty_table(), np.zeros(0, np.int64), np.zeros(0, np.int64)


def _window_end(cap: float, duration_s: float | None, last: float) -> float:
    """The end of the input window whose rate the sessions under way at 0 follow: ``cap``, or
    the last arrival when the input ends before it and no duration says otherwise."""
    return cap if duration_s is not None or last >= cap else last


def _sorted(rows: pa.Table, start: np.ndarray, k: np.ndarray) -> tuple[pa.Table, np.ndarray,
                                                                       np.ndarray]:
    order = np.lexsort((k, start, rows["arrival_s"].to_numpy()))
    if np.array_equal(order, np.arange(len(order))):
        return rows, start, k
    return rows.take(pa.array(order)), start[order], k[order]


def sessionize(table: pa.Table, *, shapes: Mapping[str, SessionShape] = DEFAULT_SHAPES,
               apps: Mapping[str, float] | str | None = None, app_scope: str = "session",
               rate_of: str = "requests", block_tokens: int = DEFAULT_BLOCK_TOKENS,
               seed: int = 0, duration_s: float | None = None,
               start: str = "steady") -> pa.Table:
    """Sessions from a single-turn Workload table (see the module doc), sorted by arrival.

    ``apps``: an app mix (``{"chatbot": 0.7, "coding": 0.3}`` or ``"chatbot:0.7,coding:0.3"``;
    with ``rate_of="requests"`` it is the share of requests per app) or None to keep each row's
    app. ``app_scope``: ``"session"`` (each session draws its app) or ``"client"`` (each client
    gets one app, drawn once; from the table's own app shares when ``apps`` is None).
    ``duration_s``: drop turns due at or after it (None keeps all). ``start``: ``"steady"``
    (sessions already under way at 0, as in a system that has run for long) or ``"empty"``
    (no session before 0: the request rate builds up over the first minutes).
    """
    sz = _Sessionizer(shapes, apps, app_scope, rate_of, block_tokens, seed, duration_s, start)
    rows, first, k = sz.run(table)
    if start == "steady" and table.num_rows:
        arrival = table["arrival_s"].to_numpy()
        end = _window_end(sz.window_cap, duration_s, float(arrival.max()))
        p_rows, p_first, p_k = sz.prior(table.filter(pa.array(arrival < end)), end)
        rows, first, k = (pa.concat_tables([rows, p_rows]), np.concatenate([first, p_first]),
                          np.concatenate([k, p_k]))
    rows = _sorted(rows, first, k)[0]
    ids = rows["request_id"]
    if pc.count_distinct(ids).as_py() != rows.num_rows:
        raise UserError("sessionize: request ids are not unique (the workload's ids repeat, or "
                        "look like '<id>.t<k>' or '<id>.p<j>.t<k>'); give each request its own "
                        "id")
    return conform_workload(rows, "sessionized workload")


def iter_sessionized(batches: Iterable[pa.RecordBatch | pa.Table], *,
                     shapes: Mapping[str, SessionShape] = DEFAULT_SHAPES,
                     apps: Mapping[str, float] | str | None = None, app_scope: str = "session",
                     rate_of: str = "requests", block_tokens: int = DEFAULT_BLOCK_TOKENS,
                     seed: int = 0, duration_s: float | None = None, start: str = "steady"
                     ) -> Iterator[pa.RecordBatch]:
    """:func:`sessionize` for a stream of batches in arrival order: yields batches in arrival
    order, holding back follow-up turns until no later input can come before them (with
    ``start="steady"``, everything until the input has passed the window that the sessions
    under way at 0 are drawn from: the first ``min(STEADY_WINDOW_S, duration_s)`` seconds).

    The rows equal those of ``sessionize`` on the concatenated table, except that follow-up
    lengths are bootstrapped from the client's rows in the same input batch (for sessions
    under way at 0: in the window, as ``sessionize`` does), block ids are numbered in the order
    batches are processed (the same blocks, other numbers), and with ``app_scope="client"`` and
    no ``apps`` a client's app is drawn from the app shares of the batch it first appears in.
    """
    sz = _Sessionizer(shapes, apps, app_scope, rate_of, block_tokens, seed, duration_s, start)
    held = WORKLOAD_SCHEMA.empty_table()
    held_start = np.zeros(0, np.int64)
    held_k = np.zeros(0, np.int64)
    window: list[pa.Table] = []  # the input's first rows, for the sessions under way at 0
    pending = start == "steady"  # those sessions are still to come: nothing can be yielded
    cap = sz.window_cap
    last = -math.inf

    def hold(rows: pa.Table, first: np.ndarray, k: np.ndarray) -> None:
        nonlocal held, held_start, held_k
        held, held_start, held_k = _sorted(pa.concat_tables([held, rows]),
                                           np.concatenate([held_start, first]),
                                           np.concatenate([held_k, k]))

    for batch in batches:
        t = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if t.num_rows == 0:
            continue
        arrival = t["arrival_s"].to_numpy()
        if arrival[0] < last or np.any(np.diff(arrival) < 0):
            raise UserError("iter_sessionized: batches must come in arrival order")
        last = float(arrival[-1])
        hold(*sz.run(t))
        if pending:
            window.append(t.slice(0, int(np.searchsorted(arrival, cap, side="left"))))
            if last < cap:
                continue
            hold(*sz.prior(pa.concat_tables(window), cap))
            pending, window = False, []
        # Later input arrives at or after `last`, and so do its sessions' turns.
        n_out = int(np.searchsorted(held["arrival_s"].to_numpy(), last, side="right"))
        if n_out:
            yield held.slice(0, n_out).combine_chunks().to_batches()[0]
            held, held_start, held_k = held.slice(n_out), held_start[n_out:], held_k[n_out:]
    if pending and sz.rows_seen:
        w = pa.concat_tables(window)
        end = _window_end(cap, duration_s, last)
        hold(*sz.prior(w.filter(pc.less(w["arrival_s"], end)), end))
    if held.num_rows:
        yield held.combine_chunks().to_batches()[0]


def steady_after_s(shapes: Mapping[str, SessionShape], apps: Iterable[str]) -> float:
    """The scale of the start-up transient of a sessionized workload: the longest
    :attr:`SessionShape.mean_age_s` among ``apps`` (a warm-up of about this length)."""
    return max((_shape_for(shapes, a).mean_age_s for a in apps), default=0.0)


def session_summary(table: pa.Table) -> dict[str, float] | None:
    """Sessions of a Workload table: how many, mean turns, and the mean span from a session's
    first arrival to its last (the start-up transient of the request rate lasts about that
    long); None when no request has a follow-up."""
    if table.num_rows == 0 or not np.any(table["turn"].to_numpy() > 0):
        return None
    sid = table["session_id"]
    codes, names = _codes(sid)
    empty = pc.equal(sid, "").to_numpy(zero_copy_only=False)
    codes = np.where(empty, len(names) + np.arange(len(codes)), codes)  # "" stands alone
    _, codes = np.unique(codes, return_inverse=True)
    arrival = table["arrival_s"].to_numpy()
    n = int(codes.max()) + 1
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, codes, arrival)
    np.maximum.at(last, codes, arrival)
    return {"sessions": float(n), "mean_turns": table.num_rows / n,
            "mean_span_s": float(np.mean(last - first))}
