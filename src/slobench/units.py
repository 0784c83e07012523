"""Durations given on the command line: ``30`` (seconds), ``30s``, ``250ms``, ``2min``, ``1h``."""

from __future__ import annotations

import math
import re

from slobench.errors import UserError

# The one table of duration units ("m" is refused: minutes or milliseconds?).
UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
UNIT_PATTERN = "(us|µs|ms|s|min|h)"
_DURATION = re.compile(rf"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*{UNIT_PATTERN}?\s*$")


def unit_seconds(unit: str | None) -> float:
    """Seconds in one ``unit``; no unit means seconds."""
    return UNIT_SECONDS[unit] if unit else 1.0


def parse_duration(text: str | float | None, option: str, *, allow_zero: bool = True
                   ) -> float | None:
    """Seconds from ``text``; a bare number means seconds. None stays None."""
    if text is None:
        return None
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _DURATION.match(text)
        if not m:
            raise UserError(f"{option}: '{text}' is not a duration; write it like 30s, 250ms, "
                            "2min or 1h")
        value = float(m.group(1)) * unit_seconds(m.group(2))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{option}: '{text}' must be a positive duration like 30s")
    return value
