"""Security: planted credentials never reach any file slobench writes; the servers slobench starts
listen on loopback only; no module runs eval/exec/pickle/yaml.load or a shell on outside data.

The planted-key test runs every verb that writes files (run, run --tokenizer server, report,
compare, export, runs, capacity, sweep) with a random API key in the environment, in the target
URL (user:password@ and ?api_key=) and in an Authorization header, then searches every file
under the test's folder (run directories, reports, the catalog database, the servers' logs,
each command's stdout and stderr, temp files) for the secrets: raw, URL-encoded and base64.
Parquet and other compressed files are searched decoded.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gzip
import os
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import orjson
import pyarrow.parquet as pq
import pytest

from slobench.engine.scripted import ScriptedServerProcess

SLOBENCH = [sys.executable, "-m", "slobench"]
SRC = Path(__file__).resolve().parent.parent / "src" / "slobench"
FAST = {"ttft_s": 0.005, "tpot_s": 0.001}


# -- planted secrets ------------------------------------------------------------------------------


class Secrets:
    """Random credentials, planted in every place a user can put one."""

    def __init__(self) -> None:
        self.key = "sk-" + secrets.token_hex(16)  # --api-key-env / OPENAI_API_KEY
        self.user = "user" + secrets.token_hex(6)  # http://user:password@host
        self.password = "pw/" + secrets.token_hex(10) + "+=!"  # needs URL encoding
        self.query_key = "qk" + secrets.token_hex(12)  # ?api_key=...
        self.bearer = "bt" + secrets.token_hex(12)  # -H 'Authorization: Bearer ...'

    def url(self, base: str) -> str:
        host = base.removeprefix("http://")
        return (f"http://{self.user}:{quote(self.password, safe='')}@{host}/v1"
                f"?api_key={self.query_key}")

    def needles(self) -> dict[str, bytes]:
        """Every form a secret could be written in: raw, URL-encoded, base64 (Basic auth)."""
        out: dict[str, bytes] = {}
        basic = f"{self.user}:{self.password}"
        for name, value in (("key", self.key), ("user", self.user), ("password", self.password),
                            ("query key", self.query_key), ("bearer", self.bearer),
                            ("user:password", basic)):
            out[name] = value.encode()
            out[f"{name} (url-encoded)"] = quote(value, safe="").encode()
            out[f"{name} (base64)"] = base64.b64encode(value.encode())
        return out


def readable_forms(path: Path) -> list[bytes]:
    """A file's bytes, and for compressed formats their decoded content too."""
    data = path.read_bytes()
    forms = [data]
    if data[:4] == b"PAR1":
        table = pq.read_table(path)
        forms.append(orjson.dumps(table.to_pylist(), default=str))
        forms.append(str(table.schema.metadata).encode())
    elif data[:2] == b"\x1f\x8b":
        forms.append(gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            forms += [z.read(name) for name in z.namelist()]
    elif data[:16] == b"SQLite format 3\x00":
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            forms.append("\n".join(db.iterdump()).encode())
    return forms


def search(root: Path, needles: dict[str, bytes]) -> tuple[list[str], int]:
    """Hits ``file: secret form`` of any needle in any file under ``root``; and files searched."""
    hits, files = [], 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        files += 1
        for form in readable_forms(path):
            hits += [f"{path.relative_to(root)}: {name}" for name, needle in needles.items()
                     if needle in form]
    return sorted(set(hits)), files


class Cli:
    """Runs slobench verbs with the planted environment; keeps each one's stdout and stderr
    under ``logs/`` (they are searched like every other file)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.n = root, env, 0
        (root / "logs").mkdir()

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*SLOBENCH, *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)
        self.n += 1
        log = self.root / "logs" / f"{self.n:02d}-{args[0]}"
        log.with_suffix(".out").write_text(proc.stdout)
        log.with_suffix(".err").write_text(proc.stderr)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        return proc


@contextlib.contextmanager
def emulator(root: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """``slobench emulate`` in a subprocess, its output logged under ``logs/``."""
    log = open(root / "logs" / "emulator.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*SLOBENCH, "emulate", "--port", "0", "--max-num-seqs", "64"],
                            cwd=root, stdout=subprocess.PIPE, stderr=log, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = ""
        for raw in proc.stdout:
            log.write(raw)
            if raw.startswith(b"LISTENING "):
                url = raw.split()[1].decode()
                break
        assert url, "the emulator did not start"
        yield url
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=20)
        log.write(rest or b"")
        log.close()


@pytest.mark.timeout(300)
def test_planted_credentials_reach_no_file(tmp_path):
    s = Secrets()
    root = tmp_path
    (root / "tmp").mkdir()
    env = {**os.environ, "MY_LLM_KEY": s.key, "OPENAI_API_KEY": s.key,
           "SLOBENCH_CATALOG": f"sqlite:///{root / 'catalog.sqlite'}",
           "XDG_CACHE_HOME": str(root / "cache"), "TMPDIR": str(root / "tmp")}
    cli = Cli(root, env)
    header = ["-H", f"Authorization: Bearer {s.bearer}"]
    small = ["--input-tokens", "32", "--output-tokens", "6", "-q"]
    with ScriptedServerProcess(FAST, truth_log=root / "logs" / "truth.jsonl") as srv:
        # a sharded run: the key travels to the worker processes, never through a file
        cli("run", "--target", s.url(srv.base_url), "--api-key-env", "MY_LLM_KEY", *header,
            "-n", "16", "-r", "40", "--workers", "2", "--run-id", "scripted", "--out", "runs",
            *small)
        with emulator(root, env) as emu:  # prompts counted by the server, metrics scraped
            cli("run", "--target", s.url(emu), *header, "--tokenizer", "server", "-n", "8",
                "-r", "20", "--workers", "1", "--scrape-interval", "0.2", "--run-id",
                "emulated", "--out", "runs", *small)
        cli("capacity", "--target", s.url(srv.base_url), "--api-key-env", "MY_LLM_KEY",
            "-d", "2s", "-r", "10", "--max-trials", "2", "--tolerance", "0.9",
            "--out", "runs", *small)
    (root / "sweep.toml").write_text(
        f'command = ["{sys.executable}", "-m", "slobench.engine.scripted", "--port", "{{port}}",'
        ' "--model", "{model}"]\n'
        '[grid]\nmodel = ["m1"]\n'
        '[scenario]\nrate = "10"\nduration = "2s"\ninput_tokens = "32"\noutput_tokens = "6"\n')
    cli("sweep", "sweep.toml", "--api-key-env", "MY_LLM_KEY", "--out", "runs", "-q")
    cli("report", "runs/scripted")
    cli("report", "runs/emulated", "--json")
    cli("compare", "runs/scripted", "runs/emulated", "--html", "compare.html", "--json")
    cli("export", "runs/scripted", "runs/emulated", "-o", "summary.csv")
    cli("export", "runs/scripted", "runs/emulated", "--what", "classes", "-o", "classes.json")
    cli("export", "runs/scripted", "--what", "records", "-o", "records.parquet")
    listed = cli("runs", "--scan", "runs", "--json")
    assert len(orjson.loads(listed.stdout)) >= 5  # 2 runs, >= 2 capacity trials, 1 sweep point

    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for name in ("runs/scripted/records.journal.w1.jsonl", "runs/scripted/report.html",
                 "runs/emulated/server_metrics.jsonl", "runs/emulated/server_metrics.parquet",
                 "catalog.sqlite", "compare.html", "records.parquet", "logs/emulator.log"):
        assert name in written, name  # each kind of file was written, and so searched
    hits, files = search(root, s.needles())
    assert not hits, hits
    assert files >= 40


# -- servers bind loopback ----------------------------------------------------------------------


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (from the kernel's routing table)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        last = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            m = re.search(r"\|--\s+(\d+\.\d+\.\d+\.\d+)", line)
            if m:
                last = m.group(1)
            elif "/32 host LOCAL" in line and last and not last.startswith("127."):
                found.add(last)
    return sorted(found)


def listeners(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port`` (IPv4 and IPv6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                addr, hexport = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    out.append(addr)
    return out


def start_and_read_url(args: list[str], needle: str, cwd: Path) -> tuple[subprocess.Popen[bytes],
                                                                           str]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = ""
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        seen += line
        m = re.search(r"http://[^\s/]+", line)
        if needle in line and m:
            return proc, m.group(0)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"{args}: no URL printed: {seen}")


@pytest.mark.parametrize("server", ["emulate", "scripted", "arena"])
def test_servers_listen_on_loopback_by_default(server, tmp_path):
    args = {"emulate": [*SLOBENCH, "emulate", "--port", "0"],  # a free port; the default host
            "scripted": [sys.executable, "-m", "slobench.engine.scripted"],
            "arena": [*SLOBENCH, "arena", "--port", "0", "--runs-dir", str(tmp_path / "runs"),
                      "--catalog", str(tmp_path / "catalog.sqlite")]}[server]
    needle = {"emulate": "LISTENING", "scripted": "LISTENING", "arena": "Arena at"}[server]
    (tmp_path / "runs").mkdir()
    proc, url = start_and_read_url(args, needle, tmp_path)
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1", url
        assert listeners(int(port)) == ["0100007F"]  # 127.0.0.1 only, no IPv6 wildcard
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
        for address in other_addresses():  # the machine's own address: refused
            with pytest.raises(OSError), socket.create_connection((address, int(port)),
                                                                  timeout=5):
                pass
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- a static check of the sources ----------------------------------------------------------------

# Calls that run code or build objects from data: never on anything from outside.
FORBIDDEN_CALLS = {
    "eval": "eval runs text as code",
    "exec": "exec runs text as code",
    "compile": "compile turns text into code",
    "builtins.eval": "eval runs text as code",
    "builtins.exec": "exec runs text as code",
    "pickle.load": "unpickling runs code", "pickle.loads": "unpickling runs code",
    "pickle.Unpickler": "unpickling runs code",
    "_pickle.load": "unpickling runs code", "_pickle.loads": "unpickling runs code",
    "cPickle.load": "unpickling runs code", "cPickle.loads": "unpickling runs code",
    "dill.load": "unpickling runs code", "dill.loads": "unpickling runs code",
    "cloudpickle.load": "unpickling runs code", "cloudpickle.loads": "unpickling runs code",
    "joblib.load": "joblib files are pickles",
    "pandas.read_pickle": "unpickling runs code",
    "torch.load": "torch.load unpickles",
    "marshal.load": "marshal loads code objects", "marshal.loads": "marshal loads code objects",
    "shelve.open": "shelve is pickle on disk",
    "yaml.unsafe_load": "builds arbitrary objects", "yaml.full_load": "builds Python objects",
    "yaml.load_all": "needs SafeLoader", "os.system": "runs a shell",
    "os.popen": "runs a shell", "subprocess.getoutput": "runs a shell",
    "subprocess.getstatusoutput": "runs a shell", "commands.getoutput": "runs a shell",
}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"}
# file:line -> why it is fine (none needed today; multiprocessing's pickling of messages between
# our own worker processes and Ray's are library internals, not calls in our sources)
ALLOWED: dict[str, str] = {}


class Imports(ast.NodeVisitor):
    """Local name -> the dotted name it was imported as, for one module."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.names[alias.asname] = alias.name
            else:
                self.names[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name] = f"{node.module or ''}.{alias.name}"


def dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """``a.b.c`` of a call's function, with imported aliases resolved."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(names.get(node.id, node.id))
    return ".".join(reversed(parts))


def problems(tree: ast.AST) -> list[tuple[int, str]]:
    imports = Imports()
    imports.visit(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle",
                                         "marshal", "shelve"):
                    found.append((node.lineno, f"imports {mod}"))
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func, imports.names)
        kwargs = {k.arg: k.value for k in node.keywords}
        if name in FORBIDDEN_CALLS:
            found.append((node.lineno, f"{name}(): {FORBIDDEN_CALLS[name]}"))
        if name == "yaml.load":
            loader = kwargs.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or dotted(loader, imports.names) not in SAFE_YAML_LOADERS:
                found.append((node.lineno, "yaml.load() without SafeLoader"))
        shell = kwargs.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append((node.lineno, f"{name}(shell=...): runs a shell"))
        pickled = kwargs.get("allow_pickle")
        if pickled is not None and not (isinstance(pickled, ast.Constant)
                                        and pickled.value is False):
            found.append((node.lineno, f"{name}(allow_pickle=...): unpickles"))
        if name == "__import__" or name == "importlib.import_module":
            target = node.args[0] if node.args else None
            if not isinstance(target, ast.Constant):
                found.append((node.lineno, f"{name}() of a computed name"))
    return found


def test_the_checker_finds_what_it_looks_for():
    bad = """
import pickle as p
from yaml import load, SafeLoader
import subprocess, numpy as np
from os import system
eval("1")
p.loads(b"")
load(text)
load(text, Loader=SafeLoader)
subprocess.run("ls", shell=True)
np.load("x.npy", allow_pickle=True)
system("ls")
__import__(name)
"""
    lines = sorted(line for line, _ in problems(ast.parse(bad)))
    assert lines == [2, 6, 7, 8, 10, 11, 12, 13]


def test_no_eval_pickle_yaml_load_or_shell_in_the_sources():
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50
    hits = []
    for path in modules:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, what in problems(tree):
            where = f"{path.relative_to(SRC.parent)}:{line}"
            if where not in ALLOWED:
                hits.append(f"{where}: {what}")
    assert not hits, "\n".join(hits)
