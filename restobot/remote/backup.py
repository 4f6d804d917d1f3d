"""The scheduled backups' helper that runs ON THE VPS: retention and restore checks.

Shipped in the release (``restobot/remote/backup.py``), copied from the current
release to ``{base_dir}/bin/restobot_backup.py`` by
``restobot.operations.backup.backups_scheduled`` (so a rollback keeps it), and run
there with the host's ``python3`` (provisioning installs it) as a lone file:
standard library only, no import from the rest of ``restobot``, Python 3.9+
(Debian 11 / Ubuntu 22.04 and newer).
The same functions are unit-tested on the operator's side by exact value.

``bin/backup`` (templates/backup/backup.sh.j2) writes, per run, under the
scheduled directory::

    resto-20261128T031702Z.dump          pg_dump -Fc (mode 0600)
    resto-20261128T031702Z.globals.sql   pg_dumpall --globals-only (roles)
    resto-20261128T031702Z.json          metadata, written last (a dump without it is incomplete):
                                         created_at, size, sha256 and the row counts
                                         of KEY_TABLES taken in the dump's own snapshot
    last-success                         "<ISO time> <dump path> <size in bytes>"

then calls ``prune``. ``bin/backup-verify [DUMP]`` calls ``verify`` (the newest complete
backup, or DUMP, one of the directory's complete backups).

    python3 restobot_backup.py prune  --dir DIR --daily 7 --weekly 4 --monthly 6
    python3 restobot_backup.py verify --dir DIR --container resto-postgres-1 [DUMP]

``bin/offsite-backup`` (templates/backup/offsite-backup.sh.j2) asks which pgBackRest backup
tonight's is, from ``pgbackrest --output=json info`` on stdin: ``full`` when the newest full
backup is ``--full-every-days`` old or more (or there is none), ``incr`` otherwise.

    pgbackrest --stanza=S --output=json info | python3 restobot_backup.py offsite-type --full-every-days 7

``bin/offsite-restore-drill`` (templates/backup/offsite-restore-drill.sh.j2) calls ``drill``: the key
tables' live counts, ``pgbackrest check`` (everything counted is archived by then), the repository's
latest point restored into a scratch instance (the command after ``--``, a one-off container), and
the restore must hold at least the rows counted; one JSON object is printed, exit 1 unless ok.

    python3 restobot_backup.py drill --container resto-postgres-1 --stanza restobot --name DRILL \
        --seconds 3600 --disk-percent 90 -- docker compose ... run ... postgres gosu postgres sh -c ...
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

KEY_TABLES = ("inbound_messages", "outbound_messages", "security_events", "api_clients", "schema_migrations")
"""The tables whose row counts a restore must reproduce."""
SCRATCH_DATABASE = "restore_check"
DUMP_PREFIX = "resto-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
DUMP_NAME = re.compile(r"^resto-(\d{8}T\d{6}Z)\.dump$")
SUFFIXES = (".dump", ".globals.sql", ".json")
"""The files of one backup, removed together by ``prune``."""
PSQL = 'exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$0" -c "$1"'
PG_RESTORE = 'exec pg_restore --exit-on-error --no-owner --no-privileges -U "$POSTGRES_USER" -d "$0"'
COMMAND_TIMEOUT = 3600


# --- pure builders -------------------------------------------------------------------


def count_sql(tables: Sequence[str] = KEY_TABLES) -> str:
    """One query returning ``{"table": rows, ...}`` as JSON text, for the tables that exist.

    Counted in the caller's transaction (the backup runs it in the snapshot it hands to
    pg_dump), so the counts describe exactly what the dump holds. A missing table is left
    out rather than failing: the restore comparison then reports it as absent.
    """
    for table in tables:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
            raise ValueError(f"count_sql: table name {table!r} is not a plain lower-case identifier")
    names = ", ".join(f"'{table}'" for table in tables)
    return (
        "SELECT coalesce(json_object_agg(t, (xpath('/row/c/text()', query_to_xml("
        "format('SELECT count(*) AS c FROM %I', t), false, true, '')))[1]::text::bigint), '{}')::text AS counts "
        f"FROM unnest(ARRAY[{names}]::text[]) AS t WHERE to_regclass(t) IS NOT NULL"
    )


def dump_stamp(name: str) -> datetime.datetime | None:
    """The UTC time in a dump's file name (``resto-20261128T031702Z.dump``); None for other names."""
    match = DUMP_NAME.match(name)
    if not match:
        return None
    return datetime.datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def dump_name(when: datetime.datetime) -> str:
    return f"{DUMP_PREFIX}{when.astimezone(datetime.timezone.utc).strftime(STAMP_FORMAT)}.dump"


def _bucket_keys(when: datetime.datetime) -> dict[str, tuple[int, ...]]:
    iso = when.isocalendar()
    return {
        "daily": (when.year, when.month, when.day),
        "weekly": (iso[0], iso[1]),
        "monthly": (when.year, when.month),
    }


def kept_stamps(stamps: Iterable[datetime.datetime], daily: int, weekly: int,
                monthly: int) -> list[datetime.datetime]:
    """The backups to keep, newest first (pure: tested by value).

    Each rule is applied on its own to every backup (as restic's ``forget`` does):
    walking from the newest, the first backup of each calendar day (UTC) is kept until
    ``daily`` days are covered, the first of each ISO week until ``weekly`` weeks are,
    the first of each month until ``monthly`` months are. A backup kept by one rule
    still counts for the others. The newest backup is always kept.

    + stamps: when each backup was taken (UTC)
    + daily, weekly, monthly: how many days, weeks and months keep a backup
    """
    ordered = sorted(set(stamps), reverse=True)
    limits = {"daily": daily, "weekly": weekly, "monthly": monthly}
    seen: dict[str, list[tuple[int, ...]]] = {rule: [] for rule in limits}
    kept: list[datetime.datetime] = []
    for index, stamp in enumerate(ordered):
        keep = index == 0
        for rule, key in _bucket_keys(stamp).items():
            buckets = seen[rule]
            if key not in buckets and len(buckets) < limits[rule]:
                buckets.append(key)
                keep = True
        if keep:
            kept.append(stamp)
    return kept


def verify_report(dump: str, age_seconds: float, restore_seconds: float, expected: dict[str, int],
                  restored: dict[str, int], tables: Sequence[str] = KEY_TABLES,
                  error: str | None = None) -> dict:
    """The JSON object ``verify`` prints (pure: tested by value).

    ``ok`` only when there is no error and every key table has the recorded count in
    the restore; a table absent on either side is ``null`` there and fails the check.
    """
    compared = {table: [expected.get(table), restored.get(table)] for table in tables}
    ok = error is None and all(pair[0] is not None and pair[0] == pair[1] for pair in compared.values())
    report = {
        "ok": ok,
        "dump": dump,
        "age_seconds": round(age_seconds),
        "restore_seconds": round(restore_seconds, 3),
        "tables": compared,
    }
    if error is not None:
        report["error"] = error
    return report


def psql_argv(container: str, database: str, sql: str) -> list[str]:
    """Run one statement as the container's POSTGRES_USER in ``database`` (unaligned tuples)."""
    return ["docker", "exec", container, "sh", "-c", PSQL, database, sql]


def pg_restore_argv(container: str, database: str) -> list[str]:
    """Restore a custom-format dump read from stdin into ``database``, stopping at the first error."""
    return ["docker", "exec", "-i", container, "sh", "-c", PG_RESTORE, database]


def scratch_argvs(container: str, live_database: str, scratch: str) -> tuple[list[str], list[str]]:
    """(drop-and-create, drop) of the scratch database, run from the live one."""
    drop = psql_argv(container, live_database, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    create = psql_argv(container, live_database, f'CREATE DATABASE "{scratch}"')
    return drop, create


# --- on the host ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NightlyBackup:
    stamp: datetime.datetime
    dump: Path

    def files(self) -> list[Path]:
        base = str(self.dump)[: -len(".dump")]
        return [Path(base + suffix) for suffix in SUFFIXES]

    @property
    def metadata(self) -> Path:
        return Path(str(self.dump)[: -len(".dump")] + ".json")


def complete_backups(directory: Path) -> list[NightlyBackup]:
    """The backups of ``directory`` whose metadata was written (complete ones), newest first."""
    backups = []
    for path in directory.glob(f"{DUMP_PREFIX}*.dump"):
        stamp = dump_stamp(path.name)
        if stamp is not None and NightlyBackup(stamp, path).metadata.is_file():
            backups.append(NightlyBackup(stamp, path))
    return sorted(backups, key=lambda backup: backup.stamp, reverse=True)


def prune(directory: Path, daily: int, weekly: int, monthly: int, out=sys.stdout) -> list[Path]:
    """Remove the backups ``kept_stamps`` does not keep; return the removed files."""
    backups = complete_backups(directory)
    kept = set(kept_stamps([backup.stamp for backup in backups], daily, weekly, monthly))
    removed = []
    for backup in backups:
        if backup.stamp in kept:
            continue
        for path in backup.files():
            if path.exists():
                path.unlink()
                removed.append(path)
                print(f"removed {path}", file=out)
    return removed


def _run(argv: list[str], stdin=None, timeout: float = COMMAND_TIMEOUT) -> str:
    proc = subprocess.run(argv, stdin=stdin, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chosen_backup(directory: Path, dump: Path | None) -> NightlyBackup | str:
    """The backup ``verify`` restores: the newest complete one, or ``dump`` when it is one of
    ``directory``'s complete backups (named by its path or its file name); otherwise the error."""
    backups = complete_backups(directory)
    if not backups:
        return f"no complete backup in {directory}: run bin/backup first"
    if dump is None:
        return backups[0]
    for backup in backups:
        if dump.name == backup.dump.name and (len(dump.parts) == 1 or dump.parent.resolve() == directory.resolve()):
            return backup
    return (f"{dump} is not a complete backup of {directory} (a resto-<time>.dump with its .json); "
            f"list them with: ls {directory}")


def verify(directory: Path, container: str, scratch: str = SCRATCH_DATABASE,
           tables: Sequence[str] = KEY_TABLES, now: float | None = None, dump: Path | None = None) -> dict:
    """Restore the newest complete backup (or ``dump``, see ``chosen_backup``) into ``scratch`` and
    compare the key tables' counts with those recorded when it was taken.

    The scratch database is dropped afterwards, whatever happened.
    """
    chosen = chosen_backup(directory, dump)
    if isinstance(chosen, str):
        return verify_report(str(dump or ""), 0, 0, {}, {}, tables, error=chosen)
    newest = chosen
    age = (now if now is not None else time.time()) - newest.stamp.timestamp()
    try:
        metadata = json.loads(newest.metadata.read_text())
        expected = {str(k): int(v) for k, v in (metadata.get("tables") or {}).items()}
    except (OSError, ValueError, AttributeError) as error:
        return verify_report(str(newest.dump), age, 0, {}, {}, tables,
                             error=f"{newest.metadata}: unreadable metadata ({error}); take a new backup")
    if metadata.get("sha256") and _sha256(newest.dump) != metadata["sha256"]:
        return verify_report(str(newest.dump), age, 0, expected, {}, tables,
                             error=f"{newest.dump}: sha256 differs from {newest.metadata} (the file changed "
                                   "after the backup); take a new backup and look at the disk")
    live = _run(["docker", "exec", container, "sh", "-c", 'printf %s "$POSTGRES_DB"']).strip()
    drop, create = scratch_argvs(container, live, scratch)
    started = time.monotonic()
    restored: dict[str, int] = {}
    error = None
    try:
        _run(drop)
        _run(create)
        with newest.dump.open("rb") as dump:
            proc = subprocess.run(pg_restore_argv(container, scratch), stdin=dump, check=False, capture_output=True,
                                  timeout=COMMAND_TIMEOUT)
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()[-600:]
            raise RuntimeError(f"pg_restore of {newest.dump} into {scratch} failed: {detail}")
        restored = {str(k): int(v) for k, v in json.loads(_run(psql_argv(container, scratch, count_sql(tables)))).items()}
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as failure:
        error = str(failure)
    finally:
        restore_seconds = time.monotonic() - started
        try:
            _run(drop)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as failure:
            error = error or f"could not drop {scratch}: {failure}"
    return verify_report(str(newest.dump), age, restore_seconds, expected, restored, tables, error)


# A nightly run starts a few minutes later or earlier from night to night: a full backup
# taken this much short of the interval is due again (else it would wait one more night).
FULL_DUE_SLACK_SECONDS = 3600
FOREIGN_REPOSITORY = 3  # offsite-owner's exit status: another database's repository
FOREIGN_REPOSITORY_SAYS = "the off-site repository holds the backups of another database"


def newest_full_stop(info: object) -> int | None:
    """When the newest full backup of ``pgbackrest --output=json info``'s first stanza ended (epoch
    seconds); None when it holds none or does not read as pgBackRest's answer (pure)."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        return None
    stops = [backup["timestamp"]["stop"] for backup in info[0].get("backup") or []
             if isinstance(backup, dict) and backup.get("type") == "full"
             and isinstance(backup.get("timestamp"), dict) and isinstance(backup["timestamp"].get("stop"), int)]
    return max(stops, default=None)


def offsite_type(info: object, full_every_days: int, now: float) -> str:
    """``full`` when the newest full backup is ``full_every_days`` old or more, or there is none;
    else ``incr`` (changes since the last backup of any type) (pure)."""
    stop = newest_full_stop(info)
    if stop is None or now - stop >= full_every_days * 86400 - FULL_DUE_SLACK_SECONDS:
        return "full"
    return "incr"


def repository_system_id(info: object) -> int | None:
    """The system identifier of the database ``pgbackrest --output=json info``'s first stanza backs up
    now (its newest ``db`` entry); None when there is no stanza yet (pure)."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        return None
    databases = [db for db in info[0].get("db") or [] if isinstance(db, dict) and isinstance(db.get("system-id"), int)]
    if not databases:
        return None
    return max(databases, key=lambda db: db.get("id", 0))["system-id"]


def foreign_repository(info: object, system_id: int, stage: str) -> str | None:
    """Why the repository is not this database's to write to, or None when it is (or holds no stanza
    yet): pgBackRest refuses to archive into another cluster's stanza (pure)."""
    theirs = repository_system_id(info)
    if theirs is None or theirs == system_id:
        return None
    return (f"{FOREIGN_REPOSITORY_SAYS} (system identifier {theirs}; this "
            f"host's is {system_id}). A VPS rebuilt after a loss: restore them with `resto {stage} backup offsite "
            f"restore`, then deploy again. A new stack: give it a repository of its own (offsite_backup.path or "
            f"offsite_backup.stanza). Nothing was written to the repository.")


# --- the restore drill ------------------------------------------------------------------

# The scratch copy takes the backup's size and room for the WAL it replays.
DRILL_ROOM = 1.2


def drill_sql(tables: Sequence[str] = KEY_TABLES) -> str:
    """The scratch instance's answer once it has promoted: the last transaction it replayed and the key
    tables' counts, one line of JSON (pure)."""
    return ("SELECT json_build_object('restored_to', pg_last_xact_replay_timestamp(), "
            f"'tables', ({count_sql(tables)})::json)::text")


def newest_backup(info: object) -> dict:
    """The newest backup of ``pgbackrest --output=json info``'s first stanza: label and database size
    (``{}`` when it holds none) (pure)."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        return {}
    backups = [backup for backup in info[0].get("backup") or [] if isinstance(backup, dict)]
    if not backups:
        return {}
    newest = backups[-1]
    size = (newest.get("info") or {}).get("size")
    return {"label": newest.get("label"), "size": size if isinstance(size, int) else 0}


def drill_room_error(backup_size: int, total: int, free: int, disk_percent: int) -> str | None:
    """Why the scratch copy must not be made on this disk (None: it fits): the drill must not push the
    disk past the monitoring threshold, where the live database would be next (pure)."""
    needed = int(backup_size * DRILL_ROOM)
    used_after = total - free + needed
    if total <= 0 or used_after * 100 < disk_percent * total:
        return None
    mib = 1 << 20
    return (f"not enough disk for the restore drill: its scratch copy needs about {needed // mib} MiB, "
            f"which would leave the disk {used_after * 100 // total} % used (monitoring.disk_percent: "
            f"{disk_percent} %); {free // mib} MiB are free. Free space on the VPS (old releases, images: "
            "resto STAGE cleanup) or give it a larger disk; the live database and its archiving are untouched")


def drill_report(live: dict[str, int], answer: dict, backup: dict, seconds: float,
                 error: str | None = None) -> dict:
    """The JSON object ``drill`` prints (pure: tested by value).

    ``ok`` only when there is no error and the restore holds, of every key table, at least the rows the
    live database held when the drill began (everything then was archived before the restore ran; rows
    deleted since are the only way the restore can hold more)."""
    restored = answer.get("tables") or {}
    tables = {table: [count, restored.get(table)] for table, count in sorted(live.items())}
    short = [f"{table} ({pair[1] if pair[1] is not None else 'absent'} restored, {pair[0]} live)"
             for table, pair in tables.items() if pair[1] is None or pair[1] < pair[0]]
    if error is None and not answer:
        error = "the scratch instance gave no answer"
    if error is None and short:
        error = ("the restore holds fewer rows than the live database had archived when the drill began: "
                 + ", ".join(short) + ". The repository does not hold what it should: resto STAGE backup "
                 "offsite info --check, and the backup log")
    report = {
        "ok": error is None,
        "backup": backup.get("label"),
        "backup_size_bytes": backup.get("size"),
        "restored_to": answer.get("restored_to"),
        "seconds": round(seconds, 1),
        "tables": tables,
    }
    if error is not None:
        report["error"] = error
    return report


def _docker_root_statvfs() -> os.statvfs_result:
    root = _run(["docker", "info", "--format", "{{.DockerRootDir}}"]).strip() or "/var/lib/docker"
    return os.statvfs(root)


def drill(container: str, stanza: str, name: str, scratch_argv: Sequence[str], seconds: int,
          disk_percent: int) -> dict:
    """Count the live key tables, archive everything counted (``pgbackrest check``), restore the
    repository's latest point into the scratch instance ``scratch_argv`` starts (container ``name``,
    removed afterwards whatever happened) and compare."""
    started = time.monotonic()
    live: dict[str, int] = {}
    answer: dict = {}
    backup: dict = {}
    pgbackrest = ["docker", "exec", "--user", "postgres", container, "pgbackrest", f"--stanza={stanza}"]
    try:
        database = _run(["docker", "exec", container, "sh", "-c", 'printf %s "$POSTGRES_DB"']).strip()
        live = {str(k): int(v) for k, v in json.loads(_run(psql_argv(container, database, count_sql()))).items()}
        _run([*pgbackrest, "check"])
        backup = newest_backup(json.loads(_run([*pgbackrest, "--output=json", "info"]), strict=False))
        if not backup:
            raise RuntimeError("the repository holds no backup to restore: run bin/offsite-backup first")
        disk = _docker_root_statvfs()
        room = drill_room_error(backup["size"], disk.f_blocks * disk.f_frsize, disk.f_bavail * disk.f_frsize,
                                disk_percent)
        if room:
            raise RuntimeError(room)
        subprocess.run(["docker", "rm", "--force", "--volumes", name], check=False, capture_output=True)
        # The restore itself (its files over the network), then up to ``seconds`` of recovery.
        output = _run([*scratch_argv, stanza, str(seconds), drill_sql()], timeout=COMMAND_TIMEOUT + seconds)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        answer = json.loads(lines[-1]) if lines else {}
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as failure:
        return drill_report(live, answer, backup, time.monotonic() - started, str(failure))
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", name], check=False, capture_output=True)
    return drill_report(live, answer, backup, time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restobot_backup.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prune_cmd = commands.add_parser("prune", help="remove the backups the retention does not keep")
    prune_cmd.add_argument("--dir", type=Path, required=True)
    prune_cmd.add_argument("--daily", type=int, required=True)
    prune_cmd.add_argument("--weekly", type=int, required=True)
    prune_cmd.add_argument("--monthly", type=int, required=True)
    verify_cmd = commands.add_parser("verify", help="restore the newest backup (or DUMP) into a scratch database")
    verify_cmd.add_argument("--dir", type=Path, required=True)
    verify_cmd.add_argument("--container", required=True)
    verify_cmd.add_argument("--scratch", default=SCRATCH_DATABASE)
    verify_cmd.add_argument("dump", nargs="?", type=Path, default=None,
                            help="one of the directory's complete backups (default: the newest)")
    type_cmd = commands.add_parser("offsite-type", help="full or incr: tonight's pgBackRest backup (info JSON on stdin)")
    type_cmd.add_argument("--full-every-days", type=int, required=True)
    owner_cmd = commands.add_parser("offsite-owner", help=f"exit {FOREIGN_REPOSITORY}, saying why, when the "
                                    "repository backs up another database (info JSON on stdin)")
    owner_cmd.add_argument("--system-id", type=int, required=True, help="this host's (pg_controldata)")
    owner_cmd.add_argument("--stage", required=True)
    drill_cmd = commands.add_parser("drill", help="restore the off-site repository's latest point into a scratch "
                                    "instance (the command after --) and check it holds the live rows")
    drill_cmd.add_argument("--container", required=True, help="the live postgres container")
    drill_cmd.add_argument("--stanza", required=True)
    drill_cmd.add_argument("--name", required=True, help="the scratch instance's container name")
    drill_cmd.add_argument("--seconds", type=int, default=COMMAND_TIMEOUT, help="how long recovery may take")
    drill_cmd.add_argument("--disk-percent", type=int, required=True, help="the disk use the drill must stay under")
    drill_cmd.add_argument("scratch", nargs=argparse.REMAINDER, help="-- and the command starting the scratch instance")
    args = parser.parse_args(argv)
    if args.command == "drill":
        scratch = args.scratch[1:] if args.scratch[:1] == ["--"] else args.scratch
        if not scratch:
            parser.error("drill: the command starting the scratch instance is missing (after --)")
        report = drill(args.container, args.stanza, args.name, scratch, args.seconds, args.disk_percent)
        print(json.dumps(report, sort_keys=True))
        return 0 if report["ok"] else 1
    if args.command in ("offsite-owner", "offsite-type"):
        try:
            # Not strict: pgBackRest's errors may quote raw control characters (undecrypted bytes).
            info = json.load(sys.stdin, strict=False)
        except json.JSONDecodeError as error:
            print(f"{args.command}: pgbackrest info's answer is not JSON ({error})", file=sys.stderr)
            return 2
        if args.command == "offsite-type":
            print(offsite_type(info, args.full_every_days, time.time()))
            return 0
        foreign = foreign_repository(info, args.system_id, args.stage)
        if foreign:
            print(foreign, file=sys.stderr)
            return FOREIGN_REPOSITORY
        return 0
    if args.command == "prune":
        prune(args.dir, args.daily, args.weekly, args.monthly)
        return 0
    report = verify(args.dir, args.container, args.scratch, dump=args.dump)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
