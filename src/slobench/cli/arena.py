"""``slobench arena``: the leaderboard web app over the run catalog (docs/arena.md)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import typer

from slobench.cli.main import app, user_errors
from slobench.errors import UserError


@app.command()
@user_errors
def arena(
    catalog: str = typer.Option(None, "--catalog", help="Catalog URL or file (default: "
                                "$SLOBENCH_CATALOG, else catalog.sqlite in --runs-dir)."),
    runs_dir: Path = typer.Option(None, "--runs-dir", help="Runs folder to index at start "
                                  "(default: runs)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1: only "
                             "this machine)."),
    port: int = typer.Option(8788, "--port", "-p", min=0, max=65535,
                             help="Port (0: any free port)."),
    scan: bool = typer.Option(True, "--scan/--no-scan", help="Index the runs folder into the "
                              "catalog before serving."),
    allow_write: bool = typer.Option(False, "--allow-write", help="Also answer POST /api/scan "
                                     "(index the runs folder again); otherwise GET only."),
) -> None:
    """Serve the leaderboard: scenarios as columns, engine configurations as rows, ranked by
    goodput; Pareto plots per scenario; each run's report. Read-only."""
    from slobench.engine.emulator import serve
    from slobench.engine.process import run_event_loop
    from slobench.report.arena import host_warning, make_app, scan_runs
    from slobench.report.terminal import console
    from slobench.store.catalog import Catalog, resolve_url

    err = console(stderr=True)
    root = runs_dir or Path("runs")
    url = resolve_url(catalog, root)
    if url is None:
        raise UserError("--catalog off: the arena needs a catalog; give --catalog URL")
    if scan and runs_dir is not None and not runs_dir.is_dir():
        raise UserError(f"--runs-dir {runs_dir}: not a directory; give the folder the runs are "
                        "in, or --no-scan")
    present = root.is_dir()
    # a new catalog only to index a runs folder into (an empty one would show nothing)
    cat = Catalog.open(url, create=scan and present)
    if scan:
        if present:
            n, failed = scan_runs(cat, root)
            err.print(f"Indexed {n} run(s) under {root} into {cat.shown}.", soft_wrap=True,
                      markup=False, highlight=False)
            for path, reason in failed:
                err.print(f"warning: {path}: not indexed ({reason})", soft_wrap=True,
                          markup=False, highlight=False)
        else:
            err.print(f"No {root}/ folder here: nothing indexed; serving {cat.shown}.",
                      soft_wrap=True, markup=False, highlight=False)
    warning = host_warning(host)
    if warning:
        sys.stderr.write(warning + "\n")
    web = make_app(url, allow_write=allow_write, runs_dir=root if allow_write else None,
                   allowed_hosts=[] if warning else ["127.0.0.1", "localhost", "::1", host])

    async def main() -> None:
        try:
            base, stop = await serve(web, host, port)
        except OSError as exc:
            raise UserError(f"--host/--port: cannot serve on {host}:{port} "
                            f"({exc.strerror or exc}); choose another --port (0: any free one) "
                            "or stop what uses it") from None
        mode = "rescan allowed: POST /api/scan" if allow_write else "read-only"
        sys.stdout.write(f"Arena at {base}/ ({mode}; catalog {cat.shown}). Ctrl-C stops.\n")
        sys.stdout.flush()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, done.set)
        try:
            await done.wait()
        finally:
            await stop()

    run_event_loop(main())
