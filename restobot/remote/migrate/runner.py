"""The runner: connect, take the lock, read the ledger, apply the plan; and its CLI.

``python -m restobot.remote.migrate`` (the package's ``__main__``) runs ``main``;
the package's docstring has the usage and the rules.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, TextIO
from urllib.parse import urlsplit, urlunsplit

try:  # psycopg is only needed once we talk to a database.
    import psycopg
    from psycopg import conninfo as _conninfo
except ImportError:  # pragma: no cover - exercised only in a broken image
    psycopg = None  # type: ignore[assignment]
    _conninfo = None  # type: ignore[assignment]

from restobot.remote.migrate.lexer import (
    BACKWARD_COMPATIBLE_MARKER,
    DEFAULT_DIR,
    NO_TRANSACTION_MARKER,
    Migration,
    MigrationError,
    RefusedError,
    Statement,
    _first_line,
    _line_col,
    load_migrations,
    split_statements,
)
from restobot.remote.migrate.plan import Applied, Plan, _fmt_time, make_plan

__all__ = [
    "ApplyResult",
    "LedgerError",
    "LockTimeout",
    "MigrationFailed",
    "StatusReport",
    "apply",
    "main",
    "read_ledger",
    "redact_url",
    "status",
]

#: Advisory lock key: the ASCII bytes of "restobot" as a signed bigint.
LOCK_KEY = 0x726573746F626F74
LEDGER_TABLE = "schema_migrations"
APPLICATION_NAME = "restobot-migrate"
DEFAULT_LOCK_TIMEOUT = 120.0
DEFAULT_POLL_INTERVAL = 0.1
CONNECT_TIMEOUT = 10

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PENDING = 3

LEDGER_DDL = r"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    filename    text        PRIMARY KEY CHECK (filename ~ '^[0-9]{4,}_[a-z0-9][a-z0-9_]*\.sql$'),
    checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL CHECK (duration_ms >= 0),
    backward_compatible boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE schema_migrations IS 'Ledger of the migrations applied by restobot.migrate: one row per file, written in the same transaction as the file.';
COMMENT ON COLUMN schema_migrations.filename IS 'Migration file name (NNNN_description.sql); its leading digits are the version.';
COMMENT ON COLUMN schema_migrations.checksum IS 'sha256 (hex) of the file bytes when applied; the runner refuses to run if the file changed since.';
COMMENT ON COLUMN schema_migrations.applied_at IS 'When the file was applied (start of its transaction).';
COMMENT ON COLUMN schema_migrations.duration_ms IS 'How long the file took to run, in milliseconds.';
COMMENT ON COLUMN schema_migrations.backward_compatible IS 'The file was marked migrate:backward-compatible: releases that do not know it may still run (a rollback keeps the data).';
"""
LEDGER_COLUMNS = ("filename", "checksum", "applied_at", "duration_ms")


# --------------------------------------------------------------------------- errors


class LedgerError(RefusedError):
    """``schema_migrations`` exists but is not the shape this runner writes."""


class LockTimeout(MigrationError):
    """Another runner held the migration lock for longer than the lock timeout."""


class MigrationFailed(MigrationError):
    """A migration file failed; the message names the file, statement and PostgreSQL's error."""

    def __init__(self, message: str, *, filename: str, statement_index: int, line: int,
                 sqlstate: str | None, applied_before: Sequence[str]) -> None:
        super().__init__(message)
        self.filename = filename
        self.statement_index = statement_index
        self.line = line
        self.sqlstate = sqlstate
        self.applied_before = tuple(applied_before)


# --------------------------------------------------------------------------- database


def redact_url(url: str) -> str:
    """The URL or key=value DSN with its password replaced by ``***``."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "<unparsable database URL>"
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit(parts._replace(query=query))
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def _secrets_of(url: str) -> list[str]:
    secrets = []
    if _conninfo is not None:
        try:
            password = _conninfo.conninfo_to_dict(url).get("password")
        except Exception:  # noqa: BLE001 - an unparsable URL has no password we can find
            password = None
        if password:
            secrets.append(str(password))
    if "://" in url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            secrets.append(password)
    return sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _connect(url: str):
    if psycopg is None:
        raise MigrationError(
            "psycopg 3 is not installed in this Python; install psycopg[binary] (or Debian's python3-psycopg)."
        )
    try:
        return psycopg.connect(
            url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.Error as exc:
        reason = _scrub(str(exc).strip(), _secrets_of(url))
        raise MigrationError(
            f"cannot connect to {redact_url(url)}: {reason}\n"
            "Check --database-url / DATABASE_URL and that PostgreSQL is up and reachable."
        ) from None


def _ledger_exists(conn) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()
    return bool(row[0])


def read_ledger(conn) -> dict[str, Applied]:
    """The applied migrations by filename; empty when the ledger table does not exist yet."""
    if not _ledger_exists(conn):
        return {}
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (LEDGER_TABLE,),
        )
    }
    missing = [c for c in LEDGER_COLUMNS if c not in columns]
    if missing:
        raise LedgerError(
            f"table {LEDGER_TABLE} exists but has no column {', '.join(missing)}: it was not written by "
            "restobot.remote.migrate (an older migration script?). Nothing was touched. Rename or drop that table "
            "after checking which migrations it records, then run apply again."
        )
    compatible = "backward_compatible" if "backward_compatible" in columns else "false"
    rows = conn.execute(
        f"SELECT filename, checksum, applied_at, duration_ms, {compatible} FROM {LEDGER_TABLE} ORDER BY filename"
    ).fetchall()
    return {r[0]: Applied(r[0], r[1], r[2], r[3], r[4]) for r in rows}


def _ensure_ledger(conn) -> None:
    if _ledger_exists(conn):
        # Ledgers written before the column existed.
        conn.execute(
            f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS backward_compatible boolean NOT NULL DEFAULT false"
        )
        return
    with conn.transaction():
        for st in split_statements(LEDGER_DDL):
            conn.execute(st.text)


def _lock_holder(conn) -> str:
    row = conn.execute(
        """
        SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
         LIMIT 1
        """,
        (LOCK_KEY,),
    ).fetchone()
    if row is None:
        return "another session"
    pid, app, addr, started = row
    who = f"pid {pid}"
    if app:
        who += f" ({app})"
    if addr:
        who += f" from {addr}"
    if started:
        who += f", connected since {_fmt_time(started)}"
    return who


def _acquire_lock(conn, timeout: float, poll_interval: float, stream: TextIO) -> None:
    start = time.monotonic()
    deadline = start + timeout
    waiting = False
    holder = "another session"
    while True:
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            if waiting:
                stream.write(f"Took the migration lock after {time.monotonic() - start:.1f} s.\n")
            return
        holder = _lock_holder(conn)
        if not waiting:
            stream.write(f"Waiting for the migration lock held by {holder} (up to {timeout:g} s) ...\n")
            waiting = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout(
                f"could not take the migration lock within {timeout:g} s: {holder} holds it (another "
                "migration run?). Nothing was applied. Wait for it to finish and run again, or raise "
                "--lock-timeout."
            )
        time.sleep(min(poll_interval, remaining))


def _release_lock(conn) -> None:
    try:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    except Exception:  # noqa: BLE001 - closing the connection releases it anyway
        pass


def _describe_failure(m: Migration, index: int, st: Statement, exc: Exception) -> tuple[str, int, str | None]:
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).strip()
    severity = getattr(diag, "severity", None) or "ERROR"
    sqlstate = getattr(diag, "sqlstate", None)
    position = getattr(diag, "statement_position", None)
    line, col = st.line, None
    if position and str(position).isdigit() and 0 < int(position) <= len(st.text):
        line, col = _line_col(m.source, st.offset + int(position) - 1)
    where = f"line {line}" + (f", column {col}" if col else "")
    text = f"{m.filename}: statement {index} ({where}) failed: {severity}: {primary}"
    if sqlstate:
        text += f" [SQLSTATE {sqlstate}]"
    for label, attr in (("DETAIL", "message_detail"), ("HINT", "message_hint"), ("CONTEXT", "context")):
        value = getattr(diag, attr, None)
        if value:
            text += f"\n  {label}: {value.strip()}"
    text += f"\n  statement: {_first_line(st.text)}"
    return text, line, sqlstate


def _apply_one(conn, m: Migration, applied_so_far: list[str], later: int, stream: TextIO) -> int:
    stream.write(f"Applying {m.filename} ...\n")
    stream.flush()
    started = time.perf_counter()
    index, current = 0, m.statements[0]
    insert = (
        f"INSERT INTO {LEDGER_TABLE} (filename, checksum, duration_ms, backward_compatible) "
        "VALUES (%s, %s, %s, %s)"
    )
    try:
        if m.transactional:
            with conn.transaction():
                for index, current in enumerate(m.statements, 1):
                    conn.execute(current.text)
                duration_ms = round((time.perf_counter() - started) * 1000)
                conn.execute(insert, (m.filename, m.checksum, duration_ms, m.backward_compatible))
        else:
            for index, current in enumerate(m.statements, 1):
                conn.execute(current.text)
            duration_ms = round((time.perf_counter() - started) * 1000)
            conn.execute(insert, (m.filename, m.checksum, duration_ms, m.backward_compatible))
    except psycopg.Error as exc:
        text, line, sqlstate = _describe_failure(m, index, current, exc)
        if m.transactional:
            text += f"\n{m.filename} was rolled back: none of it was applied."
        else:
            text += (
                f"\n{m.filename} runs outside a transaction ({NO_TRANSACTION_MARKER}): its statements before "
                f"statement {index} stay applied; the file is re-runnable."
            )
        kept = (f"Earlier files applied in this run are kept ({', '.join(applied_so_far)})" if applied_so_far
                else "No other file was applied in this run")
        text += f"\n{kept}; {later} later file(s) not attempted. Fix the file and run apply again."
        raise MigrationFailed(text, filename=m.filename, statement_index=index, line=line,
                              sqlstate=sqlstate, applied_before=applied_so_far) from None
    stream.write(f"Applied {m.filename} in {duration_ms} ms\n")
    stream.flush()
    return duration_ms


@dataclass(frozen=True)
class ApplyResult:
    """What a run did (or, with dry_run, would do)."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    dry_run: bool
    total_ms: int


def _refuse_if_needed(plan: Plan, allow_out_of_order: bool) -> None:
    problems = plan.problems(allow_out_of_order)
    if problems:
        raise RefusedError("refusing to migrate, nothing was applied:\n- " + "\n- ".join(problems))


def apply(
    database_url: str,
    directory: Path | str = DEFAULT_DIR,
    stream: TextIO | None = None,
    *,
    dry_run: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    allow_out_of_order: bool = False,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> ApplyResult:
    """Apply every pending migration of ``directory`` (or, with dry_run, list them).

    Raises RefusedError (nothing applied), LockTimeout, MigrationFailed (the run
    stopped at a file, which was rolled back) or MigrationError (connection).
    """
    stream = stream if stream is not None else sys.stdout
    started = time.perf_counter()
    migrations = load_migrations(directory)

    if dry_run:
        conn = _connect(database_url)
        try:
            plan = make_plan(migrations, read_ledger(conn))
        finally:
            conn.close()
        _refuse_if_needed(plan, allow_out_of_order)
        for m in plan.pending:
            mode = "" if m.transactional else f" ({NO_TRANSACTION_MARKER})"
            stream.write(f"Would apply {m.filename}{mode}\n")
        stream.write(
            f"Dry run: {len(plan.pending)} pending, {len(plan.applied)} applied; nothing was changed.\n"
        )
        return ApplyResult((), tuple(m.filename for m in plan.pending), True,
                           round((time.perf_counter() - started) * 1000))

    lock_conn = _connect(database_url)
    try:
        _acquire_lock(lock_conn, lock_timeout, poll_interval, stream)
        try:
            conn = _connect(database_url)
            try:
                plan = make_plan(migrations, read_ledger(conn))
                _refuse_if_needed(plan, allow_out_of_order)
                for newer in plan.tolerated:
                    stream.write(
                        f"Note: {newer.filename} is applied but unknown to this release; it is marked "
                        f"{BACKWARD_COMPATIBLE_MARKER}, so this release runs on the newer schema.\n"
                    )
                done: list[str] = []
                if plan.pending:
                    _ensure_ledger(conn)
                    for position, m in enumerate(plan.pending):
                        _apply_one(conn, m, done, len(plan.pending) - position - 1, stream)
                        done.append(m.filename)
                total_ms = round((time.perf_counter() - started) * 1000)
                if done:
                    stream.write(f"Applied {len(done)} migration(s) in {total_ms} ms; the schema is up to date.\n")
                else:
                    latest = max(plan.applied) if plan.applied else "none"
                    stream.write(
                        f"Nothing to apply: {len(plan.applied)} migration(s) already applied "
                        f"(latest {latest}).\n"
                    )
                return ApplyResult(tuple(done), (), False, total_ms)
            finally:
                conn.close()
        finally:
            _release_lock(lock_conn)
    finally:
        lock_conn.close()


@dataclass(frozen=True)
class StatusReport:
    plan: Plan
    problems: tuple[str, ...]


def status(
    database_url: str,
    directory: Path | str = DEFAULT_DIR,
    stream: TextIO | None = None,
    *,
    allow_out_of_order: bool = False,
) -> StatusReport:
    """Print every migration (applied with its date and duration, or pending) and any problem."""
    stream = stream if stream is not None else sys.stdout
    migrations = load_migrations(directory)
    conn = _connect(database_url)
    try:
        plan = make_plan(migrations, read_ledger(conn))
    finally:
        conn.close()
    changed = {m.filename for m, _ in plan.changed}
    rows: list[tuple[str, str, str, str]] = []
    for m in plan.migrations:
        a = plan.applied.get(m.filename)
        if a is None:
            rows.append(("pending", "", "", m.filename))
        else:
            state = "CHANGED" if m.filename in changed else "applied"
            rows.append((state, _fmt_time(a.applied_at), f"{a.duration_ms} ms", m.filename))
    for a in plan.unknown:
        rows.append(("UNKNOWN", _fmt_time(a.applied_at), f"{a.duration_ms} ms", a.filename))
    for state, when, took, name in rows:
        stream.write(f"{state:<8} {when:<23} {took:>9}  {name}\n")
    problems = tuple(plan.problems(allow_out_of_order))
    stream.write(
        f"{len(plan.applied)} applied, {len(plan.pending)} pending"
        + (f", {len(problems)} problem(s): apply would refuse:" if problems else ".")
        + "\n"
    )
    for p in problems:
        stream.write(f"- {p}\n")
    return StatusReport(plan, problems)


# --------------------------------------------------------------------------- CLI


class _RedactingStream:
    """Write-through stream that replaces secrets with ``***``."""

    def __init__(self, inner: TextIO, secrets: Sequence[str]) -> None:
        self._inner = inner
        self._secrets = list(secrets)

    def write(self, text: str) -> int:
        return self._inner.write(_scrub(text, self._secrets))

    def flush(self) -> None:
        self._inner.flush()


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--database-url", default=default, metavar="URL",
                        help="PostgreSQL URL (env DATABASE_URL), e.g. postgresql://n8n:PASSWORD@postgres:5432/n8n")
    parser.add_argument("--dir", default=default, metavar="PATH",
                        help=f"migrations directory (env MIGRATIONS_DIR; default {DEFAULT_DIR})")
    parser.add_argument("--allow-out-of-order", action="store_true", default=default if suppress else False,
                        help="apply a pending file older than the newest applied one instead of refusing")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m restobot.remote.migrate",
        description="Apply the Resto Bot SQL migrations to PostgreSQL (one transaction per file, advisory lock).",
    )
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="{status,apply}", required=True)
    p_status = commands.add_parser("status", help="list applied (with dates) and pending migrations")
    _add_common(p_status, suppress=True)
    p_status.add_argument("--exit-code", action="store_true",
                          help=f"exit {EXIT_PENDING} when migrations are pending (for scripts and CI)")
    p_apply = commands.add_parser("apply", help="apply every pending migration")
    _add_common(p_apply, suppress=True)
    p_apply.add_argument("--dry-run", action="store_true", help="list what would run; change nothing")
    p_apply.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                         help=f"how long to wait for another runner (env MIGRATE_LOCK_TIMEOUT; "
                              f"default {DEFAULT_LOCK_TIMEOUT:g})")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the CLI; returns the exit code. Nothing raised escapes as a bare traceback."""
    environ = os.environ if environ is None else environ
    raw_out = stdout if stdout is not None else sys.stdout
    raw_err = stderr if stderr is not None else sys.stderr
    args = _parser().parse_args(argv)

    url = args.database_url or environ.get("DATABASE_URL", "")
    secrets = _secrets_of(url) if url else []
    out = _RedactingStream(raw_out, secrets)
    err = _RedactingStream(raw_err, secrets)

    def fail(message: str, code: int = EXIT_FAILED) -> int:
        err.write(f"migrate: error: {message}\n")
        err.flush()
        return code

    if not url:
        return fail("no database URL: pass --database-url or set DATABASE_URL "
                    "(e.g. postgresql://n8n:PASSWORD@postgres:5432/n8n).", EXIT_USAGE)
    directory = Path(args.dir or environ.get("MIGRATIONS_DIR") or DEFAULT_DIR)
    lock_timeout = DEFAULT_LOCK_TIMEOUT
    raw_timeout = getattr(args, "lock_timeout", None)
    if raw_timeout is None and environ.get("MIGRATE_LOCK_TIMEOUT"):
        try:
            raw_timeout = float(environ["MIGRATE_LOCK_TIMEOUT"])
        except ValueError:
            return fail(f"MIGRATE_LOCK_TIMEOUT={environ['MIGRATE_LOCK_TIMEOUT']!r} is not a number of seconds.",
                        EXIT_USAGE)
    if raw_timeout is not None:
        if raw_timeout < 0:
            return fail("--lock-timeout must be 0 or more seconds.", EXIT_USAGE)
        lock_timeout = raw_timeout

    try:
        if args.command == "status":
            report = status(url, directory, out, allow_out_of_order=args.allow_out_of_order)
            if report.problems:
                return EXIT_FAILED
            if args.exit_code and report.plan.pending:
                return EXIT_PENDING
            return EXIT_OK
        apply(url, directory, out, dry_run=args.dry_run, lock_timeout=lock_timeout,
              allow_out_of_order=args.allow_out_of_order)
        return EXIT_OK
    except MigrationError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted; a file in progress was rolled back.", 130)
    except Exception as exc:  # noqa: BLE001 - say what happened first, then the evidence
        err.write(f"migrate: internal error: {type(exc).__name__}: {exc}\n")
        err.write(traceback.format_exc())
        return EXIT_FAILED
    finally:
        out.flush()
