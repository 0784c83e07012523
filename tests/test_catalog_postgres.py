"""The catalog tests of test_catalog.py again, on a real PostgreSQL server that this module
starts (initdb + pg_ctl in a temporary directory, on a free port of 127.0.0.1, as the postgres
system user when the tests run as root) and stops at the end. Skips only when the PostgreSQL
server binaries are missing (scripts/test-setup.sh installs them)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from slobench.store import catalog as catmod
from test_catalog import (  # noqa: F401  (the same tests, collected here with this catalog_url)
    run_dirs,
    test_a_newer_schema_is_refused,
    test_concurrent_registration_into_a_new_catalog,
    test_credentials_are_never_stored,
    test_filters,
    test_find_runs_by_id,
    test_killed_run_shows_running_until_report_or_scan,
    test_register_again_updates_the_same_row,
    test_scan_indexes_every_run_and_is_idempotent,
)


def _pg_bin() -> Path | None:
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throw-away PostgreSQL cluster: trust authentication, 127.0.0.1 only, sockets and data
    in one temporary directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="slobench-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            runuser = shutil.which("runuser")
            self.as_postgres = [runuser, "-u", "postgres", "--"] if runuser else \
                ["su", "postgres", "-s", "/bin/sh", "-c"]
            shutil.chown(self.dir, "postgres")

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres[:1] == ["su"]:
            cmd = [*self.as_postgres, " ".join(cmd)]
        else:
            cmd = [*self.as_postgres, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.dir)
        if proc.returncode != 0:
            log = self.dir / "server.log"
            raise RuntimeError(f"{args[0]} failed: {proc.stderr}\n"
                               f"{log.read_text() if log.exists() else ''}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                  str(self.dir / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's "
                    "postgresql package (scripts/test-setup.sh does)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        catmod.dispose_all()  # no pooled connection keeps the server from stopping
        server.stop()


@pytest.fixture
def catalog_url(postgres: PostgresServer) -> str:
    """A new, empty database on the session's server for each test."""
    name = f"catalog_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres.url().replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres.url(name)


def test_the_server_is_real(postgres, catalog_url):
    cat = catmod.Catalog.open(catalog_url)
    assert cat.engine.dialect.name == "postgresql"
    with cat.engine.connect() as conn:
        assert conn.execute(text("SHOW server_version")).scalar()
        tables = set(conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    assert {"runs", "run_classes", "schema_version"} <= tables
