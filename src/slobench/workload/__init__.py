"""Workloads: when requests arrive, who sends them, and how long they are.

The Workload table schema lives in ``slobench.schema``; this package fills it.
"""

from slobench.workload.arrivals import (
    PROCESSES,
    ConstantRate,
    LinearRampRate,
    RateFunction,
    StepRate,
    arrival_times,
    as_rate_function,
    parse_rate,
)
from slobench.workload.lengths import (
    Fixed,
    LengthDist,
    LogNormal,
    Uniform,
    as_length_dist,
    parse_length,
)
from slobench.workload.synthetic import (
    DEFAULT_INPUT_TOKENS,
    DEFAULT_OUTPUT_TOKENS,
    parse_app_mix,
    synthetic_workload,
    workload_summary,
)

__all__ = [
    "DEFAULT_INPUT_TOKENS",
    "DEFAULT_OUTPUT_TOKENS",
    "PROCESSES",
    "ConstantRate",
    "Fixed",
    "LengthDist",
    "LinearRampRate",
    "LogNormal",
    "RateFunction",
    "StepRate",
    "Uniform",
    "arrival_times",
    "as_length_dist",
    "as_rate_function",
    "parse_app_mix",
    "parse_length",
    "parse_rate",
    "synthetic_workload",
    "workload_summary",
]
