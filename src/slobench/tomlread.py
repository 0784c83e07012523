"""TOML on every supported Python: the standard library's ``tomllib`` (3.11+), else its
backport ``tomli`` (a dependency on 3.10 only), with the same API."""

from __future__ import annotations

try:
    from tomllib import TOMLDecodeError, loads
except ModuleNotFoundError:  # Python 3.10
    from tomli import TOMLDecodeError, loads  # type: ignore[no-redef]

__all__ = ["TOMLDecodeError", "loads"]
