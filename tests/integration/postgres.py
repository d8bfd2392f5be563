"""A real PostgreSQL (Debian's `postgresql` package) on 127.0.0.1 for the fleet tests.

initdb refuses to run as root, so the server runs as the `postgres` user
(`runuser`) in a temp directory, listening on a free port with a socket
directory of its own. One server per test session; each test gets a fresh
database. Stopped (fast shutdown) and removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql)")
    return found[-1]


def as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class Postgres:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        self.options = f"-k {self.sockets} -h 127.0.0.1 -p {port} -c fsync=off -c max_connections=200"

    def start(self) -> None:
        argv = [pg_bin("pg_ctl"), "-D", str(self.data), "-o", self.options, "-l", str(self.log), "-w", "-t", "60", "start"]
        subprocess.run(as_postgres(argv), check=True, capture_output=True, timeout=120)

    def crash(self) -> None:
        """SIGQUIT to the postmaster: every backend dies at once, no checkpoint; the next start recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("PostgreSQL did not exit on SIGQUIT")

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run(
            as_postgres([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", database, "-At", "-c", sql]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(proc.stderr)
        return proc.stdout.strip()

    def database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name


@contextlib.contextmanager
def running_postgres(port: int) -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="streamer-pg-"))
    pg = Postgres(root, port)
    pg.sockets.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, pg.sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            as_postgres([pg_bin("initdb"), "-D", str(pg.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        pg.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                pg.psql("SELECT 1")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield pg
    finally:
        if pg.data.exists():
            subprocess.run(
                as_postgres([pg_bin("pg_ctl"), "-D", str(pg.data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
