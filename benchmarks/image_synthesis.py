"""How fast are images for multimodal prompts made?

For square images of 512² and 1024² px it times:

- ``png``: :func:`slobench.prompts.images.make_image` (noise cells, PNG written with zlib);
- ``data url``: the same plus base64 into a ``data:image/png;base64,...`` string;
- ``parts``: :meth:`ImagePrompter.parts` for one image of the token count a Qwen2-VL model
  gives that size, every request a new seed (each image drawn: the cache never hits);

and, for each encoder, how long :meth:`VisionEncoder.fit` takes for a count never asked
before (the search for the closest reachable count, uncached).

Each case makes ``--images`` images after a warm-up; images per second is the median of
``--repeats`` runs. Usage::

    python benchmarks/image_synthesis.py            # ~20 s
    python benchmarks/image_synthesis.py --quick

Prints a table and writes ``benchmarks/results/image_synthesis.json``; see docs/prompts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slobench.prompts.images import ENCODERS, ImagePrompter, _fit, data_url, make_image


def rate(fn: Callable[[int], object], n: int, repeats: int) -> float:
    fn(-1)  # warm-up
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                    / "image_synthesis.json")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 30, 1
    qwen = ENCODERS["qwen2-vl"]
    results: list[dict[str, Any]] = []
    for side in (512, 1024):
        n = args.images if side <= 512 else max(args.images // 4, 10)
        png = make_image(side, side, 0)
        prompter = ImagePrompter(qwen, nonce="bench")
        tokens = qwen.tokens(side, side)
        row: dict[str, Any] = {"width": side, "height": side, "images": n,
                               "png_bytes": len(png), "data_url_chars": len(data_url(png)),
                               "qwen2_vl_tokens": tokens}
        row["png_per_s"] = rate(lambda s, w=side: make_image(w, w, s), n, args.repeats)
        row["data_url_per_s"] = rate(lambda s, w=side: data_url(make_image(w, w, s)), n,
                                     args.repeats)
        row["parts_per_s"] = rate(lambda s, p=prompter, t=tokens: p.parts("x", [t], s), n,
                                  args.repeats)
        row["png_ms"] = 1000 / row["png_per_s"]
        results.append(row)
        print(f"{side:>5}² px: png {row['png_per_s']:>7,.0f}/s ({row['png_ms']:.1f} ms, "
              f"{row['png_bytes'] / 1024:,.0f} KiB)  data url {row['data_url_per_s']:>7,.0f}/s"
              f"  parts {row['parts_per_s']:>7,.0f}/s", flush=True)
    fits: dict[str, float] = {}
    for name, enc in ENCODERS.items():
        _fit.cache_clear()
        lo, hi = enc.min_tokens, enc.max_tokens
        counts = range(lo, hi + 1, max((hi - lo) // 500, 1))
        t0 = time.perf_counter()
        for c in counts:
            enc.fit(c)
        fits[name] = (time.perf_counter() - t0) / len(counts) * 1e6
        print(f"fit {name:<12} {fits[name]:>8.1f} µs per new count", flush=True)
    report = {
        "benchmark": "image_synthesis",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "results": results,
        "fit_us_per_new_count": fits,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
