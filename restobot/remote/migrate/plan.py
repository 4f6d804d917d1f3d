"""The plan: the release's migration files against the database's ledger. Pure: no database.

``make_plan`` is the one place that decides which files are pending, which
applied files changed, which applied files the release does not know, and
which of those are tolerated because they were marked
``-- migrate:backward-compatible``. The runner refuses or applies from it; the
operator's side asks it the same questions (restobot/rollback_plan.py: may an
older release run on this schema? restobot/operations/database.py: is any
migration pending?), from a release manifest and the ledger read over SSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Protocol, Sequence

from restobot.remote.migrate.lexer import BACKWARD_COMPATIBLE_MARKER, version_of

__all__ = ["Applied", "LedgerEntry", "Plan", "ReleaseFile", "make_plan"]


class ReleaseFile(Protocol):
    """A migration file of a release, as the plan reads it: a ``Migration`` read from disk, or a
    release manifest's ``MigrationInfo``."""

    @property
    def filename(self) -> str: ...

    @property
    def checksum(self) -> str: ...


class LedgerEntry(Protocol):
    """A row of the ledger, as the plan reads it: an ``Applied`` read by the runner, or the
    deploy's ``LedgerRow`` fact."""

    @property
    def filename(self) -> str: ...

    @property
    def checksum(self) -> str: ...

    @property
    def backward_compatible(self) -> bool: ...


@dataclass(frozen=True)
class Applied:
    """A row of ``schema_migrations``."""

    filename: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    backward_compatible: bool = False

    @property
    def version(self) -> int:
        return version_of(self.filename)


def _fmt_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Plan:
    """What a run would do, and what it must refuse.

    The runner's plans hold ``Migration`` and ``Applied``; ``problems`` words
    its refusals with their dates, so it is the runner's alone.
    """

    migrations: tuple[ReleaseFile, ...]
    applied: Mapping[str, LedgerEntry]
    pending: tuple[ReleaseFile, ...]
    changed: tuple[tuple[ReleaseFile, LedgerEntry], ...]
    unknown: tuple[LedgerEntry, ...]
    out_of_order: tuple[tuple[ReleaseFile, LedgerEntry], ...]  # (pending file, newest applied file)
    # Applied files this release does not know but that were marked backward-compatible.
    tolerated: tuple[LedgerEntry, ...] = ()

    def problems(self, allow_out_of_order: bool = False) -> list[str]:
        """The reasons to refuse this run, one paragraph each; empty when it may run."""
        problems: list[str] = []
        if self.unknown:
            names = ", ".join(f"{a.filename} (applied {_fmt_time(a.applied_at)})" for a in self.unknown)
            problems.append(
                f"the database has migrations this release does not know: {names}. This looks like a "
                "rollback to an older release: its schema is older than the database's, so nothing was "
                "touched. Deploy a release that contains these files, or restore the database backup "
                f"taken before they were applied. (Files marked '-- {BACKWARD_COMPATIBLE_MARKER}' would "
                "be tolerated.)"
            )
        for m, a in self.changed:
            problems.append(
                f"{m.filename} was applied on {_fmt_time(a.applied_at)} with sha256 {a.checksum[:12]}..., "
                f"but the file now has sha256 {m.checksum[:12]}...: applied migrations must not be edited. "
                "Restore the file as it was (e.g. git checkout) and put the change in a new migration file."
            )
        if not allow_out_of_order:
            for m, newest in self.out_of_order:
                problems.append(
                    f"{m.filename} (version {m.filename.split('_', 1)[0]}) is pending but {newest.filename} "
                    f"(version {newest.filename.split('_', 1)[0]}) is already applied: an older version "
                    "added after a newer one. Rename it with a version above "
                    f"{newest.filename.split('_', 1)[0]}, or run with --allow-out-of-order."
                )
        return problems


def make_plan(migrations: Sequence[ReleaseFile], applied: Mapping[str, LedgerEntry]) -> Plan:
    """Compare the release's files (in order) with the ledger (by file name)."""
    known = {m.filename: m for m in migrations}
    pending = tuple(m for m in migrations if m.filename not in applied)
    changed = tuple(
        (m, applied[m.filename])
        for m in migrations
        if m.filename in applied and applied[m.filename].checksum != m.checksum
    )
    unknown = tuple(a for name, a in sorted(applied.items()) if name not in known and not a.backward_compatible)
    tolerated = tuple(a for name, a in sorted(applied.items()) if name not in known and a.backward_compatible)
    newest = max(applied.values(), key=lambda a: (version_of(a.filename), a.filename), default=None)
    out_of_order = tuple(
        (m, newest) for m in pending
        if newest is not None and version_of(m.filename) < version_of(newest.filename)
    )
    return Plan(tuple(migrations), dict(applied), pending, changed, unknown, out_of_order, tolerated)
