"""Nightly backups on the deployed VPS: installed by pyinfra, run for real, restored for real.

The shared ``deployed_stack`` (a fresh VPS with deploy.py run once) already has the
schedule; it is taken off (as on a host deployed before backups existed) and put back by
``backups_scheduled`` through a deploy file of its own; then ``bin/backup`` and
``bin/backup-verify`` run over SSH exactly as cron and an operator run them.

Each step is a module-scoped fixture that records what it saw right after it ran, and
the tests assert on that record, so any test runs alone and in any order (each backup
prunes the older ones of the same day, so a backup's files are read when it is taken):

    left_by_the_deploy       the backup the first deploy made, read before this module runs any
    └─ installed             the schedule taken off, then put back by backups_scheduled
       ├─ first_backup       bin/backup once, its files read right after
       │  └─ rows_added      rows inserted, then bin/backup again
       │     └─ verified     bin/backup-verify on that backup
       ├─ retention_applied  fake dumps of early 2025 beside today's, then bin/backup: what is left
       └─ reinstalled        backups_scheduled once more
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time

import pytest

from harness.deploys import run_pyinfra, write_deploy
from restobot.commands import HostLayout
from restobot.facts.deploy import POSTGRES_CONTAINER
from restobot.operations.backup import BACKUP_LOG, CRON_FILE, BackupPaths, cron_line
from restobot.settings import BackupSettings

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
def left_by_the_deploy(deployed_stack) -> dict:
    """The backup named in last-success before this module runs bin/backup: only a deploy made it."""
    _, path, size = deployed_stack.ssh("cat", PATHS.last_success).stdout.split()
    return {"path": path, "size": int(size), "head": deployed_stack.ssh("head", "-c", "5", path).stdout}


@pytest.fixture(scope="module")
def installed(deployed_stack, backup_deploy_file, left_by_the_deploy):
    deployed_stack.ssh("rm", "-f", CRON_FILE, PATHS.script, PATHS.verify_script)
    return run_pyinfra(deployed_stack.inventory, backup_deploy_file)


@pytest.fixture(scope="module")
def stack(deployed_stack, installed):
    """The deployed stack with the backups installed by this module (the stages below build on it)."""
    if installed.returncode != 0:
        pytest.fail(f"installing the backups failed\n{installed.output_tail(3000)}", pytrace=False)
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


@dataclasses.dataclass(frozen=True)
class Backup:
    """One run of bin/backup, and its files as read right after it (a later backup prunes it)."""

    dump: str
    modes: dict[str, str]
    head: str
    globals_sql: str
    metadata: dict
    size: int
    last_success: list[str]
    log: str


def take_backup(stack) -> Backup:
    dump = run_backup(stack)
    base = dump.removesuffix(".dump")
    paths = (dump, f"{base}.globals.sql", f"{base}.json", PATHS.directory, BACKUP_LOG, PATHS.last_success)
    return Backup(
        dump=dump,
        modes={path: stat(stack, path) for path in paths},
        head=stack.ssh("head", "-c", "5", dump).stdout,
        globals_sql=stack.ssh("cat", f"{base}.globals.sql").stdout,
        metadata=json.loads(stack.ssh("cat", f"{base}.json").stdout),
        size=int(stack.ssh("stat", "-c", "%s", dump).stdout),
        last_success=stack.ssh("cat", PATHS.last_success).stdout.split(),
        log=stack.ssh("cat", BACKUP_LOG).stdout,
    )


@pytest.fixture(scope="module")
def first_backup(stack) -> Backup:
    return take_backup(stack)


def test_first_deploy_leaves_a_backup_behind(left_by_the_deploy):
    assert left_by_the_deploy["path"].startswith(f"{PATHS.directory}/resto-") and left_by_the_deploy["size"] > 0


def test_first_deploys_backup_is_a_dump(left_by_the_deploy):
    assert left_by_the_deploy["head"] == "PGDMP"


def test_install_succeeds(installed):
    assert installed.returncode == 0, installed.output_tail()


def test_install_puts_back_what_was_missing_without_errors(installed):
    assert installed.results["totals"]["error"] == 0


def test_install_changes_what_was_missing(installed):
    assert installed.results["totals"]["success"] > 0, "the schedule was removed, yet installing changed nothing"


def test_cron_runs_the_backup_with_the_settings_schedule(stack):
    assert cron_line(BackupSettings().schedule, USER, PATHS.script) in stack.ssh("cat", CRON_FILE).stdout.splitlines()


def test_cron_is_running(stack):
    running = stack.ssh("sh", "-c", 'kill -0 "$(cat /var/run/crond.pid)"', check=False)
    assert running.returncode == 0, f"cron is not running on the VPS: {running.stderr}"


def test_backup_prints_the_dump_it_wrote(first_backup):
    assert first_backup.dump.startswith(f"{PATHS.directory}/resto-") and first_backup.dump.endswith(".dump")


@pytest.mark.parametrize("suffix", [".dump", ".globals.sql", ".json"])
def test_backup_files_are_the_deploy_users_mode_600(first_backup, suffix):
    assert first_backup.modes[first_backup.dump.removesuffix(".dump") + suffix] == f"600 {USER}"


@pytest.mark.parametrize("path, wanted", [(PATHS.directory, f"700 {USER}"), (BACKUP_LOG, f"640 {USER}"),
                                          (PATHS.last_success, f"600 {USER}")])
def test_backup_paths_have_their_modes(first_backup, path, wanted):
    assert first_backup.modes[path] == wanted


def test_dump_is_a_custom_format_archive(first_backup):
    assert first_backup.head == "PGDMP"


def test_globals_hold_the_roles(first_backup):
    assert "CREATE ROLE" in first_backup.globals_sql


def test_last_success_names_the_file(first_backup):
    assert first_backup.last_success[1] == first_backup.dump


def test_last_success_names_the_size(first_backup):
    assert int(first_backup.last_success[2]) == first_backup.size


def test_last_success_names_the_time(first_backup):
    created = first_backup.last_success[0]
    assert created.endswith("Z") and "T" in created, first_backup.last_success


def test_metadata_records_the_key_tables(first_backup):
    assert set(first_backup.metadata["tables"]) == {"inbound_messages", "outbound_messages", "security_events",
                                                    "api_clients", "schema_migrations"}


def test_metadata_counts_the_deploys_admin_client(first_backup):
    assert first_backup.metadata["tables"]["api_clients"] >= 1


def test_metadata_records_the_dump_size(first_backup):
    assert first_backup.metadata["size"] == first_backup.size


def test_log_says_the_backup_is_done(first_backup):
    assert f"backup done: {first_backup.dump}" in first_backup.log


@pytest.fixture(scope="module")
def rows_added(stack, first_backup):
    """Rows added after the first backup, then a second backup: the counts must follow."""
    psql(stack, "INSERT INTO security_events (event_type, channel, detail) "
                "SELECT 'RATE_LIMIT', 'whatsapp', jsonb_build_object('n', n) FROM generate_series(1, 3) AS n")
    psql(stack, "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload) "
                "SELECT 'whatsapp', 'wamid.BACKUPTEST' || n, 'wa:336', '336', '{}'::jsonb FROM generate_series(1, 2) AS n")
    live = {table: int(psql(stack, f"SELECT count(*) FROM {table}"))
            for table in ("inbound_messages", "security_events")}
    before = time.time()
    return {"live": live, "dump": run_backup(stack), "before": before}


@pytest.fixture(scope="module")
def verified(stack, rows_added) -> dict:
    """bin/backup-verify right after rows_added's backup: its exit code and report, what it left, how long since."""
    returncode, report = run_verify(stack)
    return {"returncode": returncode, "report": report, "since_backup": time.time() - rows_added["before"],
            "scratch_left": psql(stack, "SELECT count(*) FROM pg_database WHERE datname = 'restore_check'").strip()}


def test_verify_passes_on_a_fresh_backup(verified):
    assert (verified["returncode"], verified["report"]["ok"]) == (0, True), verified["report"]


def test_verify_restores_the_newest_backup(verified, rows_added):
    assert verified["report"]["dump"] == rows_added["dump"]


@pytest.mark.parametrize("table", ["inbound_messages", "security_events"])
def test_verify_counts_the_rows_added_before_the_dump(verified, rows_added, table):
    assert verified["report"]["tables"][table] == [rows_added["live"][table]] * 2


def test_verify_counts_equal_the_rows_at_dump_time(verified):
    tables = verified["report"]["tables"]
    assert all(expected == restored for expected, restored in tables.values()), tables


def test_verify_reports_the_backups_age(verified):
    """The age is the time since the backup was taken: between 0 and the time this module saw pass since
    just before it (rounded, and the backup's time has a resolution of one second)."""
    assert 0 <= verified["report"]["age_seconds"] <= math.ceil(verified["since_backup"]) + 1, verified


def test_verify_reports_its_restore_time(verified):
    assert verified["report"]["restore_seconds"] > 0


def test_verify_drops_its_scratch_database(verified):
    assert verified["scratch_left"] == "0"


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
def test_verify_fails_on_a_corrupted_dump(stack, fix_checksum, error):
    """Self-contained: it takes the backup it corrupts, and removes it afterwards."""
    dump = corrupt_newest(stack, fix_checksum)
    try:
        returncode, report = run_verify(stack)
    finally:
        remove_backup(stack, dump)

    assert returncode == 1
    assert report["ok"] is False and error in report["error"], report


@pytest.fixture(scope="module")
def retention_applied(stack) -> tuple[str, list[str]]:
    """Fake nightly dumps of early 2025 beside today's, then bin/backup: its dump and the dumps left."""
    fakes = " ".join(f"resto-{day.replace('-', '')}T031700Z" for day in FAKE_DAYS)
    ssh_sh(stack, f"cd {shlex.quote(PATHS.directory)} && for b in {fakes}; do "
                  "printf PGDMP > $b.dump; printf x > $b.globals.sql; printf '{\"tables\": {}}' > $b.json; done; "
                  f"chown {USER}: resto-2025* && chmod 600 resto-2025*")
    newest = run_backup(stack)
    return newest, stack.ssh("sh", "-c", f"cd {shlex.quote(PATHS.directory)} && ls resto-*.dump").stdout.split()


def test_retention_keeps_7_daily_4_weekly_6_monthly(retention_applied):
    newest, left = retention_applied
    # Today's real backup (daily, weekly and monthly for today), then of early 2025: the 6 newest
    # days (daily), the newest of ISO weeks 13 and 12 (weekly; week 14 is 03-31), and the
    # newest of February and January (monthly; March is 03-31).
    assert left == [f"resto-2025{day}T031700Z.dump" for day in
                    ("0131", "0228", "0323", "0326", "0327", "0328", "0329", "0330", "0331")] + [newest.rsplit("/", 1)[1]]


@pytest.fixture(scope="module")
def reinstalled(stack, backup_deploy_file):
    """backups_scheduled run once more, on the host it installed."""
    return run_pyinfra(stack.inventory, backup_deploy_file)


def test_second_install_succeeds(reinstalled):
    assert reinstalled.returncode == 0, reinstalled.output_tail()


def test_second_install_changes_nothing(reinstalled):
    assert reinstalled.results["totals"]["success"] == 0, f"changed on the second run: {reinstalled.changed}"
