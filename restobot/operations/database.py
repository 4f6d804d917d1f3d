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
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import File

from restobot.commands import (
    POSTGRES_CONTAINER,
    HostLayout,
    api_client_upsert,
    compose_run_migrations,
    compose_up,
    database_restore,
    predeploy_backup,
    shell,
)
from restobot.facts.deploy import (
    ApiClient,
    ApiClientRow,
    AppliedMigrations,
    DatabaseUnreadable,
    LedgerRow,
)
from restobot.release_archive import MigrationInfo
from restobot.remote.migrate.plan import make_plan

CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
TOKEN_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCOPE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,62}$")


def pending_migrations(release_migrations: Sequence[MigrationInfo], ledger: tuple[LedgerRow, ...] | None) -> list[str]:
    """The release's migrations the ledger lacks, in order (the migration runner's own plan)."""
    plan = make_plan(release_migrations, {row.filename: row for row in ledger or ()})
    return [item.filename for item in plan.pending]


def readable_ledger(ledger: tuple[LedgerRow, ...] | DatabaseUnreadable | None) -> tuple[LedgerRow, ...] | None:
    """The ledger, or None on a fresh host; a database that exists but did not answer stops the deploy
    (read as "no database yet", it would skip the backup and migrate anyway)."""
    if not isinstance(ledger, DatabaseUnreadable):
        return ledger
    raise OperationError(
        f"the database exists but could not be read, so neither a backup nor a migration can be decided: "
        f"{ledger.error}\n"
        f"Nothing was backed up or migrated. Look at `docker ps -a` and `docker logs {POSTGRES_CONTAINER}`, "
        f"wait until {POSTGRES_CONTAINER} is running and healthy (start it with `docker start "
        f"{POSTGRES_CONTAINER}` if it is stopped), then deploy again."
    )


def backup_metadata(identifier: str, ledger: tuple[LedgerRow, ...]) -> str:
    """The ``{dump}.json`` written next to a pre-deploy backup (read back by the ``PreDeployDumps`` fact)."""
    metadata = {
        "before_release": identifier,
        "applied_migrations": [row.filename for row in ledger],
        "format": "pg_dump custom (-Fc) + pg_dumpall --globals-only",
    }
    return json.dumps(metadata, sort_keys=True) + "\n"


@operation()
def database_backed_up(layout: HostLayout, identifier: str, release_migrations: Sequence[MigrationInfo]):
    """
    Ensure a backup of the database exists before this release migrates it.

    Nothing to do on a fresh host (no database yet) or when no migration is pending. A database
    that exists but cannot be read is refused: the deploy stops before any migration.

    + layout: where backups live
    + identifier: the release id the backup is taken before
    + release_migrations: the release manifest's migrations

    **Example:**

    .. code:: python

        database_backed_up(name="Ensure a backup precedes the migrations", layout=HostLayout(),
                           identifier="v1.2.0-1a2b3c4d", release_migrations=built.manifest.migrations)
    """
    ledger = readable_ledger(host.get_fact(AppliedMigrations))
    if ledger is None:
        host.noop("no database yet: nothing to back up")
        return
    if not pending_migrations(release_migrations, ledger):
        host.noop("no migration pending: no backup needed")
        return
    path = layout.predeploy_backup(identifier)
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists")
        return
    for argv in predeploy_backup(layout, identifier, backup_metadata(identifier, ledger)):
        yield shell(argv)


@operation()
def schema_migrated(release_dir: str, release_migrations: Sequence[MigrationInfo]):
    """
    Ensure every migration of the release is applied, running db-migrate once if any is pending.

    A database that exists but cannot be read is refused (never migrated as if it were new).

    + release_dir: the release whose db-migrate image and migrations apply
    + release_migrations: the release manifest's migrations

    **Example:**

    .. code:: python

        schema_migrated(name="Ensure every migration is applied", release_dir=release_dir,
                        release_migrations=built.manifest.migrations)
    """
    ledger = readable_ledger(host.get_fact(AppliedMigrations))
    pending = pending_migrations(release_migrations, ledger)
    if ledger is not None and not pending:
        host.noop(f"all {len(release_migrations)} migrations applied")
        return
    yield shell(compose_up(release_dir, "postgres", "redis"))
    yield shell(compose_run_migrations(release_dir, "apply"))


def check_api_client(client: str, token_hash: str, scopes: Sequence[str]) -> None:
    """Refuse a client name, token hash or scope that the admin API would not recognise."""
    if not CLIENT_NAME.match(client):
        raise ValueError(f"api_client_present: client {client!r} must be a lowercase name ({CLIENT_NAME.pattern})")
    if not TOKEN_SHA256.match(token_hash):
        raise ValueError(f"api_client_present: token_hash of {client} must be a sha256 hex digest (64 of 0-9a-f)")
    for scope in scopes:
        if not SCOPE.match(scope):
            raise ValueError(f"api_client_present: scope {scope!r} of {client} must match {SCOPE.pattern}")


@operation()
def api_client_present(release_dir: str, client: str, token_hash: str, scopes: tuple[str, ...]):
    """
    Ensure an API client exists with this token hash and these scopes (the admin API's caller).

    + release_dir: the release whose postgres service is used
    + client: the client's name (lowercase)
    + token_hash: sha256 hex of the token, computed on the operator's machine
    + scopes: the scopes it is granted

    **Example:**

    .. code:: python

        api_client_present(name="Ensure the admin API client is present", release_dir=release_dir,
                           client="admin", token_hash=settings.admin.token_sha256, scopes=("admin:read",))
    """
    check_api_client(client, token_hash, scopes)
    wanted = ApiClientRow(token_hash, tuple(sorted(scopes)), True)
    if host.get_fact(ApiClient, client=client) == wanted:
        host.noop(f"API client {client} is present with scopes {', '.join(wanted.scopes)}")
        return
    yield shell(api_client_upsert(release_dir, client, token_hash, wanted.scopes))


@operation(is_idempotent=False)
def database_restored(release_dir: str, backup: str, database: str, user: str):
    """
    Restore a pre-deploy backup over the database (a rollback the operator asked for).

    + release_dir: the release whose compose project runs postgres
    + backup: the dump's path on the host
    + database, user: the database to recreate and its owner
    """
    for argv in database_restore(release_dir, backup, database, user):
        yield shell(argv)
