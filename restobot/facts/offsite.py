"""What the off-site backup repository holds, as pgBackRest in the postgres container reports it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyinfra.api import FactBase

from restobot.commands import pgbackrest, shell_text

# pgBackRest's `info` status codes (src/command/info/info.c): 0 ok, 1 missing stanza path, 2 no valid
# backups, 3 missing stanza data, 4 different cipher type, 5 database mismatch, 6 requested backup not
# found, 99 other.
STATUS_OK = 0
STATUS_NO_BACKUP = 2


@dataclass(frozen=True)
class OffsiteRepository:
    """One stanza in the off-site repository.

    + status_code: pgBackRest's (0 ok, 2 no valid backups: the stanza exists; others: it does not or is broken)
    + status_message: its text ("ok", "missing stanza path", "no valid backups"...)
    + full_backups: how many full backups the repository holds
    + wal_max: the newest WAL segment archived ("" when none)
    """

    status_code: int
    status_message: str
    full_backups: int
    wal_max: str

    @property
    def stanza_exists(self) -> bool:
        return self.status_code in (STATUS_OK, STATUS_NO_BACKUP)


class OffsiteBackupInfo(FactBase[OffsiteRepository | None]):
    """``pgbackrest info`` of ``stanza``, run in the postgres container.

    None: the container is not running, has no pgBackRest, or the repository could not be read
    (unreachable, wrong key): the command failed or printed no stanza.
    """

    def command(self, stanza: str) -> str:
        return shell_text(pgbackrest(stanza, "--output=json", "info")) + " 2>/dev/null || true"

    def process(self, output: list[str]) -> OffsiteRepository | None:
        try:
            # Not strict: pgBackRest's errors may quote raw control characters (see cli.parse_json_document).
            stanzas = json.loads("\n".join(output), strict=False)
        except json.JSONDecodeError:
            return None
        if not isinstance(stanzas, list) or not stanzas:
            return None
        stanza = stanzas[0]
        backups = stanza.get("backup") or []
        wal_max = max((archive.get("max") or "" for archive in stanza.get("archive") or []), default="")
        return OffsiteRepository(
            status_code=int(stanza["status"]["code"]),
            status_message=str(stanza["status"]["message"]),
            full_backups=sum(1 for backup in backups if backup.get("type") == "full"),
            wal_max=wal_max,
        )

    def default(self) -> None:
        return None
