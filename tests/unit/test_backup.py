"""Pure parts of the scheduled backups: cron entry, script values, retention, restore report."""

from __future__ import annotations

import datetime
import fcntl
import getpass
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import OperationError

from restobot.commands import HostLayout
from restobot.operations.backup import (
    BACKUP_LOG,
    HELPER_IN_RELEASE,
    TEMPLATES,
    BackupPaths,
    cron_file,
    cron_line,
    helper_install,
    helper_is_current,
    helper_sha256,
    script_values,
)
from restobot.release_archive import SOURCE_GLOBS, source_files
from restobot.remote import backup as backup_helper
from restobot.settings import REPO_ROOT, BackupSettings
from tests.conftest import render_script

PATHS = BackupPaths(HostLayout("/opt/resto"))
UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- cron and paths -------------------------------------------------------------------


def test_paths_live_under_the_base_and_backups_dirs():
    assert (PATHS.script, PATHS.verify_script, PATHS.helper, PATHS.directory, PATHS.last_success) == (
        "/opt/resto/bin/backup", "/opt/resto/bin/backup-verify", "/opt/resto/bin/restobot_backup.py",
        "/opt/resto/backups/scheduled", "/opt/resto/backups/scheduled/last-success",
    )


def test_the_helper_is_copied_from_the_current_release_into_bin():
    assert PATHS.helper_source == "/opt/resto/current/restobot/remote/backup.py"
    assert helper_install(PATHS, "deploy") == [
        "install", "-o", "root", "-g", "deploy", "-m", "750",
        "/opt/resto/current/restobot/remote/backup.py", "/opt/resto/bin/restobot_backup.py",
    ]


def test_the_release_ships_the_helper_the_operator_tests():
    shipped = source_files(REPO_ROOT, SOURCE_GLOBS)[HELPER_IN_RELEASE]
    assert Path(backup_helper.__file__).resolve() == (REPO_ROOT / HELPER_IN_RELEASE).resolve()
    assert helper_sha256(REPO_ROOT) == hashlib.sha256(shipped).hexdigest()


def test_a_source_without_the_helper_is_refused_naming_it(tmp_path):
    with pytest.raises(OperationError, match=f"{tmp_path}/restobot/remote/backup.py is missing"):
        helper_sha256(tmp_path)


@pytest.mark.parametrize("present, sha256, current", [
    ({"user": "root", "group": "deploy", "mode": 750}, "a" * 64, True),
    (None, None, False),
    ({"user": "root", "group": "deploy", "mode": 750}, "b" * 64, False),
    ({"user": "deploy", "group": "deploy", "mode": 750}, "a" * 64, False),
    ({"user": "root", "group": "root", "mode": 750}, "a" * 64, False),
    ({"user": "root", "group": "deploy", "mode": 755}, "a" * 64, False),
])
def test_the_helper_is_copied_unless_it_is_the_releases_with_its_owner_and_mode(present, sha256, current):
    assert helper_is_current(present, sha256, "a" * 64, "deploy") is current


def test_cron_line_runs_the_script_as_the_deploy_user_on_the_schedule():
    assert cron_line("17 3 * * *", "deploy", "/opt/resto/bin/backup") == "17 3 * * * deploy /opt/resto/bin/backup >/dev/null"


def test_cron_file_from_default_settings():
    assert cron_file(BackupSettings(), "deploy", PATHS) == (
        "# Managed by restobot (restobot/operations/backup.py): the nightly database backup.\n"
        "# Change `backup.schedule` in the inventory and deploy again; do not edit on the host.\n"
        "SHELL=/bin/sh\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "17 3 * * * deploy /opt/resto/bin/backup >/dev/null\n"
    )


def test_cron_file_follows_the_schedule_setting():
    assert cron_file(BackupSettings(schedule="5 1 * * 0"), "ops", PATHS).splitlines()[-1] == (
        "5 1 * * 0 ops /opt/resto/bin/backup >/dev/null"
    )


def test_script_values_quote_shell_words_and_carry_the_retention():
    values = script_values(BackupSettings(), "deploy", BackupPaths(HostLayout("/srv/my resto")))

    assert {key: values[key] for key in ("deploy_user", "container", "directory", "log", "helper", "scratch",
                                         "daily", "weekly", "monthly")} == {
        "deploy_user": "deploy",
        "container": "resto-postgres-1",
        "directory": "'/srv/my resto/backups/scheduled'",
        "log": BACKUP_LOG,
        "helper": "'/srv/my resto/bin/restobot_backup.py'",
        "scratch": "restore_check",
        "daily": 7, "weekly": 4, "monthly": 6,
    }


@pytest.mark.parametrize("template", ["backup.sh.j2", "backup-verify.sh.j2"])
def test_rendered_scripts_are_valid_posix_sh(template, tmp_path):
    script = render_script(TEMPLATES / template, script_values(BackupSettings(), "deploy", PATHS),
                           tmp_path / "script.sh")
    text = script.read_text()

    proc = subprocess.run(["sh", "-n", str(script)], check=False, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr
    execs = [line for line in text.splitlines() if "docker exec" in line and not line.lstrip().startswith("#")]
    assert not [line for line in execs if " -t " in line or " -it " in line]  # a TTY corrupts binary output


def rendered_backup(tmp_path: Path) -> tuple[Path, Path]:
    """bin/backup rendered for a base dir under ``tmp_path``, run as the current user: (script, its last-run record)."""
    paths = BackupPaths(HostLayout(str(tmp_path / "base")))
    values = {**script_values(BackupSettings(), getpass.getuser(), paths), "log": str(tmp_path / "backup.log")}
    script = render_script(TEMPLATES / "backup.sh.j2", values, tmp_path / "backup")
    Path(paths.layout.state_dir).mkdir(parents=True)
    return script, Path(paths.last_run)


def test_the_last_run_is_recorded_outside_the_backups_directory():
    assert PATHS.last_run == "/opt/resto/state/backup-last-run"
    assert not PATHS.last_run.startswith(PATHS.directory)
    assert script_values(BackupSettings(), "deploy", PATHS)["last_run"] == "/opt/resto/state/backup-last-run"


def test_a_failed_backup_records_failed_as_its_last_run(tmp_path):
    script, last_run = rendered_backup(tmp_path)
    last_run.write_text("2026-12-01T03:17:02Z ok\n")

    proc = subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True, timeout=30)

    assert proc.returncode == 1
    assert "scheduled is missing" in proc.stderr
    assert last_run.read_text().split()[1:] == ["failed"]
    assert [path.name for path in last_run.parent.iterdir()] == [last_run.name]  # renamed whole
    assert last_run.stat().st_mode & 0o777 == 0o600


def test_a_run_that_finds_another_running_records_nothing(tmp_path):
    script, last_run = rendered_backup(tmp_path)
    directory = tmp_path / "base" / "backups" / "scheduled"
    directory.mkdir(parents=True)
    last_run.write_text("2026-12-01T03:17:02Z ok\n")

    with open(directory / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True, timeout=30)

    assert proc.returncode == 1
    assert "another backup is running" in proc.stderr
    assert last_run.read_text() == "2026-12-01T03:17:02Z ok\n"


# --- counts ---------------------------------------------------------------------------------


def test_count_sql_counts_the_existing_key_tables_in_one_query():
    assert backup_helper.count_sql(("inbound_messages", "api_clients")) == (
        "SELECT coalesce(json_object_agg(t, (xpath('/row/c/text()', query_to_xml("
        "format('SELECT count(*) AS c FROM %I', t), false, true, '')))[1]::text::bigint), '{}')::text AS counts "
        "FROM unnest(ARRAY['inbound_messages', 'api_clients']::text[]) AS t WHERE to_regclass(t) IS NOT NULL"
    )


def test_count_sql_refuses_a_table_name_that_is_not_an_identifier():
    with pytest.raises(ValueError, match="not a plain lower-case identifier"):
        backup_helper.count_sql(("x'; drop table y; --",))


def test_key_tables_are_the_runbook_ones():
    assert backup_helper.KEY_TABLES == (
        "inbound_messages", "outbound_messages", "security_events", "api_clients", "schema_migrations")


# --- names and retention ----------------------------------------------------------------------


def test_dump_name_and_stamp_round_trip():
    when = at("2026-11-28T03:17:02")

    assert backup_helper.dump_name(when) == "resto-20261128T031702Z.dump"
    assert backup_helper.dump_stamp("resto-20261128T031702Z.dump") == when


@pytest.mark.parametrize("name", ["resto-20261128T031702Z.dump.partial", "before-v1.dump", "resto-x.dump",
                                  "resto-20261128T031702Z.json"])
def test_other_files_are_not_dumps(name):
    assert backup_helper.dump_stamp(name) is None


def nightly(first: str, days: int) -> list[datetime.datetime]:
    start = at(first)
    return [start + datetime.timedelta(days=n) for n in range(days)]


def test_retention_of_a_year_of_nightly_backups_keeps_7_days_4_weeks_6_months():
    stamps = nightly("2026-01-01T03:17:00", 365)  # through 2026-12-31 (a Thursday)

    kept = backup_helper.kept_stamps(stamps, daily=7, weekly=4, monthly=6)

    assert [stamp.date().isoformat() for stamp in kept] == [
        # daily: the last 7 days
        "2026-12-31", "2026-12-30", "2026-12-29", "2026-12-28", "2026-12-27", "2026-12-26", "2026-12-25",
        # weekly: newest of each ISO week (weeks of 12-28 and 12-21 are covered by days above)
        "2026-12-20", "2026-12-13",
        # monthly: newest of each month (December already kept)
        "2026-11-30", "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31",
    ]


def test_retention_keeps_the_newest_of_each_day_when_several_run_the_same_day():
    stamps = [at("2026-11-28T03:17:00"), at("2026-11-28T12:00:00"), at("2026-11-27T03:17:00")]

    assert backup_helper.kept_stamps(stamps, daily=7, weekly=0, monthly=0) == [
        at("2026-11-28T12:00:00"), at("2026-11-27T03:17:00")]


def test_retention_always_keeps_the_newest():
    assert backup_helper.kept_stamps([at("2026-11-28T03:17:00")], daily=1, weekly=0, monthly=0) == [
        at("2026-11-28T03:17:00")]


def write_backup(directory: Path, when: str, complete: bool = True) -> Path:
    stamp = at(when)
    dump = directory / backup_helper.dump_name(stamp)
    dump.write_bytes(b"PGDMP")
    (directory / dump.name.replace(".dump", ".globals.sql")).write_text("CREATE ROLE x;\n")
    if complete:
        (directory / dump.name.replace(".dump", ".json")).write_text('{"tables": {}}\n')
    return dump


def test_prune_removes_the_three_files_of_each_backup_it_does_not_keep(tmp_path):
    for day in range(1, 11):
        write_backup(tmp_path, f"2026-11-{day:02d}T03:17:00")
    (tmp_path / "last-success").write_text("x\n")

    backup_helper.prune(tmp_path, daily=3, weekly=0, monthly=0, out=None)

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "last-success",
        "resto-20261108T031700Z.dump", "resto-20261108T031700Z.globals.sql", "resto-20261108T031700Z.json",
        "resto-20261109T031700Z.dump", "resto-20261109T031700Z.globals.sql", "resto-20261109T031700Z.json",
        "resto-20261110T031700Z.dump", "resto-20261110T031700Z.globals.sql", "resto-20261110T031700Z.json",
    ]


def test_prune_leaves_incomplete_backups_alone(tmp_path):
    write_backup(tmp_path, "2026-11-01T03:17:00", complete=False)
    write_backup(tmp_path, "2026-11-02T03:17:00")

    backup_helper.prune(tmp_path, daily=1, weekly=0, monthly=0, out=None)

    assert (tmp_path / "resto-20261101T031700Z.dump").exists()


# --- restore report ------------------------------------------------------------------------------------


def test_verify_report_is_ok_when_every_count_matches():
    counts = dict.fromkeys(backup_helper.KEY_TABLES, 2)

    assert backup_helper.verify_report("/d/resto-x.dump", 61.4, 1.23456, counts, counts) == {
        "ok": True, "dump": "/d/resto-x.dump", "age_seconds": 61, "restore_seconds": 1.235,
        "tables": {table: [2, 2] for table in backup_helper.KEY_TABLES},
    }


def test_verify_report_fails_on_a_differing_or_missing_count():
    expected = dict.fromkeys(backup_helper.KEY_TABLES, 2)
    restored = {**expected, "inbound_messages": 1}
    del restored["api_clients"]

    report = backup_helper.verify_report("d", 0, 0, expected, restored)

    assert report["ok"] is False
    assert report["tables"]["inbound_messages"] == [2, 1]
    assert report["tables"]["api_clients"] == [2, None]


def test_verify_report_carries_the_error():
    report = backup_helper.verify_report("d", 0, 0, {}, {}, ("t",), error="pg_restore failed")

    assert (report["ok"], report["error"], report["tables"]) == (False, "pg_restore failed", {"t": [None, None]})


def test_verify_without_backups_names_the_way_out(tmp_path):
    report = backup_helper.verify(tmp_path, "resto-postgres-1")

    assert report["ok"] is False
    assert report["error"] == f"no complete backup in {tmp_path}: run bin/backup first"


def test_restore_argvs_use_no_tty_and_stop_at_the_first_error():
    assert backup_helper.pg_restore_argv("pg", "restore_check") == [
        "docker", "exec", "-i", "pg", "sh", "-c",
        'exec pg_restore --exit-on-error --no-owner --no-privileges -U "$POSTGRES_USER" -d "$0"', "restore_check",
    ]
    assert backup_helper.scratch_argvs("pg", "n8n", "restore_check") == (
        ["docker", "exec", "pg", "sh", "-c", backup_helper.PSQL, "n8n", 'DROP DATABASE IF EXISTS "restore_check" WITH (FORCE)'],
        ["docker", "exec", "pg", "sh", "-c", backup_helper.PSQL, "n8n", 'CREATE DATABASE "restore_check"'],
    )


# --- which backup verify restores (bin/backup-verify [DUMP]) ----------------------------------------


def test_verify_chooses_the_newest_complete_backup_by_default(tmp_path):
    write_backup(tmp_path, "2026-11-01T03:17:00")
    newest = write_backup(tmp_path, "2026-11-02T03:17:00")
    write_backup(tmp_path, "2026-11-03T03:17:00", complete=False)

    assert backup_helper.chosen_backup(tmp_path, None).dump == newest


@pytest.mark.parametrize("named", ["path", "name"])
def test_verify_chooses_the_named_backup_by_path_or_file_name(tmp_path, named):
    older = write_backup(tmp_path, "2026-11-01T03:17:00")
    write_backup(tmp_path, "2026-11-02T03:17:00")

    chosen = backup_helper.chosen_backup(tmp_path, older if named == "path" else Path(older.name))

    assert chosen.dump == older


@pytest.mark.parametrize("dump", ["resto-20261103T031700Z.dump", "elsewhere/resto-20261101T031700Z.dump",
                                  "resto-20261101T031700Z.globals.sql"])
def test_verify_refuses_a_dump_that_is_not_a_complete_backup_of_the_directory(tmp_path, dump):
    write_backup(tmp_path, "2026-11-01T03:17:00")
    write_backup(tmp_path, "2026-11-03T03:17:00", complete=False)
    named = tmp_path / dump if "/" in dump else Path(dump)

    assert backup_helper.chosen_backup(tmp_path, named) == (
        f"{named} is not a complete backup of {tmp_path} (a resto-<time>.dump with its .json); "
        f"list them with: ls {tmp_path}")


def test_verify_of_an_unknown_dump_reports_it_and_exits_1_before_any_restore(tmp_path, capsys):
    write_backup(tmp_path, "2026-11-01T03:17:00")

    status = backup_helper.main(["verify", "--dir", str(tmp_path), "--container", "no-such-container",
                                 "resto-20991231T000000Z.dump"])

    report = json.loads(capsys.readouterr().out)
    assert status == 1
    assert (report["ok"], report["dump"], report["restore_seconds"]) == (False, "resto-20991231T000000Z.dump", 0)
    assert report["error"].startswith("resto-20991231T000000Z.dump is not a complete backup of ")
