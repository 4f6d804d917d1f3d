"""The database: a backup before any migration, then the release's migrations.

Migrations run with ``docker compose run db-migrate`` from the new release
before the stack is converged, so a failing migration stops the deploy while
the running release keeps serving, and n8n never starts on a half-applied
schema (the compose file's ``service_completed_successfully`` gate holds the
same rule when the stack is started by hand).
"""

from __future__ import annotations

import json
import re

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File

from restobot.commands import (
    HostLayout,
    compose,
    compose_run_migrations,
    compose_up,
    pg_restore,
    psql,
    shell,
    shell_text,
)
from restobot.facts.deploy import (
    POSTGRES_CONTAINER,
    ApiClient,
    AppliedMigrations,
    LedgerRow,
)
from restobot.operations.lock import write_argv


def pending_migrations(release_migrations: list[dict], ledger: tuple[LedgerRow, ...] | None) -> list[str]:
    applied = {row.filename for row in ledger or ()}
    return [item["filename"] for item in release_migrations if item["filename"] not in applied]


def backup_path(layout: HostLayout, identifier: str) -> str:
    return f"{layout.backups_dir}/before-{identifier}.dump"


def dump_to_file_argv(container: str, dump_command: str, path: str) -> list[str]:
    """Write a dump under a temporary name, check it is not empty, then rename it."""
    producer = shell_text(["docker", "exec", container, "sh", "-c", dump_command])
    script = f'set -e; umask 077; {producer} > "$0.partial"; test -s "$0.partial"; mv "$0.partial" "$0"'
    return ["sh", "-c", script, path]


def backup_argvs(layout: HostLayout, identifier: str, ledger: tuple[LedgerRow, ...]) -> list[list[str]]:
    path = backup_path(layout, identifier)
    metadata = {
        "before_release": identifier,
        "applied_migrations": [row.filename for row in ledger],
        "format": "pg_dump custom (-Fc) + pg_dumpall --globals-only",
    }
    return [
        ["install", "-d", "-m", "700", layout.backups_dir],
        dump_to_file_argv(POSTGRES_CONTAINER, 'exec pg_dumpall --globals-only -U "$POSTGRES_USER"', f"{path}.globals.sql"),
        dump_to_file_argv(POSTGRES_CONTAINER, 'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"', path),
        write_argv(f"{path}.json", json.dumps(metadata, sort_keys=True) + "\n"),
    ]


@operation()
def database_backed_up(layout: HostLayout, identifier: str, release_migrations: list[dict]):
    """
    Ensure a backup of the database exists before this release migrates it.

    Nothing to do on a fresh host (no database yet) or when no migration is pending.

    + layout: where backups live
    + identifier: the release id the backup is taken before
    + release_migrations: the release manifest's migrations
    """
    ledger = host.get_fact(AppliedMigrations)
    if ledger is None:
        host.noop("no database yet: nothing to back up")
        return
    if not pending_migrations(release_migrations, ledger):
        host.noop("no migration pending: no backup needed")
        return
    if host.get_fact(File, path=backup_path(layout, identifier)):
        host.noop(f"{backup_path(layout, identifier)} exists")
        return
    for argv in backup_argvs(layout, identifier, ledger):
        yield shell(argv)


@operation()
def schema_migrated(release_dir: str, release_migrations: list[dict]):
    """
    Ensure every migration of the release is applied, running db-migrate once if any is pending.

    + release_dir: the release whose db-migrate image and migrations apply
    + release_migrations: the release manifest's migrations
    """
    ledger = host.get_fact(AppliedMigrations)
    pending = pending_migrations(release_migrations, ledger)
    if ledger is not None and not pending:
        host.noop(f"all {len(release_migrations)} migrations applied")
        return
    yield shell(compose_up(release_dir, "postgres", "redis"))
    yield shell(compose_run_migrations(release_dir, "apply"))


def upsert_client_argv(release_dir: str, client: str, token_hash: str, scopes: tuple[str, ...]) -> list[str]:
    """Insert or update an API client by name; only the token's hash reaches the host."""
    values = ", ".join(f"'{scope}'" for scope in scopes)
    sql = (
        "INSERT INTO api_clients (name, token_hash, scopes, enabled, description) "
        f"VALUES ('{client}', '{token_hash}', ARRAY[{values}]::text[], true, 'managed by the deploy') "
        "ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash, scopes = EXCLUDED.scopes, enabled = true"
    )
    return psql(release_dir, sql)


@operation()
def api_client_present(release_dir: str, client: str, token_hash: str, scopes: tuple[str, ...]):
    """
    Ensure an API client exists with this token hash and these scopes (the admin API's caller).

    + release_dir: the release whose postgres service is used
    + client: the client's name (lowercase)
    + token_hash: sha256 hex of the token, computed on the operator's machine
    + scopes: the scopes it is granted
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", client) or not re.fullmatch(r"[0-9a-f]{64}", token_hash):
        raise ValueError("api_client_present: client must be a lowercase name and token_hash a sha256 hex digest")
    wanted = (token_hash, tuple(sorted(scopes)), True)
    if host.get_fact(ApiClient, client=client) == wanted:
        host.noop(f"API client {client} is present with scopes {', '.join(sorted(scopes))}")
        return
    yield shell(upsert_client_argv(release_dir, client, token_hash, tuple(sorted(scopes))))


def restore_argvs(release_dir: str, backup: str, database: str, user: str) -> list[list[str]]:
    """Stop the writers, recreate the database empty, restore the dump, analyze.

    The database is dropped rather than cleaned so that objects created by later
    migrations (absent from the dump) do not survive the restore.
    """
    admin_sql = (
        f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
        f'CREATE DATABASE "{database}" OWNER "{user}"',
    )
    steps = [compose(release_dir, "stop", "n8n-main", "n8n-worker")]
    for sql in admin_sql:
        steps.append(compose(release_dir, "exec", "-T", "postgres", "psql", "-X", "-v", "ON_ERROR_STOP=1",
                             "-U", user, "-d", "postgres", "-c", sql))
    restore = shell_text(pg_restore(release_dir))
    steps.append(["sh", "-c", f'{restore} < "$0"', backup])
    steps.append(psql(release_dir, "ANALYZE"))
    return steps


@operation(is_idempotent=False)
def database_restored(release_dir: str, backup: str, database: str, user: str):
    """
    Restore a pre-deploy backup over the database (a rollback the operator asked for).

    + release_dir: the release whose compose project runs postgres
    + backup: the dump's path on the host
    + database, user: the database to recreate and its owner
    """
    for argv in restore_argvs(release_dir, backup, database, user):
        yield shell(argv)
