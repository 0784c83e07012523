"""``slobench compare RUN RUN...``: runs side by side, significant differences, regression gates."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import typer

from slobench.cli.main import app, user_errors
from slobench.errors import UserError, did_you_mean

GATE_DOC = ("Regression gate '[CLASS:]METRIC[.STAT] OP VALUE' (repeatable): METRIC goodput, "
            "attainment, throughput, error_rate, or ttft/tpot/itl/e2e with .p50/.p90/.p99; OP < "
            "or >; VALUE a signed relative change (-5%) or an absolute one (+50ms, -2pp, "
            "-1req/s). Exit code 1 when a run's change passes it significantly (docs/compare.md).")


def resolve_run(arg: str, runs_dir: Path) -> Path:
    """A run directory from a path, or from a run id under ``runs_dir``."""
    path = Path(arg)
    if path.is_dir():
        return path
    under = runs_dir / arg
    if under.is_dir():
        return under
    raise UserError(f"{arg}: no run directory at {path} nor {under}; give a run directory "
                    "(runs/<run_id>) or a run id under --runs-dir")


@app.command()
@user_errors
def compare(
    runs: list[str] = typer.Argument(..., help="Runs: directories, or run ids under --runs-dir. "
                                     "The first is the baseline unless --baseline says."),
    slo: str = typer.Option(None, "--slo", "-s", help="Judge every run with these SLOs "
                            "(default: the baseline run's own)."),
    baseline: int = typer.Option(0, "--baseline", "-b", help="Position of the baseline among "
                                 "the runs (0 = the first)."),
    klass: str = typer.Option(None, "--class", help="Show this application class instead of "
                              "all requests."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison (and gate results) "
                                 "as JSON."),
    fail_if: list[str] = typer.Option(None, "--fail-if", help=GATE_DOC),
    strict: bool = typer.Option(False, "--strict", help="Gates trip on the point change alone, "
                                "significant or not."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the "
                                     "bootstrap intervals."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run ids are looked "
                                  "up."),
    html: Path = typer.Option(None, "--html", help="Also write an HTML comparison page (tables "
                              "and distribution plots) to this file."),
) -> None:
    """Compare runs side by side: metrics with deltas to a baseline, which differences are
    significant (bootstrap intervals), the best run per metric, and CI regression gates."""
    from slobench.report.compare import (
        OVERALL,
        compare_runs,
        evaluate_gates,
        parse_gate,
        render_comparison,
    )
    from slobench.report.terminal import console

    gates = [parse_gate(text) for text in fail_if or []]  # bad expressions fail before any work
    paths = [resolve_run(r, runs_dir) for r in runs]
    cmp = compare_runs(paths, slo=slo, baseline=baseline, confidence=confidence,
                       resamples=resamples, seed=seed)
    scope = OVERALL
    if klass is not None:
        if klass not in cmp.classes:
            raise UserError(f"--class: no request of these runs has app '{klass}'; "
                            f"{did_you_mean(klass, cmp.classes)}classes: "
                            f"{', '.join(cmp.classes) or '(none)'}")
        scope = klass
    results = evaluate_gates(cmp, gates, strict=strict)
    if as_json:
        doc = cmp.as_dict()
        doc["gates"] = [r.as_dict() for r in results]
        doc["strict"] = strict
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        out = console()
        out.print(render_comparison(cmp, scope))
        for r in results:
            if not r.tripped:
                out.print(f"gate ok: {r.message}", style="green", soft_wrap=True)
    if html is not None:
        from slobench.report.run_report import write_compare_report

        page = write_compare_report(paths, cmp.as_dict(), html)
        (sys.stderr if as_json else sys.stdout).write(f"Comparison page written to {page}\n")
    tripped = [r for r in results if r.tripped]
    for r in tripped:
        sys.stderr.write(f"regression: {r.message}\n")
    if tripped:
        raise typer.Exit(1)
