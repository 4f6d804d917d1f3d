"""Restoring the live database from the off-site repository: to the end of the archive, or to a time.

What is decided before anything changes (pure, unit-tested by value): which point the operator asked
for, whether the repository can reach it, and how pgBackRest is told. The command that drives the
restore is ``resto STAGE backup offsite restore`` (restobot/cli.py); the host commands it runs are
builders of restobot/commands.py (``offsite_restore`` and its neighbours).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

LATEST = "latest"


class TargetRefused(ValueError):
    """The point asked for cannot be restored; the message names why and what can."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a restore stops: ``at`` (UTC), or None for the end of the archive."""

    at: datetime | None

    @property
    def pgbackrest_options(self) -> list[str]:
        """pgBackRest's restore options: a time target promotes there; the end of the archive needs none."""
        if self.at is None:
            return []
        return ["--type=time", f"--target={self.at.strftime('%Y-%m-%d %H:%M:%S+00')}", "--target-action=promote"]

    def describe(self) -> str:
        return "the end of the archive" if self.at is None else self.at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_target(text: str, now: datetime) -> Target:
    """``latest`` or an ISO 8601 time with its offset (``2026-12-02T08:40:00Z``, ``...+01:00``), in the past.

    A time without an offset is refused: the VPS, the operator and PostgreSQL may each read it in
    another zone, and the restore would stop elsewhere than meant."""
    if text == LATEST:
        return Target(None)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TargetRefused(f"'{text}' is neither 'latest' nor an ISO 8601 time such as 2026-12-02T08:40:00Z") from None
    if at.tzinfo is None:
        raise TargetRefused(f"'{text}' has no time zone: write it in UTC with a Z (2026-12-02T08:40:00Z) or with "
                            "its offset (+01:00)")
    at = at.astimezone(timezone.utc).replace(microsecond=0)
    if at >= now:
        raise TargetRefused(f"{at:%Y-%m-%dT%H:%M:%SZ} is not in the past (now {now:%Y-%m-%dT%H:%M:%SZ}): "
                            "to restore everything archived, use 'latest'")
    return Target(at)


WRONG_PASSPHRASE = (  # nosec B105 # a message naming the setting, not a password
    "its files do not decrypt with this stage's OFFSITE_BACKUP_PASSPHRASE: the passphrase differs from the one "
    "they were written with (compare it with the copy you keep off the VPS, set it in secrets/STAGE.env, deploy "
    "again), or the files are damaged"
)
# pgBackRest reading an encrypted info file with another passphrase: the bytes it decrypts are noise.
UNDECRYPTABLE = re.compile(r"unable to load info file.*FormatError", re.DOTALL)


def repository_problem(stanza: Mapping[str, Any]) -> str | None:
    """Why ``pgbackrest --output=json info``'s stanza is not ok, readable (None when it is ok) (pure).

    pgBackRest's stanza status is a code and a word ("other"); the repository's own status holds the
    error, which for a wrong passphrase is a FormatError quoting undecrypted bytes: it is named instead."""
    if (stanza.get("status") or {}).get("code") == 0:
        return None
    messages = [str((repo.get("status") or {}).get("message") or "") for repo in stanza.get("repo") or []
                if (repo.get("status") or {}).get("code") not in (0, None)]
    text = " ".join(messages) or str((stanza.get("status") or {}).get("message") or "unknown")
    if stanza.get("cipher", "none") != "none" and UNDECRYPTABLE.search(text):
        return WRONG_PASSPHRASE
    printable = "".join(char if char.isprintable() else " " for char in text.splitlines()[0])
    return re.sub(r"\s+", " ", printable).strip()[:300]


def earliest_restorable(summary: Mapping[str, Any]) -> datetime | None:
    """When the oldest backup of ``cli.offsite_summary`` ended: no earlier point can be restored; None
    without a backup."""
    stops = [datetime.fromisoformat(b["stopped"].replace("Z", "+00:00")) for b in summary.get("backups") or []]
    return min(stops, default=None)


def check_reachable(target: Target, summary: Mapping[str, Any]) -> None:
    """Refuse a repository that cannot serve the restore, or a time before its oldest backup ended."""
    if summary.get("status") != "ok":
        raise TargetRefused(f"the off-site repository is not readable: {summary.get('problem') or summary.get('status')}"
                            " (see resto STAGE backup offsite info)")
    earliest = earliest_restorable(summary)
    if earliest is None:
        raise TargetRefused("the off-site repository holds no backup yet: nothing to restore")
    if target.at is not None and target.at < earliest:
        raise TargetRefused(f"{target.describe()} is before the oldest backup of the repository ended "
                            f"({earliest:%Y-%m-%dT%H:%M:%SZ}): restore to that time or later")


def what_is_lost(target: Target, rows_now: Mapping[str, int], summary: Mapping[str, Any]) -> list[str]:
    """The lines shown before the confirmation."""
    lines = [f"restore the live database from the off-site repository ({summary.get('stanza')}) "
             f"to {target.describe()}:"]
    lines += [f"  {table}: {count} rows now" for table, count in rows_now.items()]
    if target.at is None:
        lines.append("  what was not archived yet (at most the archive timeout's worth) is lost")
    else:
        lines.append(f"  every row written after {target.describe()} is lost")
    lines.append("  (all of it stays in the safety dump taken first)")
    return lines


def recovery_finished(answer: Sequence[str]) -> bool:
    """``SELECT pg_is_in_recovery()``'s answer: PostgreSQL has reached the point and promoted."""
    return [line.strip() for line in answer if line.strip()] == ["f"]
