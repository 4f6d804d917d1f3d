"""The migration runner and the bot's schema, proven on a real PostgreSQL.

Most tests run the runner in-process with an injected stream; the CLI tests run
``python -m restobot.remote.migrate`` as a real subprocess for exit codes and stderr.
Each test gets a fresh database from ``empty_database`` (conftest.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from restobot.remote.migrate.lexer import DEFAULT_DIR, RefusedError, load_migrations
from restobot.remote.migrate.runner import (
    EXIT_PENDING,
    LOCK_KEY,
    ApplyResult,
    LedgerError,
    LockTimeout,
    MigrationFailed,
    apply,
    main,
    status,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted(p.name for p in DEFAULT_DIR.glob("*.sql"))


# --------------------------------------------------------------------------- helpers


def make_dir(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def schema_subset(root: Path, count: int) -> Path:
    """A migrations dir holding the first ``count`` files of the real schema, byte for byte."""
    root.mkdir(parents=True, exist_ok=True)
    for name in SCHEMA_FILES[:count]:
        shutil.copyfile(DEFAULT_DIR / name, root / name)
    return root


def query(url: str, sql: str, params=None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def ledger(url: str) -> list[tuple]:
    if not query(url, "SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0]:
        return []
    return query(url, "SELECT filename, checksum, applied_at FROM schema_migrations ORDER BY filename")


def ledger_names(url: str) -> list[str]:
    return [row[0] for row in ledger(url)]


def user_tables(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def catalog(url: str) -> dict[str, list[tuple]]:
    """Everything a migration could change in the public schema, as comparable rows."""
    return {
        "relations": query(url, "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                                "ORDER BY 1"),
        "columns": query(url, "SELECT attrelid::regclass::text, attname, atttypid::regtype::text FROM pg_attribute "
                              "WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)"
                              " AND attnum > 0 ORDER BY 1, 2"),
        "constraints": query(url, "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                                  "ORDER BY 1"),
        "functions": query(url, "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"),
        "ledger": query(url, "SELECT * FROM schema_migrations ORDER BY 1")
        if query(url, "SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0] else [],
    }


def run_cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATIONS_DIR")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "restobot.remote.migrate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


FAILING_RUN = {
    "0001_first.sql": "CREATE TABLE first_table (id int);\n",
    "0002_broken.sql": (
        "-- creates a table, fills it, then fails in the middle\n"
        "CREATE TABLE broken_a (id int);\n"
        "INSERT INTO broken_a VALUES (1);\n"
        "SELECT no_such_column FROM broken_a;\n"
        "CREATE TABLE broken_b (id int);\n"
    ),
    "0003_later.sql": "CREATE TABLE later_table (id int);\n",
}


# --------------------------------------------------------------------------- fresh install and upgrade


def test_fresh_database_gets_every_migration_applied(empty_database):
    out = io.StringIO()
    result = apply(empty_database, DEFAULT_DIR, out)
    assert list(result.applied) == SCHEMA_FILES
    assert ledger_names(empty_database) == SCHEMA_FILES
    assert {"inbound_messages", "outbound_messages", "security_events", "api_clients", "alert_state",
            "quarantine", "schema_migrations"} <= user_tables(empty_database)
    for name in SCHEMA_FILES:
        assert f"Applying {name} ...\n" in out.getvalue()
        assert f"Applied {name} in " in out.getvalue()


def test_ledger_records_sha256_and_duration_for_each_file(empty_database):
    apply(empty_database, DEFAULT_DIR, io.StringIO())
    import hashlib

    rows = query(empty_database, "SELECT filename, checksum, duration_ms, applied_at FROM schema_migrations "
                                 "ORDER BY filename")
    assert [(r[0], r[1]) for r in rows] == [
        (name, hashlib.sha256((DEFAULT_DIR / name).read_bytes()).hexdigest()) for name in SCHEMA_FILES]
    assert all(r[2] >= 0 and r[3] is not None for r in rows)


def test_second_run_applies_nothing_and_exits_zero(empty_database):
    apply(empty_database, DEFAULT_DIR, io.StringIO())
    before = ledger(empty_database)
    out, err = io.StringIO(), io.StringIO()
    code = main(["apply", "--database-url", empty_database], stdout=out, stderr=err, environ={})
    assert code == 0, err.getvalue()
    assert "Applying" not in out.getvalue()
    assert f"Nothing to apply: {len(SCHEMA_FILES)} migration(s) already applied" in out.getvalue()
    assert ledger(empty_database) == before


def test_upgrade_from_the_first_files_applies_only_the_rest(empty_database, tmp_path):
    apply(empty_database, schema_subset(tmp_path / "old", 2), io.StringIO())
    old_rows = ledger(empty_database)
    out = io.StringIO()
    result = apply(empty_database, DEFAULT_DIR, out)
    assert list(result.applied) == SCHEMA_FILES[2:]
    assert ledger(empty_database)[:2] == old_rows
    assert ledger_names(empty_database) == SCHEMA_FILES
    assert all(f"Applying {name}" not in out.getvalue() for name in SCHEMA_FILES[:2])


# --------------------------------------------------------------------------- failures never half-apply


def test_failing_file_is_rolled_back_whole_and_stops_the_run(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", FAILING_RUN)
    out = io.StringIO()
    with pytest.raises(MigrationFailed) as failure:
        apply(empty_database, directory, out)
    assert ledger_names(empty_database) == ["0001_first.sql"]
    tables = user_tables(empty_database)
    assert "first_table" in tables
    assert not tables & {"broken_a", "broken_b", "later_table"}
    assert failure.value.filename == "0002_broken.sql"
    assert "Applying 0003_later.sql" not in out.getvalue()


def test_failure_message_names_file_statement_position_and_postgres_error(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", FAILING_RUN)
    with pytest.raises(MigrationFailed) as failure:
        apply(empty_database, directory, io.StringIO())
    message = str(failure.value)
    assert message.startswith('0002_broken.sql: statement 3 (line 4, column 8) failed: ERROR: column '
                              '"no_such_column" does not exist [SQLSTATE 42703]')
    assert "statement: SELECT no_such_column FROM broken_a" in message
    assert "0002_broken.sql was rolled back: none of it was applied" in message
    assert "1 later file(s) not attempted" in message


def test_runtime_error_without_position_names_the_statement_line(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", {"0001_div.sql": "CREATE TABLE d (id int);\n\nSELECT 1 / 0;\n"})
    with pytest.raises(MigrationFailed) as failure:
        apply(empty_database, directory, io.StringIO())
    assert str(failure.value).startswith("0001_div.sql: statement 2 (line 3) failed: ERROR: division by zero")
    assert "d" not in user_tables(empty_database)


def test_fixed_file_applies_on_the_next_run(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", FAILING_RUN)
    with pytest.raises(MigrationFailed):
        apply(empty_database, directory, io.StringIO())
    (directory / "0002_broken.sql").write_text("CREATE TABLE broken_a (id int);\n")
    result = apply(empty_database, directory, io.StringIO())
    assert list(result.applied) == ["0002_broken.sql", "0003_later.sql"]


# --------------------------------------------------------------------------- refusals before anything runs


def test_edited_applied_file_is_refused_before_anything_runs(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                                          "0002_b.sql": "CREATE TABLE b (id int);\n"})
    apply(empty_database, directory, io.StringIO())
    before = catalog(empty_database)
    (directory / "0001_a.sql").write_text("CREATE TABLE a (id bigint);\n")
    (directory / "0003_c.sql").write_text("CREATE TABLE c (id int);\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["apply", "--database-url", empty_database, "--dir", str(directory)], stdout=out, stderr=err,
                environ={})
    assert code == 1
    assert "0001_a.sql was applied on" in err.getvalue() and "must not be edited" in err.getvalue()
    assert "Applying" not in out.getvalue()
    assert catalog(empty_database) == before


def test_unknown_applied_migration_is_refused_as_a_rollback(empty_database, tmp_path):
    apply(empty_database, DEFAULT_DIR, io.StringIO())
    before = catalog(empty_database)
    # A release from before the newest file that is not marked backward-compatible.
    breaking = [m.filename for m in load_migrations(DEFAULT_DIR) if not m.backward_compatible][-1]
    older_release = schema_subset(tmp_path / "older", SCHEMA_FILES.index(breaking))
    with pytest.raises(RefusedError) as refused:
        apply(empty_database, older_release, io.StringIO())
    assert f"this release does not know: {breaking}" in str(refused.value)
    assert "rollback to an older release" in str(refused.value)
    assert catalog(empty_database) == before


def test_backward_compatible_newer_migration_lets_an_older_release_run(empty_database, tmp_path):
    directory = make_dir(tmp_path / "new", {
        "0001_a.sql": "CREATE TABLE a (id int);\n",
        "0002_b.sql": "-- migrate:backward-compatible\nALTER TABLE a ADD COLUMN note text;\n",
    })
    apply(empty_database, directory, io.StringIO())
    older = make_dir(tmp_path / "old", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    before = catalog(empty_database)
    progress = io.StringIO()
    result = apply(empty_database, older, progress)
    assert result.applied == ()
    assert "0002_b.sql is applied but unknown to this release; it is marked migrate:backward-compatible" in progress.getvalue()
    assert catalog(empty_database) == before


def test_incompatible_newer_migration_still_refuses_the_older_release(empty_database, tmp_path):
    directory = make_dir(tmp_path / "new", {
        "0001_a.sql": "CREATE TABLE a (id int);\n",
        "0002_b.sql": "-- migrate:backward-compatible\nALTER TABLE a ADD COLUMN note text;\n",
        "0003_c.sql": "ALTER TABLE a DROP COLUMN id;\n",
    })
    apply(empty_database, directory, io.StringIO())
    older = make_dir(tmp_path / "old", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    with pytest.raises(RefusedError) as refused:
        apply(empty_database, older, io.StringIO())
    assert "this release does not know: 0003_c.sql" in str(refused.value)
    assert "0002_b.sql" not in str(refused.value).split("(Files marked")[0]


def test_out_of_order_file_is_refused_naming_both_versions(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                                          "0003_c.sql": "CREATE TABLE c (id int);\n"})
    apply(empty_database, directory, io.StringIO())
    (directory / "0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    with pytest.raises(RefusedError, match=r"0002_b\.sql \(version 0002\) is pending but 0003_c\.sql "
                                           r"\(version 0003\) is already applied"):
        apply(empty_database, directory, io.StringIO())
    assert "b" not in user_tables(empty_database)


def test_out_of_order_file_applies_with_allow_out_of_order(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n",
                                          "0003_c.sql": "CREATE TABLE c (id int);\n"})
    apply(empty_database, directory, io.StringIO())
    (directory / "0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    result = apply(empty_database, directory, io.StringIO(), allow_out_of_order=True)
    assert list(result.applied) == ["0002_b.sql"]
    assert "b" in user_tables(empty_database)


def test_foreign_schema_migrations_table_is_refused_untouched(empty_database):
    with psycopg.connect(empty_database) as conn:
        conn.execute("CREATE TABLE schema_migrations (filename text PRIMARY KEY, applied_at timestamptz)")
    before = catalog(empty_database)
    with pytest.raises(LedgerError, match=r"schema_migrations exists but has no column checksum, duration_ms"):
        apply(empty_database, DEFAULT_DIR, io.StringIO())
    assert catalog(empty_database) == before


# --------------------------------------------------------------------------- lock


LOCK_RACE = {
    "0001_log.sql": "CREATE TABLE run_log (filename text NOT NULL, pid int NOT NULL DEFAULT pg_backend_pid());\n"
                    "INSERT INTO run_log (filename) VALUES ('0001_log.sql');\nSELECT pg_sleep(0.6);\n",
    "0002_slow.sql": "INSERT INTO run_log (filename) VALUES ('0002_slow.sql');\nSELECT pg_sleep(0.4);\n",
    "0003_more.sql": "CREATE TABLE more (id int);\nINSERT INTO run_log (filename) VALUES ('0003_more.sql');\n",
}


def test_two_runners_started_together_apply_every_file_exactly_once(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", LOCK_RACE)
    barrier = threading.Barrier(2)
    outputs = [io.StringIO(), io.StringIO()]
    results: list = [None, None]

    def runner(i: int) -> None:
        barrier.wait()
        try:
            results[i] = apply(empty_database, directory, outputs[i], lock_timeout=30, poll_interval=0.05)
        except Exception as exc:  # noqa: BLE001 - reported by the asserts below
            results[i] = exc

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, ApplyResult) for r in results), results
    assert sorted(len(r.applied) for r in results) == [0, 3]
    assert any("Waiting for the migration lock held by pid" in o.getvalue() for o in outputs), \
        "the runners did not overlap, so this test proved nothing"
    assert query(empty_database, "SELECT filename, count(*) FROM run_log GROUP BY 1 ORDER BY 1") == [
        ("0001_log.sql", 1), ("0002_slow.sql", 1), ("0003_more.sql", 1)]
    assert ledger_names(empty_database) == sorted(LOCK_RACE)


def test_two_cli_processes_started_together_apply_every_file_exactly_once(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", LOCK_RACE)
    env = {k: v for k, v in os.environ.items()}
    env.update(DATABASE_URL=empty_database, MIGRATIONS_DIR=str(directory))
    procs = [subprocess.Popen([sys.executable, "-m", "restobot.remote.migrate", "apply", "--lock-timeout", "30"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert query(empty_database, "SELECT filename, count(*) FROM run_log GROUP BY 1 ORDER BY 1") == [
        ("0001_log.sql", 1), ("0002_slow.sql", 1), ("0003_more.sql", 1)]
    assert sum("Nothing to apply" in out for out, _ in outs) == 1


def test_runner_gives_up_after_the_lock_timeout_naming_the_holder(empty_database):
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        holder_pid = holder.info.backend_pid
        out = io.StringIO()
        with pytest.raises(LockTimeout) as timeout:
            apply(empty_database, DEFAULT_DIR, out, lock_timeout=0.3, poll_interval=0.05)
    assert f"could not take the migration lock within 0.3 s: pid {holder_pid}" in str(timeout.value)
    assert "--lock-timeout" in str(timeout.value)
    assert f"Waiting for the migration lock held by pid {holder_pid}" in out.getvalue()
    assert ledger(empty_database) == [] and user_tables(empty_database) == set()


def test_lock_is_released_after_a_failed_run(empty_database, tmp_path):
    with pytest.raises(MigrationFailed):
        apply(empty_database, make_dir(tmp_path / "m", FAILING_RUN), io.StringIO())
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0] is True


def test_no_transaction_file_creates_an_index_concurrently_under_the_lock(empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", {
        "0001_t.sql": "CREATE TABLE t (id int, c text);\nINSERT INTO t SELECT g, g::text FROM generate_series(1, 100) g;\n",
        "0002_t_c_idx.sql": "-- Build without blocking writes.\n-- migrate:no-transaction\n"
                            "DROP INDEX CONCURRENTLY IF EXISTS t_c_idx_invalid;\n"
                            "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_c_idx ON t (c);\n",
    })
    results: list = []
    worker = threading.Thread(target=lambda: results.append(apply(empty_database, directory, io.StringIO())))
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "CREATE INDEX CONCURRENTLY hung behind the migration lock"
    assert list(results[0].applied) == ["0001_t.sql", "0002_t_c_idx.sql"]
    assert query(empty_database, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_c_idx'::regclass") == [(True,)]


# --------------------------------------------------------------------------- dry run and status


def test_dry_run_on_an_empty_database_changes_nothing(empty_database):
    before = catalog(empty_database)
    out = io.StringIO()
    result = apply(empty_database, DEFAULT_DIR, out, dry_run=True)
    assert catalog(empty_database) == before
    assert "schema_migrations" not in user_tables(empty_database)
    assert list(result.pending) == SCHEMA_FILES
    assert [line for line in out.getvalue().splitlines() if line.startswith("Would apply")] == [
        f"Would apply {name}" for name in SCHEMA_FILES]


def test_dry_run_after_an_upgrade_lists_only_pending_and_changes_nothing(empty_database, tmp_path):
    apply(empty_database, schema_subset(tmp_path / "old", 2), io.StringIO())
    before = catalog(empty_database)
    out, err = io.StringIO(), io.StringIO()
    code = main(["apply", "--dry-run", "--database-url", empty_database], stdout=out, stderr=err, environ={})
    assert code == 0, err.getvalue()
    assert catalog(empty_database) == before
    assert f"Dry run: {len(SCHEMA_FILES) - 2} pending, 2 applied; nothing was changed." in out.getvalue()
    assert f"Would apply {SCHEMA_FILES[0]}" not in out.getvalue()


def test_status_lists_applied_with_dates_and_pending(empty_database, tmp_path):
    apply(empty_database, schema_subset(tmp_path / "old", 2), io.StringIO())
    out = io.StringIO()
    report = status(empty_database, DEFAULT_DIR, out)
    lines = out.getvalue().splitlines()
    applied_at = {r[0]: r[2] for r in ledger(empty_database)}
    for name in SCHEMA_FILES[:2]:
        when = applied_at[name].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert any(line.startswith("applied") and when in line and line.endswith(name) for line in lines), lines
    for name in SCHEMA_FILES[2:]:
        assert any(line.startswith("pending") and line.endswith(name) for line in lines), lines
    assert lines[-1] == f"2 applied, {len(SCHEMA_FILES) - 2} pending."
    assert report.problems == ()


# --------------------------------------------------------------------------- CLI as a real process


def test_cli_failure_exits_nonzero_with_a_clear_message_not_a_traceback(postgres_server, empty_database, tmp_path):
    directory = make_dir(tmp_path / "m", FAILING_RUN)
    proc = run_cli("apply", "--dir", str(directory), env_extra={"DATABASE_URL": empty_database})
    assert proc.returncode == 1
    assert proc.stderr.startswith("migrate: error: 0002_broken.sql: statement 3 (line 4, column 8) failed")
    assert "Traceback" not in proc.stderr
    assert "Applied 0001_first.sql in " in proc.stdout
    assert postgres_server.password not in proc.stdout + proc.stderr


def test_cli_apply_then_status_exit_codes(empty_database):
    env = {"DATABASE_URL": empty_database}
    assert run_cli("status", "--exit-code", env_extra=env).returncode == EXIT_PENDING
    applied = run_cli("apply", env_extra=env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stderr == ""
    again = run_cli("apply", env_extra=env)
    assert (again.returncode, again.stderr) == (0, "")
    assert "Nothing to apply" in again.stdout
    assert run_cli("status", "--exit-code", env_extra=env).returncode == 0


def test_cli_unreachable_database_exits_one_and_redacts_the_password(postgres_server):
    secret = "Sup3r-secret-pass"
    closed_port = migrate_free_port()
    url = f"postgresql://n8n:{secret}@127.0.0.1:{closed_port}/n8n"
    proc = run_cli("apply", "--database-url", url)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"migrate: error: cannot connect to postgresql://n8n:***@127.0.0.1:{closed_port}/n8n")
    assert secret not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_wrong_password_is_reported_without_echoing_it(postgres_server, empty_database):
    wrong = empty_database.replace(postgres_server.password, "Wrong-password-123")
    proc = run_cli("status", env_extra={"DATABASE_URL": wrong})
    assert proc.returncode == 1
    assert "password authentication failed" in proc.stderr
    assert "Wrong-password-123" not in proc.stdout + proc.stderr


def migrate_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the schema


@pytest.fixture(scope="module")
def runbook_database(postgres_server):
    """A migrated database filled with a month of realistic rows, analyzed, for plan checks."""
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    apply(url, DEFAULT_DIR, io.StringIO())
    with psycopg.connect(url) as conn:
        conn.execute("""
            INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, text, payload, received_at,
                                          status, processed_at)
            SELECT (ARRAY['whatsapp','messenger','instagram'])[1 + g % 3], 'wamid.' || g, 'conv-' || (g % 500),
                   'user-' || (g % 500), 'bonjour ' || g, jsonb_build_object('n', g),
                   now() - g * interval '50 seconds', 'PROCESSED', now() - g * interval '50 seconds'
              FROM generate_series(1, 50000) g""")
        conn.execute("""
            INSERT INTO outbound_messages (channel, msg_id, inbound_message_id, conversation_key, recipient, payload,
                                           status, retry_count, next_retry_at, error_message, provider_message_id,
                                           created_at, sent_at)
            SELECT i.channel, i.msg_id, i.id, i.conversation_key, i.sender, '{"text": "merci"}',
                   s.status, CASE WHEN s.status IN ('RETRY', 'DLQ') THEN 3 ELSE 0 END,
                   CASE WHEN s.status = 'RETRY' THEN now() + interval '1 minute' END,
                   CASE WHEN s.status IN ('RETRY', 'DLQ') THEN 'throttled (130429)' END,
                   CASE WHEN s.status = 'SENT' THEN 'out.' || i.id END, i.received_at,
                   CASE WHEN s.status = 'SENT' THEN i.received_at END
              FROM inbound_messages i
              CROSS JOIN LATERAL (SELECT CASE WHEN i.id % 100 = 0 THEN 'DLQ' WHEN i.id % 50 = 1 THEN 'RETRY'
                                              WHEN i.id % 200 = 3 THEN 'PENDING' ELSE 'SENT' END AS status) s""")
        conn.execute("""
            INSERT INTO security_events (event_type, channel, source_ip, detail, created_at)
            SELECT (ARRAY['SIGNATURE_INVALID','RATE_LIMIT','REPLAY','AUTH_FAILED'])[1 + g % 4], 'whatsapp',
                   '203.0.113.7', '{}', now() - g * interval '50 seconds'
              FROM generate_series(1, 50000) g""")
        conn.execute("INSERT INTO api_clients (name, token_hash, scopes) SELECT 'client-' || g, "
                     "encode(sha256(g::text::bytea), 'hex'), '{inbound:write}' FROM generate_series(1, 200) g")
        conn.execute("INSERT INTO quarantine (channel, sender, created_by) "
                     "SELECT 'whatsapp', '3361' || g, 'ops' FROM generate_series(1, 50) g")
        conn.execute("ANALYZE")
    yield url
    postgres_server.drop_database(name)


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


RUNBOOK_QUERIES = {
    "dlq_count": ("SELECT COUNT(*) FROM outbound_messages WHERE status = 'DLQ'",
                  "outbound_messages_status_created_at_idx"),
    "dlq_details": ("SELECT id, channel, msg_id, error_message, retry_count, created_at FROM outbound_messages "
                    "WHERE status = 'DLQ' ORDER BY created_at DESC LIMIT 10",
                    "outbound_messages_status_created_at_idx"),
    "retry_and_dlq": ("SELECT * FROM outbound_messages WHERE status IN ('RETRY','DLQ') "
                      "ORDER BY created_at DESC LIMIT 10", "outbound_messages_status_created_at_idx"),
    "security_events_last_hour": ("SELECT event_type, COUNT(*) FROM security_events "
                                  "WHERE created_at > now() - interval '1 hour' GROUP BY event_type",
                                  "security_events_created_at_event_type_idx"),
    "rate_limit": ("SELECT conversation_key, COUNT(*) FROM inbound_messages "
                   "WHERE received_at > now() - interval '1 minute' GROUP BY conversation_key HAVING COUNT(*) > 5",
                   "inbound_messages_received_at_idx"),
    "migrations_applied": ("SELECT filename, applied_at FROM schema_migrations ORDER BY applied_at DESC LIMIT 10",
                           None),
}

PIPELINE_LOOKUPS = {
    "inbound_dedupe": ("SELECT id FROM inbound_messages WHERE channel = 'whatsapp' AND msg_id = 'wamid.3'",
                       "inbound_messages_channel_msg_id_key"),
    "conversation_history": ("SELECT text, received_at FROM inbound_messages WHERE conversation_key = 'conv-7' "
                             "ORDER BY received_at DESC LIMIT 10",
                             "inbound_messages_conversation_key_received_at_idx"),
    "reply_for_inbound": ("SELECT id FROM outbound_messages WHERE inbound_message_id = 42",
                          "outbound_messages_inbound_message_id_key"),
    "delivery_status_webhook": ("SELECT id FROM outbound_messages WHERE channel = 'whatsapp' "
                                "AND provider_message_id = 'out.3'",
                                "outbound_messages_channel_provider_message_id_key"),
    "sender_due_queue": ("SELECT id FROM outbound_messages WHERE status IN ('PENDING','RETRY') "
                         "AND next_retry_at <= now() ORDER BY next_retry_at LIMIT 20", "outbound_messages_due_idx"),
    "api_token_lookup": ("SELECT id, scopes FROM api_clients WHERE token_hash = "
                         "encode(sha256('17'::bytea), 'hex') AND enabled", "api_clients_token_hash_key"),
    "quarantine_lookup": ("SELECT 1 FROM quarantine WHERE channel = 'whatsapp' AND sender = '33617' "
                          "AND (expires_at IS NULL OR expires_at > now())", "quarantine_channel_sender_key"),
}


@pytest.mark.parametrize("name", sorted(RUNBOOK_QUERIES))
def test_runbook_query_runs_against_the_schema(runbook_database, name):
    sql, _ = RUNBOOK_QUERIES[name]
    rows = query(runbook_database, sql)
    if name == "dlq_count":
        assert rows == [(500,)]
    if name == "migrations_applied":
        assert sorted(r[0] for r in rows) == SCHEMA_FILES


# Tables that stay small (a few rows): a seq scan is the right plan there, so the
# check is that the index can serve the lookup at all.
SMALL_TABLES = {"api_token_lookup", "quarantine_lookup"}


@pytest.mark.parametrize("name", sorted(n for n, (_, idx) in {**RUNBOOK_QUERIES, **PIPELINE_LOOKUPS}.items() if idx))
def test_query_uses_its_index(runbook_database, name):
    sql, index = {**RUNBOOK_QUERIES, **PIPELINE_LOOKUPS}[name]
    with psycopg.connect(runbook_database) as conn:
        if name in SMALL_TABLES:
            conn.execute("SET enable_seqscan = off")
        (plan_json,) = conn.execute("EXPLAIN (FORMAT JSON) " + sql).fetchone()
    plan = plan_json[0]["Plan"] if isinstance(plan_json, list) else json.loads(plan_json)[0]["Plan"]
    nodes = list(plan_nodes(plan))
    used = {n.get("Index Name") for n in nodes} - {None}
    assert index in used, json.dumps(plan, indent=1)
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], json.dumps(plan, indent=1)


def test_runbook_table_size_query_lists_the_bot_tables(runbook_database):
    rows = query(runbook_database, "SELECT relname, pg_size_pretty(pg_total_relation_size(relid)) "
                                   "FROM pg_catalog.pg_statio_user_tables "
                                   "ORDER BY pg_total_relation_size(relid) DESC LIMIT 10")
    assert {"inbound_messages", "outbound_messages", "security_events"} <= {r[0] for r in rows}


def test_runbook_manual_dlq_replay_is_allowed_by_the_constraints(runbook_database):
    with psycopg.connect(runbook_database) as conn:
        cur = conn.execute("UPDATE outbound_messages SET status = 'RETRY', next_retry_at = NOW() "
                           "WHERE status = 'DLQ'")
        assert cur.rowcount == 500
        conn.rollback()


@pytest.fixture(scope="module")
def schema_database(postgres_server):
    """A migrated, empty database; tests write inside a transaction that is rolled back."""
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    apply(url, DEFAULT_DIR, io.StringIO())
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def db(schema_database):
    with psycopg.connect(schema_database) as conn:
        yield conn
        conn.rollback()


INBOUND = ("INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, text, payload) "
           "VALUES ('whatsapp', 'wamid.1', 'wa:123:33600000000', '33600000000', 'bonjour', '{\"id\": \"wamid.1\"}') "
           "RETURNING id")
OUTBOUND = ("INSERT INTO outbound_messages (channel, msg_id, inbound_message_id, conversation_key, recipient, payload) "
            "VALUES ('whatsapp', 'wamid.1', {inbound}, 'wa:123:33600000000', '33600000000', '{{\"text\": \"merci\"}}')")
QUARANTINE = ("INSERT INTO quarantine (channel, sender, reason, created_by, expires_at) "
              "VALUES ('whatsapp', '33600000000', 'spam', 'ops', NULL)")

BAD_ROWS = {
    "inbound_duplicate_msg_id_per_channel": (
        [INBOUND], INBOUND.replace("'bonjour'", "'again'"), errors.UniqueViolation),
    "inbound_unknown_channel": ([], INBOUND.replace("'whatsapp'", "'telegram'"), errors.CheckViolation),
    "inbound_unknown_status": ([INBOUND], "UPDATE inbound_messages SET status = 'DONE', processed_at = now()",
                               errors.CheckViolation),
    "inbound_processed_without_processed_at": ([INBOUND], "UPDATE inbound_messages SET status = 'PROCESSED'",
                                               errors.CheckViolation),
    "inbound_payload_not_an_object": ([], INBOUND.replace("'{\"id\": \"wamid.1\"}'", "'[1]'"), errors.CheckViolation),
    "inbound_empty_msg_id": ([], INBOUND.replace("'wamid.1'", "''"), errors.CheckViolation),
    "outbound_unknown_status": ([INBOUND, OUTBOUND.format(inbound="NULL")],
                                "UPDATE outbound_messages SET status = 'FAILED'", errors.CheckViolation),
    "outbound_second_reply_to_one_inbound": (
        [INBOUND, OUTBOUND.format(inbound="(SELECT id FROM inbound_messages)")],
        OUTBOUND.format(inbound="(SELECT id FROM inbound_messages)").replace("'wamid.1', (", "'other', ("),
        errors.UniqueViolation),
    "outbound_retry_without_next_retry_at": ([INBOUND, OUTBOUND.format(inbound="NULL")],
                                             "UPDATE outbound_messages SET status = 'RETRY'", errors.CheckViolation),
    "outbound_sent_without_provider_message_id": (
        [INBOUND, OUTBOUND.format(inbound="NULL")],
        "UPDATE outbound_messages SET status = 'SENT', sent_at = now()", errors.CheckViolation),
    "outbound_sent_row_put_back_for_resend": (
        [INBOUND, OUTBOUND.format(inbound="NULL"),
         "UPDATE outbound_messages SET status = 'SENT', sent_at = now(), provider_message_id = 'wamid.out.1'"],
        "UPDATE outbound_messages SET status = 'RETRY', next_retry_at = now()", errors.CheckViolation),
    "outbound_negative_retry_count": ([INBOUND, OUTBOUND.format(inbound="NULL")],
                                      "UPDATE outbound_messages SET retry_count = -1", errors.CheckViolation),
    "security_event_unknown_type": (
        [], "INSERT INTO security_events (event_type) VALUES ('SIGNATURE_BAD')", errors.CheckViolation),
    "security_event_missing_type": (
        [], "INSERT INTO security_events (channel) VALUES ('whatsapp')", errors.NotNullViolation),
    "api_client_token_stored_in_clear": (
        [], "INSERT INTO api_clients (name, token_hash) VALUES ('ops', 'my-admin-token')", errors.CheckViolation),
    "api_client_unknown_scope": (
        [], f"INSERT INTO api_clients (name, token_hash, scopes) VALUES ('ops', '{'a' * 64}', '{{admin:all}}')",
        errors.CheckViolation),
    "api_client_duplicate_name": (
        [f"INSERT INTO api_clients (name, token_hash) VALUES ('ops', '{'a' * 64}')"],
        f"INSERT INTO api_clients (name, token_hash) VALUES ('ops', '{'b' * 64}')", errors.UniqueViolation),
    "quarantine_same_sender_twice": (
        [QUARANTINE], QUARANTINE, errors.UniqueViolation),
    "quarantine_unknown_channel": ([], QUARANTINE.replace("'whatsapp'", "'telegram'"), errors.CheckViolation),
    "quarantine_empty_sender": ([], QUARANTINE.replace("'33600000000'", "''"), errors.CheckViolation),
    "quarantine_expiring_before_it_starts": (
        [], QUARANTINE.replace("NULL)", "now() - interval '1 day')"), errors.CheckViolation),
    "alert_active_without_alert_time": (
        [], "UPDATE alert_state SET active = true WHERE alert_key = 'dlq_threshold'", errors.CheckViolation),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_database_rejects_bad_row(db, case):
    setup, bad, error = BAD_ROWS[case]
    for sql in setup:
        db.execute(sql)
    with pytest.raises(error):
        db.execute(bad)


def test_database_accepts_the_pipeline_life_of_a_message(db):
    (inbound_id,) = db.execute(INBOUND).fetchone()
    assert db.execute("INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload) "
                      "VALUES ('whatsapp', 'wamid.1', 'k', 's', '{}') ON CONFLICT (channel, msg_id) DO NOTHING"
                      ).rowcount == 0
    db.execute("UPDATE inbound_messages SET status = 'PROCESSED', processed_at = now() WHERE id = %s", (inbound_id,))
    db.execute(OUTBOUND.format(inbound=inbound_id))
    db.execute("UPDATE outbound_messages SET status = 'RETRY', retry_count = 1, next_retry_at = now(), "
               "error_code = '130429', error_message = 'throughput'")
    db.execute("UPDATE outbound_messages SET status = 'DLQ', retry_count = 5")
    db.execute("UPDATE outbound_messages SET status = 'RETRY', next_retry_at = now()")
    db.execute("UPDATE outbound_messages SET status = 'SENT', sent_at = now(), provider_message_id = 'wamid.out'")
    db.execute("UPDATE outbound_messages SET delivery_status = 'delivered'")
    db.execute("INSERT INTO security_events (event_type, channel, source_ip, detail) "
               "VALUES ('SIGNATURE_INVALID', 'whatsapp', '203.0.113.9', '{\"header\": \"sha256=...\"}')")
    db.execute(f"INSERT INTO api_clients (name, token_hash, scopes) VALUES ('ops-admin', '{'c' * 64}', "
               "'{admin:dlq,inbound:write}')")
    db.execute("INSERT INTO security_events (event_type, channel, detail) "
               "VALUES ('QUARANTINED', 'whatsapp', '{\"sender\": \"33600000000\"}')")
    db.execute(QUARANTINE.replace("NULL)", "now() + interval '7 days')"))
    raised = db.execute("UPDATE alert_state SET active = true, last_value = 12, threshold = 10, "
                        "last_alerted_at = now() WHERE alert_key = 'dlq_threshold' AND NOT active").rowcount
    raised_again = db.execute("UPDATE alert_state SET active = true, last_alerted_at = now() "
                              "WHERE alert_key = 'dlq_threshold' AND NOT active").rowcount
    assert (raised, raised_again) == (1, 0)


def test_updated_at_is_set_by_trigger(db):
    db.execute(INBOUND)
    db.execute("UPDATE inbound_messages SET updated_at = '2000-01-01'")
    (updated_at,) = db.execute("SELECT updated_at FROM inbound_messages").fetchone()
    assert updated_at.year > 2000


def test_every_table_and_column_is_documented(schema_database):
    missing = query(schema_database, """
        SELECT c.relname || COALESCE('.' || a.attname, '')
          FROM pg_class c
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
           AND col_description(c.oid, COALESCE(a.attnum, 0)) IS NULL
        UNION ALL
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL
        ORDER BY 1""")
    assert missing == []
