"""Regenerate slobench's built-in workload profiles from the ServeGen data.

    python scripts/build_profiles.py /work/shared/data/servegen [--check]

Reads each source pool (``slobench.workload.profiles.SPECS``), keeps one representative day, the
largest clients (the rest merged into one ``other`` client) and quantized length distributions,
writes ``src/slobench/workload/profiles/<name>.npz`` plus the NOTICE and README beside them, and
prints the fidelity figures (profile vs its source day). ``--check`` only compares the installed
profiles with the data and exits 1 when one is outside the tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slobench.workload.profiles import (
    DAY_S,
    EXACT_BELOW,
    PROFILE_DIR,
    RATIO_STEP,
    REL_BIN,
    SPECS,
    TOLERANCES,
    build_profile,
    fidelity,
    load_profile,
    representative_day,
    save_profile,
)
from slobench.workload.servegen import load_pool

NOTICE = """\
slobench built-in workload profiles
===================================

The files in this directory (*.npz) are derived from the ServeGen production workload
statistics published by Alibaba in the ServeGen repository:

    https://github.com/alibaba/ServeGen
    "ServeGen: Workload Characterization and Generation of Large Language Model Serving in
    Production", arXiv 2505.09999

The ServeGen data is licensed under the Apache License, Version 2.0; a copy of the license is in
LICENSE in this directory. The profiles are modified (reduced) versions of that data: one day of
600 s windows, the largest clients kept and the others merged into one client, length
distributions quantized (see README.md here and docs/profiles.md). They were produced by
scripts/build_profiles.py in the slobench repository.
"""


def source_day(data: Path, spec: dict[str, object]):
    pool = load_pool(data / str(spec["source"]))
    day = representative_day(pool)
    return pool.span(day * DAY_S, (day + 1) * DAY_S), day


def fmt_fidelity(name: str, fid: dict[str, object]) -> list[str]:
    lines = [f"- rate {fid['mean_rate'][0]:.3f} vs {fid['mean_rate'][1]:.3f} req/s "
             f"(rel. error {fid['mean_rate_rel']:.1e}; worst window {fid['window_rate_rel']:.1e}),"
             f" CV {fid['cv'][0]:.3f} vs {fid['cv'][1]:.3f}"]
    for f, e in fid["lengths"].items():
        errs = ", ".join(f"{k} {v:.4f}" for k, v in e.items() if k.endswith(("_rel", "_abs")))
        lines.append(f"- {f}: mean {e['profile']['mean']:.4g} vs {e['source']['mean']:.4g}, "
                     f"p50/p90/p99 {e['profile']['p50']:g}/{e['profile']['p90']:g}/"
                     f"{e['profile']['p99']:g} vs {e['source']['p50']:g}/{e['source']['p90']:g}/"
                     f"{e['source']['p99']:g}; {errs}; KS {e['ks']:.4f} "
                     f"(at bin edges {e['ks_binned']:.1e})")
    return lines


def write_readme(rows: list[dict[str, object]]) -> None:
    out = [
        "# Built-in profiles", "",
        "Derived from ServeGen (alibaba/ServeGen, Apache-2.0, arXiv 2505.09999); see NOTICE.",
        "Regenerate with `python scripts/build_profiles.py <servegen data dir>`.", "",
        "Reductions: one representative day (median daily mean rate) of 600 s windows; the "
        "largest clients covering the stated share of requests kept, the rest merged into one "
        "`other` client (summed rate, rate-weighted CV, request-weighted length mix); token "
        f"counts exact up to {EXACT_BELOW}, above that on a {REL_BIN:.0%} geometric grid; "
        f"ratios on a {RATIO_STEP} grid; probabilities renormalized; audio/video fields dropped.",
        "",
        f"Tolerances (profile vs source day): {json.dumps(TOLERANCES)}", "",
    ]
    for r in rows:
        out.append(f"## {r['name']} ({r['size']} bytes)")
        out.append("")
        out.append(f"{r['about']}. Source `{r['source']}`, day {r['day']}; "
                   f"{r['facts']['clients_kept']} of {r['facts']['clients_source']} clients kept "
                   f"({r['facts']['kept_share_of_requests']:.1%} of requests), "
                   f"{r['facts']['clients_merged_into_other']} merged into `other`.")
        out.append("")
        out.extend(fmt_fidelity(str(r["name"]), r["fidelity"]))
        out.append("")
    (PROFILE_DIR / "README.md").write_text("\n".join(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="ServeGen data directory (with language/, reason/, "
                    "multimodal/ and LICENSE)")
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = ap.parse_args()
    ok = True
    rows = []
    for name, spec in SPECS.items():
        src, day = source_day(args.data, spec)
        if args.check:
            prof = load_profile(name)
            size = (PROFILE_DIR / f"{name}.npz").stat().st_size
            facts: dict[str, object] = {}
        else:
            prof, facts = build_profile(src, name, cover=float(spec["cover"]),
                                        max_clients=int(spec["max_clients"]))
        fid = fidelity(prof, src)
        if not args.check:
            meta = {"source": f"alibaba/ServeGen {spec['source']}", "day": day,
                    "about": spec["about"], "reduction": facts, "fidelity": fid,
                    "tolerances": TOLERANCES,
                    "credit": "ServeGen (alibaba/ServeGen), Apache-2.0, arXiv 2505.09999"}
            size = save_profile(prof, PROFILE_DIR / f"{name}.npz", meta)
            fid = fidelity(load_profile.__wrapped__(name), src)  # as shipped (float32)
        ok &= bool(fid["ok"])
        print(f"{name}: {size} bytes, {prof.n_clients} clients, {prof.n_windows} windows, "
              f"within tolerances: {fid['ok']}")
        for line in fmt_fidelity(name, fid):
            print("  " + line)
        rows.append({"name": name, "size": size, "about": spec["about"],
                     "source": spec["source"], "day": day, "facts": facts, "fidelity": fid})
    if not args.check:
        (PROFILE_DIR / "NOTICE").write_text(NOTICE)
        (PROFILE_DIR / "LICENSE").write_text((args.data / "LICENSE").read_text())
        write_readme(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
