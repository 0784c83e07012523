"""SLO specs per application class: the one parser, the built-in defaults, and their text form.

Grammar (whitespace is free everywhere)::

    spec       := class (";" class)*
    class      := NAME ":" constraint ("," constraint)*
    constraint := METRIC "<=" DURATION
                | "deadline" "<=" DURATION ["+" DURATION "/tok"]
                | "attain" ">=" (PERCENT "%" | FRACTION)
    DURATION   := NUMBER ("us" | "ms" | "s" | "min")

``NAME`` is an application class (the Workload ``app`` column) or ``*`` for every class without an
entry of its own. See docs/slo.md for the meaning of each metric and where the defaults come from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from slobench.errors import UserError, did_you_mean

# Per-request latency metrics a constraint can bound (see metrics.derive for their definitions).
METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e", "ttfa", "think_tpot", "answer_tpot")
DEADLINE = "deadline"
ATTAIN = "attain"
KEYWORDS: tuple[str, ...] = (*METRICS, DEADLINE, ATTAIN)

DEFAULT_ATTAIN = 0.9
WILDCARD = "*"

# Built-in classes. Sources (docs/slo.md): SLOs-Serve (arXiv 2504.08784) per-application TTFT/TPOT
# characterization; human reading speed (~5-10 words/s) for the chat TPOT; DistServe (2401.09670).
DEFAULT_SPEC = (
    "chatbot: ttft<=1s, tpot<=100ms; "
    "coding: ttft<=2s, tpot<=50ms; "
    "summarization: ttft<=3s, tpot<=100ms; "
    "tool: ttft<=1s, tpot<=50ms; "
    "reasoning: ttft<=1s, think_tpot<=50ms, answer_tpot<=100ms; "
    "*: ttft<=1s, tpot<=100ms"
)

_UNITS: dict[str, str] = {"us": "us", "µs": "us", "μs": "us", "ms": "ms", "s": "s", "min": "min"}
_NAME_RE = re.compile(r"[^\s:;,<>=]+")
_CONSTRAINT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!≤≥]*)\s*(.*)", re.DOTALL)
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE = re.compile(rf"({_NUMBER})\s*([^\d\s.+-][^\s]*)?")
_PERCENT_RE = re.compile(rf"({_NUMBER})\s*(%?)")
_DEADLINE_RE = re.compile(r"(.+?)\s*\+\s*(.+?)\s*/\s*tok(?:en)?s?", re.DOTALL)
_MAX_QUOTE = 40  # longest fragment quoted in an error message


# --------------------------------------------------------------------------- durations


def _scale(num: str, unit: str) -> float:
    """Seconds of ``num`` ``unit``, correctly rounded (decimal arithmetic: 100ms == 0.1 exactly)."""
    factor = {"min": Decimal(60), "s": Decimal(1), "ms": Decimal("1e-3"), "us": Decimal("1e-6")}
    return float(Decimal(num) * factor[unit])


def format_duration(seconds: float) -> str:
    """Shortest text (``us``/``ms``/``s``/``min``) that parses back to exactly ``seconds``."""
    seconds = float(seconds)
    if seconds == 0:
        return "0s"
    best: str | None = None
    for unit, factor in (("min", 1 / 60), ("s", 1.0), ("ms", 1e3), ("us", 1e6)):
        num = seconds * factor
        if abs(num) < 1:
            continue
        txt = f"{num:.12g}"
        if "e" in txt or _scale(txt, unit) != seconds:
            continue
        cand = txt + unit
        if best is None or len(cand) < len(best):
            best = cand
    return best if best is not None else f"{seconds!r}s"


def format_fraction(frac: float) -> str:
    """An attainment target as a percentage (``99%``) when that is exact, else as a fraction."""
    txt = f"{frac * 100:.12g}"
    if "e" not in txt and float(Decimal(txt) / 100) == frac:
        return txt + "%"
    return repr(float(frac))


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Constraint:
    """One bound. ``metric`` is one of METRICS or ``deadline``.

    For a metric: the per-request value must be <= ``limit_s``. For ``deadline``: token i (1-based)
    must arrive by scheduled + ``limit_s`` + (i-1) * ``per_token_s``.
    """

    metric: str
    limit_s: float
    per_token_s: float = 0.0

    @property
    def text(self) -> str:
        if self.metric == DEADLINE and self.per_token_s:
            return (
                f"{DEADLINE}<={format_duration(self.limit_s)}"
                f"+{format_duration(self.per_token_s)}/tok"
            )
        return f"{self.metric}<={format_duration(self.limit_s)}"

    def to_dict(self) -> dict:
        d: dict = {"metric": self.metric, "limit_s": self.limit_s}
        if self.metric == DEADLINE:
            d["per_token_s"] = self.per_token_s
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Constraint:
        return cls(str(d["metric"]), float(d["limit_s"]), float(d.get("per_token_s", 0.0)))


@dataclass(frozen=True)
class ClassSLO:
    """The SLO of one application class: every constraint must hold for a request to meet it, and
    at least ``attain`` of the class's requests must meet it for the class to pass."""

    name: str
    constraints: tuple[Constraint, ...]
    attain: float = DEFAULT_ATTAIN

    @property
    def text(self) -> str:
        """The constraint list as spec text, e.g. ``ttft<=1s, tpot<=100ms, attain>=90%``."""
        parts = [c.text for c in self.constraints]
        parts.append(f"{ATTAIN}>={format_fraction(self.attain)}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "constraints": [c.to_dict() for c in self.constraints],
            "attain": self.attain,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> ClassSLO:
        return cls(
            name,
            tuple(Constraint.from_dict(c) for c in d["constraints"]),
            float(d.get("attain", DEFAULT_ATTAIN)),
        )


@dataclass(frozen=True)
class SLOSet:
    """All classes of a run: built-in defaults with the user's entries replacing same-named ones."""

    classes: dict[str, ClassSLO]
    source: str = field(default="--slo", compare=False)
    user_classes: tuple[str, ...] = field(default=(), compare=False)

    def for_app(self, app: str) -> ClassSLO:
        """The SLO of ``app``: its own entry, else the ``*`` entry."""
        cls = self.classes.get(app)
        if cls is None:
            cls = self.classes[WILDCARD]
        return cls

    def check_classes(self, apps: Iterable[str]) -> None:
        """Raise UserError for a class in the spec that is neither built in nor one of ``apps``."""
        apps = sorted({str(a) for a in apps})
        builtin = set(_defaults())
        for name in self.classes:
            if name in builtin or name in apps:
                continue
            known = sorted(set(apps) | (builtin - {WILDCARD}))
            did = did_you_mean(name, known)
            raise UserError(
                f"{self.source}: class '{name}' is not built in and no request of the workload has "
                f"app '{name}'; {did}the workload's classes are: {', '.join(apps) or '(none)'}"
            )

    def to_text(self) -> str:
        """Spec text that ``parse_slo`` turns back into an equal set."""
        return "; ".join(f"{name}: {cls.text}" for name, cls in self.classes.items())

    def to_dict(self) -> dict:
        return {"classes": {name: cls.to_dict() for name, cls in self.classes.items()}}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "--slo") -> SLOSet:
        classes = {name: ClassSLO.from_dict(name, c) for name, c in d["classes"].items()}
        if WILDCARD not in classes:
            classes[WILDCARD] = _defaults()[WILDCARD]
        return cls(classes, source)


# --------------------------------------------------------------------------- parser


def _quote(fragment: str) -> str:
    frag = " ".join(fragment.split())
    if len(frag) > _MAX_QUOTE:
        frag = frag[: _MAX_QUOTE - 3] + "..."
    return f"'{frag}'"


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def fail(self, what: str, fragment: str, pos: int, fix: str) -> UserError:
        return UserError(
            f"{self.source}: {what} in {_quote(fragment)} at character {pos + 1} of the SLO spec; "
            f"{fix}"
        )

    def parse(self) -> dict[str, ClassSLO]:
        out: dict[str, ClassSLO] = {}
        where: dict[str, int] = {}
        start = 0
        for seg in self.text.split(";"):
            seg_start = start
            start += len(seg) + 1
            if not seg.strip():
                continue
            lead = len(seg) - len(seg.lstrip())
            frag_pos = seg_start + lead
            colon = seg.find(":")
            if colon < 0:
                raise self.fail(
                    "missing ':' after the class name", seg, frag_pos,
                    "write NAME: constraint, ... e.g. 'chatbot: ttft<=1s, tpot<=100ms'",
                )
            name = seg[:colon].strip()
            if not name:
                raise self.fail(
                    "empty class name", seg, frag_pos,
                    "put an application class (e.g. chatbot) or * before the ':'",
                )
            if not _NAME_RE.fullmatch(name):
                raise self.fail(
                    f"class name '{' '.join(name.split())}' contains spaces or one of :;,<>=",
                    seg, frag_pos, "use the app name of the workload (e.g. chatbot) or *",
                )
            if name in out:
                raise self.fail(
                    f"class '{name}' appears twice (first at character {where[name] + 1})",
                    seg, frag_pos, "give each class one entry with all of its constraints",
                )
            where[name] = frag_pos
            out[name] = self.parse_class(name, seg[colon + 1 :], seg_start + colon + 1, seg,
                                         frag_pos)
        return out

    def parse_class(self, name: str, body: str, body_start: int, seg: str,
                    seg_pos: int) -> ClassSLO:
        constraints: list[Constraint] = []
        attain: float | None = None
        seen: set[str] = set()
        start = body_start
        items = body.split(",")
        for i, item in enumerate(items):
            item_start = start
            start += len(item) + 1
            if not item.strip():
                if len(items) == 1:
                    raise self.fail(
                        f"class '{name}' has no constraints", seg, seg_pos,
                        "add constraints after the ':', e.g. 'chatbot: ttft<=1s, tpot<=100ms'",
                    )
                extra = "the trailing ','" if i == len(items) - 1 else "the extra ','"
                raise self.fail(
                    f"empty constraint in class '{name}'", seg, seg_pos, f"remove {extra}"
                )
            pos = item_start + len(item) - len(item.lstrip())
            frag = item.strip()
            key, value = self.parse_constraint(frag, pos)
            if key in seen:
                raise self.fail(
                    f"'{key}' is given twice in class '{name}'", frag, pos,
                    "keep one bound per metric",
                )
            seen.add(key)
            if key == ATTAIN:
                attain = value  # type: ignore[assignment]
            else:
                constraints.append(value)  # type: ignore[arg-type]
        if not constraints:
            raise self.fail(
                f"class '{name}' has only an attainment target", seg, seg_pos,
                "add at least one latency constraint, e.g. ttft<=1s",
            )
        return ClassSLO(name, tuple(constraints),
                        DEFAULT_ATTAIN if attain is None else attain)

    def parse_constraint(self, frag: str, pos: int) -> tuple[str, Constraint | float]:
        m = _CONSTRAINT_RE.fullmatch(frag)
        if not m:
            raise self.fail(
                "expected METRIC<=DURATION", frag, pos,
                f"e.g. 'ttft<=1s'; metrics: {', '.join(KEYWORDS)}",
            )
        key, op, value = m.group(1).lower(), m.group(2), m.group(3).strip()
        if key not in KEYWORDS:
            did = did_you_mean(key, KEYWORDS)
            raise self.fail(
                f"unknown metric '{m.group(1)}'", frag, pos,
                f"{did}known: {', '.join(KEYWORDS)}",
            )
        op = {"≤": "<=", "≥": ">="}.get(op, op)
        want = ">=" if key == ATTAIN else "<="
        if op != want:
            if not op:
                what = f"missing '{want}' after '{key}'"
            else:
                what = f"'{key}' needs '{want}', not '{op}'"
            fix = (
                f"write e.g. '{ATTAIN}>=99%' (the fraction of requests that must meet the SLO)"
                if key == ATTAIN
                else f"write e.g. '{key}<=1s' (an SLO is an upper bound, met when equal)"
            )
            raise self.fail(what, frag, pos, fix)
        if not value:
            example = f"{ATTAIN}>=99%" if key == ATTAIN else f"{key}<=1s"
            raise self.fail(f"missing value after '{key}{op}'", frag, pos, f"e.g. '{example}'")
        if key == ATTAIN:
            return key, self.parse_attain(value, frag, pos)
        if key == DEADLINE:
            return key, self.parse_deadline(value, frag, pos)
        limit = self.parse_duration(value, frag, pos)
        if limit <= 0:
            raise self.fail(f"'{key}' bound must be positive", frag, pos,
                            "give a duration above zero, e.g. 100ms")
        return key, Constraint(key, limit)

    def parse_duration(self, value: str, frag: str, pos: int) -> float:
        m = _DURATION_RE.fullmatch(value.strip())
        if not m:
            raise self.fail(
                f"'{value}' is not a duration", frag, pos,
                "write a number with a unit: 250us, 100ms, 1.5s or 2min",
            )
        num = float(m.group(1))
        unit = m.group(2)
        if unit is None:
            raise self.fail(f"'{value}' has no unit", frag, pos, "add a unit: 100ms or 1s")
        if unit.lower() not in _UNITS:
            raise self.fail(f"unknown unit '{unit}'", frag, pos, "use us, ms, s or min")
        if num < 0:
            raise self.fail(f"negative duration '{value}'", frag, pos,
                            "latency bounds are positive, e.g. 100ms")
        if not math.isfinite(num):
            raise self.fail(f"'{value}' is not a finite duration", frag, pos,
                            "e.g. 100ms or 1s")
        return _scale(m.group(1), _UNITS[unit.lower()])

    def parse_deadline(self, value: str, frag: str, pos: int) -> Constraint:
        m = _DEADLINE_RE.fullmatch(value)
        if m:
            base = self.parse_duration(m.group(1), frag, pos)
            per = self.parse_duration(m.group(2), frag, pos)
        elif "+" in value or "/" in value:
            raise self.fail(
                f"'{value}' is not a per-token deadline", frag, pos,
                "write BASE+PER/tok, e.g. 'deadline<=1s+100ms/tok'",
            )
        else:
            base, per = self.parse_duration(value, frag, pos), 0.0
        if base <= 0:
            raise self.fail("the deadline's base must be positive", frag, pos,
                            "e.g. 'deadline<=1s+100ms/tok'")
        return Constraint(DEADLINE, base, per)

    def parse_attain(self, value: str, frag: str, pos: int) -> float:
        m = _PERCENT_RE.fullmatch(value)
        if not m:
            raise self.fail(f"'{value}' is not an attainment target", frag, pos,
                            "write a percentage (99%) or a fraction (0.99)")
        num = float(m.group(1))
        if m.group(2):
            frac = float(Decimal(m.group(1)) / 100)
            if not 0 <= frac <= 1:
                raise self.fail(f"attainment target {value} is outside 0%..100%", frag, pos,
                                "give a percentage between 0% and 100%, e.g. 99%")
        else:
            frac = num
            if not 0 <= frac <= 1:
                raise self.fail(f"attainment target {value} is not a fraction in 0..1", frag,
                                pos, "write a fraction (0.99) or a percentage with % (99%)")
        return frac


_DEFAULTS_CACHE: dict[str, ClassSLO] = {}


def _defaults() -> dict[str, ClassSLO]:
    if not _DEFAULTS_CACHE:
        _DEFAULTS_CACHE.update(_Parser(DEFAULT_SPEC, "built-in SLO").parse())
    return dict(_DEFAULTS_CACHE)


def default_slos() -> SLOSet:
    """The built-in SLO set."""
    return SLOSet(_defaults(), "built-in SLO")


def parse_slo(text: str | None, *, source: str = "--slo") -> SLOSet:
    """Parse an SLO spec. User classes replace the built-in entry of the same name; the other
    built-in classes stay. ``None`` or blank text gives the defaults. Raises UserError (one line:
    what is wrong, where, how to fix)."""
    classes = _defaults()
    if text is None or not text.strip():
        return SLOSet(classes, source)
    user = _Parser(text, source).parse()
    classes.update(user)
    return SLOSet(classes, source, tuple(user))
