"""Decide whether a rollback can run, and on what data. Pure: facts in, decision out.

Migrations are forward-only. A release may run on a newer schema when every
migration it does not know was marked ``-- migrate:backward-compatible`` (decided
by the migration runner's plan, restobot/remote/migrate/plan.py, from the release's
manifest and the ledger);
otherwise the rollback is refused unless the operator asks to restore the
backup taken before those migrations ran (rows written since are lost).
"""

from __future__ import annotations

from dataclasses import dataclass

from restobot.facts.deploy import DatabaseUnreadable, LedgerRow, PreDeployDump
from restobot.release_archive import MANIFEST, ReleaseManifest
from restobot.remote.migrate.plan import make_plan


class RollbackRefused(ValueError):
    """The rollback cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback does.

    + identifier: the release id to serve again
    + manifest: that release's manifest, read from the host
    + restore: the backup to restore first; None keeps the data as it is
    + newer_compatible: applied migrations the release does not know, all marked backward-compatible
    """

    identifier: str
    manifest: ReleaseManifest
    restore: PreDeployDump | None = None
    newer_compatible: tuple[str, ...] = ()


def resolve_release(asked: str | None, releases_newest_first: list[str]) -> str:
    """The release id for ``asked`` (an id, or a name whose newest id wins)."""
    if not asked:
        raise RollbackRefused(
            "name the release to roll back to: pyinfra INVENTORY rollback.py --data release=NAME "
            f"(on the host: {', '.join(releases_newest_first) or 'none'})"
        )
    for identifier in releases_newest_first:
        if identifier == asked or identifier.rsplit("-", 1)[0] == asked:
            return identifier
    raise RollbackRefused(
        f"release {asked} is not on the host (there: {', '.join(releases_newest_first) or 'none'}); "
        "nothing was changed. Deploy it instead: git checkout the tag, then run deploy.py."
    )


def plan_rollback(
    identifier: str,
    manifest: ReleaseManifest | None,
    ledger: tuple[LedgerRow, ...] | DatabaseUnreadable | None,
    backups: list[PreDeployDump],
    restore_backup: bool,
) -> RollbackPlan:
    """Decide the rollback to ``identifier`` from its manifest (None: it has none on the host),
    the database's ledger (None: no database; unreadable: refused) and the pre-deploy backups, newest first."""
    if manifest is None:
        raise RollbackRefused(
            f"release {identifier} has no {MANIFEST} on the host; nothing was changed. "
            "Deploy it instead: git checkout the tag, then run deploy.py."
        )
    if isinstance(ledger, DatabaseUnreadable):
        raise RollbackRefused(
            f"rollback to {identifier} refused: the database exists but could not be read, so whether "
            f"{identifier} can run on it cannot be decided: {ledger.error}\nNothing was changed. "
            "Wait until the postgres container is running and healthy (docker ps -a), then roll back again."
        )
    # The migration runner's own plan decides what the release does not know and what it tolerates.
    schema = make_plan(manifest.migrations, {row.filename: row for row in ledger or ()})
    known = {item.filename for item in manifest.migrations}
    incompatible = [row.filename for row in schema.unknown]
    compatible = tuple(row.filename for row in schema.tolerated)
    if not incompatible:
        return RollbackPlan(identifier, manifest, None, compatible)
    candidates = [b for b in backups if set(b.applied_migrations) == known]
    if not restore_backup:
        hint = (
            f"roll back with --data restore_backup=true to restore {candidates[0].path} "
            f"(taken before {candidates[0].before_release} migrated; rows written since are lost)"
            if candidates else "no backup on the host matches its schema"
        )
        raise RollbackRefused(
            f"rollback to {identifier} refused: the database has migrations it does not know and that are "
            f"not marked backward-compatible: {', '.join(incompatible)}. Nothing was changed. Either deploy "
            f"a release that has them, or {hint}."
        )
    if not candidates:
        raise RollbackRefused(
            f"rollback to {identifier} with restore_backup refused: no backup on the host was taken with "
            f"exactly its migrations ({', '.join(sorted(known))}). Nothing was changed."
        )
    return RollbackPlan(identifier, manifest, candidates[0], compatible)
