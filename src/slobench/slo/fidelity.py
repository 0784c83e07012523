"""Did the server get, and give, what the workload planned?

Per request, the server's own counts (``usage``: prompt and completion tokens, in the Records)
are compared with the Workload's ``input_tokens`` and ``output_tokens``. A prompt that the server
counts differently means the tokenizer is not the server's (``--tokenizer``); answers shorter
than planned mean the server stopped at EOS or a stop string (``ignore_eos`` / ``min_tokens`` are
not honoured by this engine preset), longer ones that ``max_tokens`` was ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WORST = 5  # requests listed per direction


def _side(planned: np.ndarray, got: np.ndarray, ids: list[str]) -> dict[str, Any]:
    diff = got - planned
    off = np.flatnonzero(diff != 0)
    out: dict[str, Any] = {
        "checked": len(planned),
        "exact": int(len(planned) - len(off)),
        "short": int((diff < 0).sum()),
        "long": int((diff > 0).sum()),
    }
    if len(planned):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(planned > 0, got / np.maximum(planned, 1), np.nan)
        finite = ratio[np.isfinite(ratio)]
        out["mean_ratio"] = float(finite.mean()) if len(finite) else None
    if len(off):
        worst = off[np.argsort(-np.abs(diff[off]), kind="stable")[:WORST]]
        out["worst"] = [{"request_id": ids[k], "planned": int(planned[k]), "got": int(got[k])}
                        for k in worst.tolist()]
    return out


def length_fidelity(workload: pa.Table, records: pa.Table) -> dict[str, Any]:
    """``{"input": ..., "output": ...}`` over the requests that finished ``ok`` and whose ids
    are in the workload (closed-loop cycles' ``~k`` suffixes are stripped). Each side:
    checked, exact, short, long, mean_ratio (got / planned) and the worst requests."""
    ok = records.filter(pc.equal(records["status"], "ok"))
    rid = ok["request_id"].to_pylist()
    base = [r.split("~", 1)[0] for r in rid]
    index = {r: k for k, r in enumerate(workload["request_id"].to_pylist())}
    rows = [(k, index[b]) for k, b in enumerate(base) if b in index]
    if not rows:
        return {"input": {"checked": 0}, "output": {"checked": 0}}
    rec_i = np.array([r[0] for r in rows], dtype=np.int64)
    wl_i = np.array([r[1] for r in rows], dtype=np.int64)
    ids = [rid[k] for k in rec_i.tolist()]
    return {
        "input": _side(workload["input_tokens"].to_numpy()[wl_i],
                       ok["input_tokens"].to_numpy()[rec_i], ids),
        "output": _side(workload["output_tokens"].to_numpy()[wl_i],
                        ok["output_tokens"].to_numpy()[rec_i], ids),
    }


def fidelity_warnings(fidelity: dict[str, Any]) -> list[str]:
    """One line per problem, for the terminal."""
    lines = []
    inp, out = fidelity.get("input", {}), fidelity.get("output", {})
    if inp.get("checked") and inp.get("exact", 0) < inp["checked"]:
        n = inp["checked"] - inp["exact"]
        lines.append(f"{n} of {inp['checked']} prompts were counted differently by the server "
                     f"(mean ratio {inp.get('mean_ratio') or 0:.3f}); give the server's "
                     "tokenizer with --tokenizer")
    if out.get("checked") and out.get("short"):
        lines.append(f"{out['short']} of {out['checked']} answers were shorter than planned "
                     f"(mean ratio {out.get('mean_ratio') or 0:.3f}): the server stopped early; "
                     "use an --engine preset that sends ignore_eos/min_tokens")
    if out.get("checked") and out.get("long"):
        lines.append(f"{out['long']} of {out['checked']} answers were longer than planned: "
                     "the server ignored max_tokens")
    return lines
