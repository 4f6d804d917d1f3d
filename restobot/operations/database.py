"""The database: a backup before any migration, then the release's migrations; a restore
(asked by a rollback) that keeps the database it replaces in a safety dump.

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

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.facts.files import File

from restobot.commands import (
    POSTGRES_CONTAINER,
    HostLayout,
    api_client_upsert,
    compose_run_migrations,
    compose_up,
    database_replaced,
    dump_contents,
    file_age_seconds,
    make_directory,
    n8n_started_again,
    n8n_stopped,
    output_kept,
    predeploy_backup,
    remove_file,
    restore_from_file,
    row_counts,
    safety_dump,
    shell,
    shell_text,
)
from restobot.facts.deploy import (
    ApiClient,
    ApiClientRow,
    AppliedMigrations,
    DatabaseUnreadable,
    LedgerRow,
    SafetyDumps,
)
from restobot.operations import lock
from restobot.operations.release import failure
from restobot.operations.stack import StepFailed, run_step
from restobot.release_archive import MigrationInfo
from restobot.remote.migrate.plan import make_plan

CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
TOKEN_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCOPE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,62}$")
KEEP_SAFETY_DUMPS = 3


def pending_migrations(release_migrations: Sequence[MigrationInfo], ledger: tuple[LedgerRow, ...] | None) -> list[str]:
    """The release's migrations the ledger lacks, in order (the migration runner's own plan)."""
    plan = make_plan(release_migrations, {row.filename: row for row in ledger or ()})
    return [item.filename for item in plan.pending]


def unreadable_database(ledger: DatabaseUnreadable) -> str:
    """Why the deploy stops on a database that exists but did not answer (read as "no database
    yet", it would skip the backup and migrate anyway), and the way out."""
    return (
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
    ledger = host.get_fact(AppliedMigrations)
    if isinstance(ledger, DatabaseUnreadable):
        yield failure(unreadable_database(ledger))
        return
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
def schema_migrated(release_dir: str, release_migrations: Sequence[MigrationInfo], log: str | None = None):
    """
    Ensure every migration of the release is applied, running db-migrate once if any is pending.

    A database that exists but cannot be read is refused (never migrated as if it were new).

    + release_dir: the release whose db-migrate image and migrations apply
    + release_migrations: the release manifest's migrations
    + log: keep what the runner printed in this file (``HostLayout.migration_log``; ``resto STAGE migrations log``)

    **Example:**

    .. code:: python

        schema_migrated(name="Ensure every migration is applied", release_dir=release_dir,
                        release_migrations=built.manifest.migrations, log=HostLayout().migration_log(identifier))
    """
    ledger = host.get_fact(AppliedMigrations)
    if isinstance(ledger, DatabaseUnreadable):
        yield failure(unreadable_database(ledger))
        return
    pending = pending_migrations(release_migrations, ledger)
    if ledger is not None and not pending:
        host.noop(f"all {len(release_migrations)} migrations applied")
        return
    yield shell(compose_up(release_dir, "postgres", "redis"))
    if log is None:
        yield shell(compose_run_migrations(release_dir, "apply"))
        return
    yield shell(make_directory(log.rsplit("/", 1)[0], parents=True))
    yield shell(output_kept(log, compose_run_migrations(release_dir, "apply")))


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


def describe_age(seconds: int) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``12 min``, ``40 s``."""
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{secs} s"


def dump_created(listing: list[str]) -> str:
    """When ``pg_restore --list`` says the archive was made (``2026-12-01 10:27:01 UTC``)."""
    for line in listing:
        if line.startswith("; Archive created at "):
            return line.removeprefix("; Archive created at ").strip()
    return "at an unknown time"


def counted_rows(target, release_dir: str) -> str:
    """``inbound_messages 12, outbound_messages 9`` now, or why they could not be counted."""
    try:
        lines = run_step(target, row_counts(release_dir), "counting the rows")
    except StepFailed as failure:
        return f"unknown ({failure})"
    return ", ".join(" ".join(line.split("\t")) for line in lines if "\t" in line)


def put_back_by_hand(release_dir: str, safety: str, database: str) -> str:
    """The way out when a failed restore could not put its safety dump back either."""
    return (
        f"n8n is left stopped (on an empty database it would create a new schema). Recreate the database "
        f"{database}, restore {safety} by hand ({shell_text(restore_from_file(release_dir, safety))}), then "
        f"{shell_text(n8n_started_again())}."
    )


def safety_dump_put_back(target, release_dir: str, backup: str, safety: str, database: str, user: str) -> bool:
    """After a failed restore: the database as it was, from the safety dump, and n8n started again.
    Always False (the restore failed); the message says in what state it leaves the host."""
    try:
        for argv in database_replaced(release_dir, safety, database, user):
            run_step(target, argv, f"putting back the safety dump {safety}")
        run_step(target, n8n_started_again(), "starting n8n again")
    except StepFailed as failure:
        target.log_styled(
            f"the restore of {backup} failed, and putting back the safety dump {safety} failed too:\n{failure}\n"
            f"{put_back_by_hand(release_dir, safety, database)}",
            fg="red", log_func=logger.error,
        )
        return False
    target.log_styled(
        f"the restore of {backup} failed; the database was put back from the safety dump {safety} "
        "and n8n started again: the data is as it was before the rollback, which stops here.",
        fg="red", log_func=logger.error,
    )
    return False


def restore_with_safety_dump(state, host, layout: HostLayout, release_dir: str, backup: str, safety: str,
                             database: str, user: str) -> bool:
    """Check the dump, say what is at stake, keep the database in a safety dump, then replace it;
    on failure put the safety dump back. Runs at execution time: each step depends on the last."""
    try:
        listing = run_step(host, dump_contents(release_dir, backup), f"pg_restore --list of {backup}")
        age = int(run_step(host, file_age_seconds(backup), f"the age of {backup}")[0])
    except (StepFailed, IndexError, ValueError) as failure:
        host.log_styled(f"{backup} cannot be restored (nothing was changed): {failure}", fg="red",
                        log_func=logger.error)
        return False
    before = counted_rows(host, release_dir)
    host.log_styled(
        f"restoring {backup}: made {dump_created(listing)}, {describe_age(age)} ago. The database holds now: "
        f"{before}; rows written since the dump are lost (kept in the safety dump {safety}).",
        fg="yellow", log_func=logger.warning,
    )
    try:
        run_step(host, n8n_stopped(release_dir), "stopping n8n")
        for argv in safety_dump(layout, safety):
            run_step(host, argv, f"the safety dump {safety}")
    except StepFailed as failure:
        started = host.run_shell_command(shell(n8n_started_again()), print_output=False, print_input=False)[0]
        host.log_styled(f"{failure}\nNothing was dropped; n8n was {'started again' if started else 'NOT started'}.",
                        fg="red", log_func=logger.error)
        return False
    try:
        for argv in database_replaced(release_dir, backup, database, user):
            run_step(host, argv, f"the restore of {backup}")
    except StepFailed as failure:
        host.log_styled(str(failure), fg="red", log_func=logger.error)
        return safety_dump_put_back(host, release_dir, backup, safety, database, user)
    host.log_styled(
        f"{backup} restored: {counted_rows(host, release_dir)} (were {before}). The database as it was is in "
        f"{safety}; the newest {KEEP_SAFETY_DUMPS} safety dumps are kept.",
        fg="yellow", log_func=logger.warning,
    )
    return True


def safety_stamp() -> str:
    """``2025-01-02T03:04:05Z`` -> ``20250102T030405Z``: a file name without colons."""
    return lock.now().replace("-", "").replace(":", "")


@operation(is_idempotent=False)
def database_restored(layout: HostLayout, release_dir: str, backup: str, database: str, user: str):
    """
    Restore a pre-deploy backup over the database (a rollback the operator asked for).

    The dump is checked (``pg_restore --list``) before anything is dropped; its age and the rows
    at stake are printed; the database it replaces is kept in a safety dump (0600), put back if the
    restore fails (n8n started again, the operation fails naming it). The newest
    ``KEEP_SAFETY_DUMPS`` safety dumps are kept.

    + layout: where backups live
    + release_dir: the release whose compose project runs postgres
    + backup: the dump's path on the host
    + database, user: the database to recreate and its owner

    **Example:**

    .. code:: python

        database_restored(name="Restore the backup taken before v2", layout=HostLayout(),
                          release_dir=release_dir, backup="/opt/resto/backups/before-v2.0.0-1a2b3c4d.dump",
                          database="n8n", user="n8n")
    """
    older = host.get_fact(SafetyDumps, base_dir=layout.base_dir)
    safety = layout.safety_dump(safety_stamp())
    yield FunctionCommand(restore_with_safety_dump, (layout, release_dir, backup, safety, database, user), {})
    for path in older[KEEP_SAFETY_DUMPS - 1:]:
        yield shell(remove_file(path))
