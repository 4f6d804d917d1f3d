"""The database probe of the facts: a fresh host (nothing to back up yet) told apart from a database
that exists but did not answer (the deploy must refuse, never migrate without a backup).

The probe script runs for real under ``sh`` with a stand-in ``docker`` on ``PATH`` that answers as
docker and psql 17 do (the error texts below were printed by ``postgres:17`` in these situations).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from restobot.facts.deploy import (
    LEDGER_SQL,
    ApiClient,
    AppliedMigrations,
    DatabaseUnreadable,
    LedgerRow,
)

SOCKET = 'psql: error: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
NO_LEDGER = (
    'ERROR:  relation "schema_migrations" does not exist\n'
    "LINE 1: SELECT filename, checksum, backward_compatible FROM schema_mi...\n"
    "                                                             ^\n"
)
NO_DATABASE = SOCKET + 'FATAL:  database "n8n" does not exist\n'
STARTING = SOCKET + "FATAL:  the database system is starting up\n"
NO_SERVER = SOCKET + "No such file or directory\n\tIs the server running locally and accepting connections on that socket?\n"
PASSWORD = ('psql: error: connection to server at "127.0.0.1", port 5432 failed: '
            'FATAL:  password authentication failed for user "n8n"\n')
NO_ROLE = SOCKET + 'FATAL:  role "n8n" does not exist\n'
DENIED = "ERROR:  permission denied for table schema_migrations\n"

DOCKER_STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$STUB_LOG"
case "$1" in
  ps) [ -z "$STUB_PS_FAILS" ] || { echo 'Cannot connect to the Docker daemon' >&2; exit 1; }
      [ -z "$STUB_PS" ] || printf '%s\\n' "$STUB_PS" ;;
  exec) printf '%s' "$STUB_OUT"; printf '%s' "$STUB_ERR" >&2; exit "${STUB_RC:-0}" ;;
esac
"""


def run_probe(tmp_path: Path, command: str, *, docker: bool = True, ps: str = "resto-postgres-1 running",
              ps_fails: bool = False, out: str = "", err: str = "", rc: int = 0) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if docker:
        (bin_dir / "docker").write_text(DOCKER_STUB)
        (bin_dir / "docker").chmod(0o755)
    env = {"PATH": str(bin_dir), "STUB_LOG": str(tmp_path / "docker.log"), "STUB_PS": ps,
           "STUB_PS_FAILS": "1" if ps_fails else "", "STUB_OUT": out, "STUB_ERR": err, "STUB_RC": str(rc)}
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def ledger(tmp_path: Path, **docker):
    fact = AppliedMigrations()
    return fact.process(run_probe(tmp_path, fact.command(), **docker))


def test_the_ledgers_rows_are_read(tmp_path):
    rows = "0001_init.sql\ta1\tf\n0002_note.sql\tb2\tt\n"
    assert ledger(tmp_path, out=rows) == (LedgerRow("0001_init.sql", "a1", False), LedgerRow("0002_note.sql", "b2", True))


def test_an_empty_ledger_is_read_as_no_migration_applied(tmp_path):
    assert ledger(tmp_path, out="") == ()


def test_the_probe_queries_the_ledger_in_the_postgres_container(tmp_path):
    ledger(tmp_path, out="")
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert calls[1].startswith("exec resto-postgres-1 sh -c ") and LEDGER_SQL in calls[1]


def test_stderr_of_a_successful_query_is_not_read_as_rows(tmp_path):
    assert ledger(tmp_path, out="0001_init.sql\ta1\tf\n", err="WARNING:  a notice\n") == (
        LedgerRow("0001_init.sql", "a1", False),)


@pytest.mark.parametrize("docker", [
    {"docker": False},
    {"ps": ""},
    {"ps_fails": True},
    {"err": NO_DATABASE, "rc": 2},
    {"err": NO_LEDGER, "rc": 3},
], ids=["no-docker", "no-postgres-container", "docker-not-answering", "no-database", "no-ledger-table"])
def test_a_fresh_host_has_no_ledger(tmp_path, docker):
    assert ledger(tmp_path, **docker) is None


@pytest.mark.parametrize("err, rc", [
    (STARTING, 2), (NO_SERVER, 2), (PASSWORD, 2), (NO_ROLE, 2), (DENIED, 3),
], ids=["starting-up", "server-not-listening", "wrong-password", "no-role", "permission-denied"])
def test_a_database_that_does_not_answer_is_unreadable_with_psqls_error(tmp_path, err, rc):
    assert ledger(tmp_path, err=err, rc=rc) == DatabaseUnreadable(err.rstrip("\n"))


@pytest.mark.parametrize("ps, seen", [
    ("resto-postgres-1 exited", "resto-postgres-1 exited"),
    ("resto-postgres-1 restarting", "resto-postgres-1 restarting"),
    ("3f2a1b0c9d8e_resto-postgres-1 running", "3f2a1b0c9d8e_resto-postgres-1 running"),
], ids=["stopped", "restarting", "temporary-name"])
def test_a_postgres_container_not_running_under_its_name_is_unreadable(tmp_path, ps, seen):
    assert ledger(tmp_path, ps=ps) == DatabaseUnreadable(
        f"the postgres container is not running as resto-postgres-1: {seen}")


def test_a_stopped_container_is_not_queried(tmp_path):
    ledger(tmp_path, ps="resto-postgres-1 exited")
    assert [call.split()[0] for call in (tmp_path / "docker.log").read_text().splitlines()] == ["ps"]


def test_a_docker_exec_failure_is_unreadable_with_dockers_error(tmp_path):
    err = "Error response from daemon: container 3f2a is not running\n"
    assert ledger(tmp_path, err=err, rc=1) == DatabaseUnreadable(err.strip())


def test_a_failure_without_a_message_is_still_unreadable(tmp_path):
    assert ledger(tmp_path, rc=1) == DatabaseUnreadable("psql failed and printed nothing")


def test_an_api_client_of_an_unreadable_database_reads_as_absent(tmp_path):
    fact = ApiClient()
    assert fact.process(run_probe(tmp_path, fact.command(client="admin"), err=STARTING, rc=2)) is None
