"""A throwaway PostgreSQL server on this machine, for the integration tests and the benchmarks.

    from harness.postgres import ThrowawayPostgres, postgres_bindir
    with ThrowawayPostgres(postgres_bindir()) as server:
        url = server.url(server.create_database())

``initdb`` into a temp dir, ``postgres`` on 127.0.0.1 and a free port (run as the
``postgres`` system user when run as root), a scram password generated per server,
fsync off; everything is removed on exit. tests/integration/conftest.py builds its
``postgres_server`` fixture on it; bench/bench_migrate.py uses it without a URL.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThrowawayPostgres", "postgres_bindir"]


def postgres_bindir() -> Path:
    """The bin directory of the newest PostgreSQL installed here."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "postgres").exists():
            return Path(candidate)
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
        if (Path(out.strip()) / "postgres").exists():
            return Path(out.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    raise RuntimeError("no PostgreSQL server binaries found: run scripts/setup-host (installs postgresql-15)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only. Use as a context manager."""

    bindir: Path
    root: Path | None = None
    port: int = 0
    password: str = ""
    process: subprocess.Popen | None = None
    user: str = "postgres"
    settings: tuple[str, ...] = ()  # further server settings, "name=value", as postgres -c takes them

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        # postgres refuses to run as root; --pdeathsig stops the server if the test process dies.
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig", "SIGINT", "--"]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> "ThrowawayPostgres":
        self.root = Path(tempfile.mkdtemp(prefix="restobot-pg-"))
        self.password = secrets.token_urlsafe(18)
        data, sockets, pwfile = self.root / "data", self.root / "sock", self.root / "pwfile"
        sockets.mkdir()
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(sockets, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        init = subprocess.run(
            [*self._as_server_user(), str(self.bindir / "initdb"), "-D", str(data), "-U", self.user,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True,
        )
        if init.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        pwfile.unlink()
        self.port = _free_port()
        log = open(self.root / "postgres.log", "wb")
        self.process = subprocess.Popen(
            [*self._as_server_user(), str(self.bindir / "postgres"), "-D", str(data), "-k", str(sockets),
             "-p", str(self.port), "-h", "127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100",
             *(argument for setting in self.settings for argument in ("-c", setting))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        log = (self.root / "postgres.log").read_text(errors="replace")[-3000:]
        self.__exit__(None, None, None)
        raise RuntimeError(f"PostgreSQL did not accept connections ({last}); server log:\n{log}")

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def create_database(self) -> str:
        """Create a fresh, empty database and return its name."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

