"""SLOs per application class: spec parsing, per-request metrics, attainment, goodput, summaries."""

from slobench.slo.metrics import Derived, SLOCheck, check_slos, derive, meets
from slobench.slo.spec import (
    DEFAULT_SPEC,
    METRICS,
    ClassSLO,
    Constraint,
    SLOSet,
    default_slos,
    format_duration,
    parse_slo,
)
from slobench.slo.stats import describe, percentiles
from slobench.slo.summary import summarize

__all__ = [
    "DEFAULT_SPEC",
    "METRICS",
    "ClassSLO",
    "Constraint",
    "Derived",
    "SLOCheck",
    "SLOSet",
    "check_slos",
    "default_slos",
    "derive",
    "describe",
    "format_duration",
    "meets",
    "parse_slo",
    "percentiles",
    "summarize",
]
