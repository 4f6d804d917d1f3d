"""Nightly backups on the deployed VPS: installed by pyinfra, run for real, restored for real.

The shared ``deployed_stack`` (a fresh VPS with deploy.py run once) already has the
schedule; it is taken off (as on a host deployed before backups existed) and put back by
``backups_scheduled`` through a deploy file of its own; then ``bin/backup`` and
``bin/backup-verify`` run over SSH exactly as cron and an operator run them.
The tests run in file order: each backup prunes the older ones of the same day.
"""

from __future__ import annotations

import json
import shlex

import pytest

from restobot.commands import HostLayout
from restobot.facts.deploy import POSTGRES_CONTAINER
from restobot.operations.backup import BACKUP_LOG, CRON_FILE, BackupPaths, cron_line
from restobot.settings import BackupSettings
from tests.e2e.conftest import run_pyinfra, write_deploy

pytestmark = pytest.mark.e2e

PATHS = BackupPaths(HostLayout())
USER = "deploy"
DEPLOY_BODY = [
    "from restobot.commands import HostLayout",
    "from restobot.operations.backup import backups_scheduled",
    "from restobot.settings import settings_for",
    "settings = settings_for(host)",
    "backups_scheduled(settings, HostLayout(settings.host.base_dir))",
]
# Fake nightly dumps of early 2025 beside today's real ones (see test_retention_...).
FAKE_DAYS = [f"2025-{month:02d}-{day:02d}" for month, days in ((1, 31), (2, 28), (3, 31)) for day in range(1, days + 1)]


@pytest.fixture(scope="module")
def backup_deploy_file(deployed_stack):
    return write_deploy(deployed_stack.workdir / "backup_deploy.py", DEPLOY_BODY)


@pytest.fixture(scope="module")
def installed(deployed_stack, backup_deploy_file):
    deployed_stack.ssh("rm", "-f", CRON_FILE, PATHS.script, PATHS.verify_script)
    run = run_pyinfra(deployed_stack.inventory, backup_deploy_file)
    assert run.returncode == 0, f"installing the backups failed\n{run.output_tail()}"
    return run


@pytest.fixture(scope="module")
def stack(deployed_stack, installed):
    return deployed_stack


def ssh_sh(stack, script: str, check: bool = True, timeout: float = 300):
    return stack.ssh("sh", "-c", script, check=check, timeout=timeout)


def run_backup(stack) -> str:
    proc = stack.ssh(PATHS.script, timeout=600)
    return proc.stdout.strip().splitlines()[-1]


def run_verify(stack, check: bool = False):
    proc = stack.ssh(PATHS.verify_script, check=check, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"backup-verify printed nothing (exit {proc.returncode})\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1])


def psql(stack, sql: str) -> str:
    return stack.ssh("docker", "exec", POSTGRES_CONTAINER, "sh", "-c",
                     'exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"', sql).stdout


def stat(stack, path: str) -> str:
    return stack.ssh("stat", "-c", "%a %U", path).stdout.strip()


@pytest.fixture(scope="module")
def first_backup(stack) -> str:
    return run_backup(stack)


def test_first_deploy_leaves_a_backup_behind(deployed_stack):
    """Runs before this module's fixtures run any backup: only the deploy can have made it."""
    created, path, size = deployed_stack.ssh("cat", PATHS.last_success).stdout.split()

    assert path.startswith(f"{PATHS.directory}/resto-") and int(size) > 0
    assert deployed_stack.ssh("head", "-c", "5", path).stdout == "PGDMP"


def test_install_puts_back_what_was_missing_without_errors(installed):
    assert installed.results["totals"]["error"] == 0
    assert installed.results["totals"]["success"] > 0, "the schedule was removed, yet installing changed nothing"


def test_cron_runs_the_backup_with_the_settings_schedule(stack):
    cron = stack.ssh("cat", CRON_FILE).stdout.splitlines()

    assert cron_line(BackupSettings().schedule, USER, PATHS.script) in cron
    running = stack.ssh("sh", "-c", 'kill -0 "$(cat /var/run/crond.pid)"', check=False)
    assert running.returncode == 0, f"cron is not running on the VPS: {running.stderr}"


def test_backup_prints_the_dump_it_wrote(first_backup):
    assert first_backup.startswith(f"{PATHS.directory}/resto-") and first_backup.endswith(".dump")


@pytest.mark.parametrize("suffix", [".dump", ".globals.sql", ".json"])
def test_backup_files_are_the_deploy_users_mode_600(stack, first_backup, suffix):
    assert stat(stack, first_backup.removesuffix(".dump") + suffix) == f"600 {USER}"


@pytest.mark.parametrize("path, wanted", [(PATHS.directory, f"700 {USER}"), (BACKUP_LOG, f"640 {USER}"),
                                          (PATHS.last_success, f"600 {USER}")])
def test_backup_paths_have_their_modes(stack, first_backup, path, wanted):
    assert stat(stack, path) == wanted


def test_dump_is_a_custom_format_archive(stack, first_backup):
    assert stack.ssh("head", "-c", "5", first_backup).stdout == "PGDMP"


def test_globals_hold_the_roles(stack, first_backup):
    assert "CREATE ROLE" in stack.ssh("cat", first_backup.removesuffix(".dump") + ".globals.sql").stdout


def test_last_success_names_time_file_and_size(stack, first_backup):
    created, path, size = stack.ssh("cat", PATHS.last_success).stdout.split()

    assert path == first_backup
    assert int(size) == int(stack.ssh("stat", "-c", "%s", first_backup).stdout)
    assert created.endswith("Z") and "T" in created


def test_metadata_records_the_key_tables_counts(stack, first_backup):
    metadata = json.loads(stack.ssh("cat", first_backup.removesuffix(".dump") + ".json").stdout)

    assert set(metadata["tables"]) == {"inbound_messages", "outbound_messages", "security_events",
                                       "api_clients", "schema_migrations"}
    assert metadata["tables"]["api_clients"] >= 1  # the deploy's admin client
    assert metadata["size"] == int(stack.ssh("stat", "-c", "%s", first_backup).stdout)


def test_log_says_the_backup_is_done(stack, first_backup):
    assert f"backup done: {first_backup}" in stack.ssh("cat", BACKUP_LOG).stdout


@pytest.fixture(scope="module")
def rows_added(stack, first_backup):
    """Rows added after the first backup, then a second backup: the counts must follow."""
    psql(stack, "INSERT INTO security_events (event_type, channel, detail) "
                "SELECT 'RATE_LIMIT', 'whatsapp', jsonb_build_object('n', n) FROM generate_series(1, 3) AS n")
    psql(stack, "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload) "
                "SELECT 'whatsapp', 'wamid.BACKUPTEST' || n, 'wa:336', '336', '{}'::jsonb FROM generate_series(1, 2) AS n")
    live = {table: int(psql(stack, f"SELECT count(*) FROM {table}"))
            for table in ("inbound_messages", "security_events")}
    return live, run_backup(stack)


@pytest.fixture(scope="module")
def verified(stack, rows_added):
    return run_verify(stack)


def test_verify_passes_on_a_fresh_backup(verified):
    returncode, report = verified

    assert (returncode, report["ok"]) == (0, True), report


def test_verify_restores_the_newest_backup(verified, rows_added):
    assert verified[1]["dump"] == rows_added[1]


def test_verify_counts_equal_the_rows_at_dump_time(verified, rows_added):
    live, _ = rows_added
    tables = verified[1]["tables"]

    assert tables["inbound_messages"] == [live["inbound_messages"]] * 2
    assert tables["security_events"] == [live["security_events"]] * 2
    assert all(expected == restored for expected, restored in tables.values()), tables


def test_verify_reports_age_and_restore_time(verified):
    report = verified[1]

    assert 0 <= report["age_seconds"] < 600
    assert report["restore_seconds"] > 0


def test_verify_drops_its_scratch_database(stack, verified):
    assert psql(stack, "SELECT count(*) FROM pg_database WHERE datname = 'restore_check'").strip() == "0"


def corrupt_newest(stack, fix_checksum: bool) -> str:
    """Take a backup and cut its dump in half (optionally rewriting the recorded sha256 to match)."""
    dump = run_backup(stack)
    meta = dump.removesuffix(".dump") + ".json"
    script = f"d={shlex.quote(dump)}; m={shlex.quote(meta)}; " \
             'size=$(stat -c %s "$d"); head -c $((size / 2)) "$d" > "$d.cut" && cat "$d.cut" > "$d" && rm "$d.cut"'
    if fix_checksum:
        script += '; sha=$(sha256sum "$d" | cut -d " " -f 1); ' \
                  'sed -i "s/\\"sha256\\": \\"[0-9a-f]*\\"/\\"sha256\\": \\"$sha\\"/" "$m"'
    ssh_sh(stack, script)
    return dump


def remove_backup(stack, dump: str) -> None:
    base = dump.removesuffix(".dump")
    stack.ssh("rm", "-f", dump, f"{base}.json", f"{base}.globals.sql")


@pytest.mark.parametrize("fix_checksum, error", [(False, "sha256 differs"), (True, "pg_restore of")],
                         ids=["checksum", "restore"])
def test_verify_fails_on_a_corrupted_dump(stack, verified, fix_checksum, error):
    dump = corrupt_newest(stack, fix_checksum)
    try:
        returncode, report = run_verify(stack)
    finally:
        remove_backup(stack, dump)

    assert returncode == 1
    assert report["ok"] is False and error in report["error"], report


def test_retention_keeps_7_daily_4_weekly_6_monthly(stack, verified):
    fakes = " ".join(f"resto-{day.replace('-', '')}T031700Z" for day in FAKE_DAYS)
    ssh_sh(stack, f"cd {shlex.quote(PATHS.directory)} && for b in {fakes}; do "
                  "printf PGDMP > $b.dump; printf x > $b.globals.sql; printf '{\"tables\": {}}' > $b.json; done; "
                  f"chown {USER}: resto-2025* && chmod 600 resto-2025*")

    newest = run_backup(stack)
    left = stack.ssh("sh", "-c", f"cd {shlex.quote(PATHS.directory)} && ls resto-*.dump").stdout.split()

    # Today's real backup (daily, weekly and monthly for today), then of early 2025: the 6 newest
    # days (daily), the newest of ISO weeks 13 and 12 (weekly; week 14 is 03-31), and the
    # newest of February and January (monthly; March is 03-31).
    assert left == [f"resto-2025{day}T031700Z.dump" for day in
                    ("0131", "0228", "0323", "0326", "0327", "0328", "0329", "0330", "0331")] + [newest.rsplit("/", 1)[1]]


def test_second_install_changes_nothing(stack, backup_deploy_file):
    run = run_pyinfra(stack.inventory, backup_deploy_file)

    assert run.returncode == 0, run.output_tail()
    assert run.results["totals"]["success"] == 0, f"changed on the second run: {run.changed}"
