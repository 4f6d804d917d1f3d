"""Benchmark the migration runner: the no-op run and the full apply.

Prints the time of applying the whole schema to an empty database and of the
no-op run (everything applied; must stay well under a second), in-process
(the runner's own cost) and as ``python -m restobot.remote.migrate apply`` (what the
db-migrate container pays, interpreter start-up included).

    .venv/bin/python bench/bench_migrate.py [--database-url URL] [--runs N]

Without --database-url (or DATABASE_URL) it starts a throwaway PostgreSQL
cluster on 127.0.0.1 (harness/postgres.py, as the integration tests do) and
creates a fresh database per full-apply sample. With a URL, that database must
be empty: the bench applies the schema to it and leaves it applied.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.postgres import ThrowawayPostgres, postgres_bindir  # noqa: E402
from restobot.remote.migrate.lexer import DEFAULT_DIR, load_migrations  # noqa: E402
from restobot.remote.migrate.runner import apply, redact_url  # noqa: E402

NOOP_BUDGET_S = 1.0


def _throwaway_postgres() -> ThrowawayPostgres:
    return ThrowawayPostgres(postgres_bindir())


def _ms(samples: list[float]) -> str:
    return (f"min {min(samples) * 1000:7.1f} ms  median {statistics.median(samples) * 1000:7.1f} ms  "
            f"max {max(samples) * 1000:7.1f} ms  (n={len(samples)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    files = load_migrations(DEFAULT_DIR)
    statements = sum(len(m.statements) for m in files)
    with ExitStack() as stack:
        if args.database_url:
            fresh_urls = iter([args.database_url])
            full_runs = 1
            target = redact_url(args.database_url)
        else:
            server = stack.enter_context(_throwaway_postgres())
            fresh_urls = (server.url(server.create_database()) for _ in range(args.runs))
            full_runs = args.runs
            version = server.bindir.parent.name
            target = f"throwaway PostgreSQL {version} on 127.0.0.1:{server.port} (fsync off)"

        full: list[float] = []
        url = ""
        for _ in range(full_runs):
            url = next(fresh_urls)
            started = time.perf_counter()
            result = apply(url, DEFAULT_DIR, io.StringIO())
            full.append(time.perf_counter() - started)
            assert len(result.applied) == len(files), result

        noop: list[float] = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = apply(url, DEFAULT_DIR, io.StringIO())
            noop.append(time.perf_counter() - started)
            assert result.applied == (), result

        env = dict(os.environ, DATABASE_URL=url)
        cli: list[float] = []
        cli_cpu: list[float] = []
        for _ in range(max(3, args.runs // 2)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "restobot.remote.migrate", "apply"], cwd=REPO, env=env,
                                  capture_output=True, text=True)
            cli.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cli_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1

    print(f"restobot.remote.migrate benchmark against {target}")
    print(f"schema: {len(files)} files, {statements} statements")
    print(f"full apply, empty database (in-process): {_ms(full)}")
    print(f"no-op, everything applied (in-process):  {_ms(noop)}")
    print(f"no-op, python -m restobot.remote.migrate apply: {_ms(cli)}  wall, interpreter start-up included")
    print(f"                                CPU time: {_ms(cli_cpu)}")
    print(f"machine load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    verdict = "OK" if max(noop) < NOOP_BUDGET_S and statistics.median(cli) < NOOP_BUDGET_S else "OVER BUDGET"
    print(f"no-op budget {NOOP_BUDGET_S:.0f} s (in-process max, CLI median): {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
