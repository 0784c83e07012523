"""GPU prices for ``slobench plan``: dollars per GPU-hour, editable.

The defaults are round **example** figures of on-demand cloud list prices in late 2026 — not
quotes: prices differ a lot between providers, regions and commitments. Give your own with
``--prices FILE`` (JSON or TOML: ``{"h100-sxm": 2.5, "a100-80gb": 1.6}``; names as in the GPU
catalog, aliases accepted).
"""

from __future__ import annotations

import json
from pathlib import Path

from slobench.engine.hardware import resolve_gpu
from slobench.errors import UserError

EXAMPLE_PRICES_PER_GPU_HOUR: dict[str, float] = {
    "h100-sxm": 3.00,
    "h200": 3.80,
    "b200": 6.00,
    "a100-80gb": 1.80,
    "a100-40gb": 1.30,
    "l40s": 1.00,
    "l4": 0.50,
    "mi300x": 3.00,
}


def load_prices(path: str | Path | None) -> dict[str, float]:
    """The example prices, overridden by ``path`` (JSON or TOML) when given."""
    prices = dict(EXAMPLE_PRICES_PER_GPU_HOUR)
    if path is None:
        return prices
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--prices {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--prices {path}: not UTF-8 text (byte {exc.start}); fix the file"
                        ) from None
    try:
        if path.suffix.lower() == ".toml":
            from slobench import tomlread

            data = tomlread.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # both decode errors are ValueErrors
        raise UserError(f"--prices {path}: not valid {path.suffix[1:] or 'JSON'} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"--prices {path}: expected a table of GPU name = dollars per hour")
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"--prices {path}: {name} = {value!r} must be a number of dollars "
                            "per GPU-hour >= 0")
        try:
            gpu = resolve_gpu(str(name))
        except UserError as exc:
            raise UserError(f"--prices {path}: {exc}", exit_code=exc.exit_code) from None
        prices[gpu.name] = float(value)
    return prices


def price_per_gpu_hour(prices: dict[str, float], gpu: str) -> float | None:
    return prices.get(resolve_gpu(gpu).name)
