"""The off-site restore drill (#15): its report, its disk rule, its schedule and what a failed run leaves.

The drill itself (pgBackRest's restore into a scratch instance, recovery, pg_dump) runs in
tests/e2e/test_offsite_backup.py; here, what is ours, by value.
"""

from __future__ import annotations

import fcntl
import getpass
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.operations import files

from restobot.commands import (
    DRILL_CONTAINER,
    DRILL_SCRIPT,
    HostLayout,
    offsite_restore_drill,
)
from restobot.operations.backup import (
    DRILL_CRON_FILE,
    TEMPLATES,
    BackupPaths,
    drill_cron_file,
    drill_script_values,
    offsite_script_values,
    script_values,
)
from restobot.remote import backup as helper
from restobot.secrets import generate_secrets
from restobot.settings import OffsiteBackupSettings, SettingsError, load_settings
from tests.conftest import render_script, settings_for_stage

PATHS = BackupPaths(HostLayout())
MIB = 1 << 20
GIB = 1 << 30
LIVE = {"inbound_messages": 40, "outbound_messages": 38, "schema_migrations": 7}
BACKUP = {"label": "20261206-050712F", "size": 48 * MIB}


def answer(**tables: int) -> dict:
    return {"restored_to": "2026-12-06 05:07:31.2+00", "tables": tables}


def test_a_restore_holding_every_live_row_passes():
    report = helper.drill_report(LIVE, answer(inbound_messages=41, outbound_messages=38, schema_migrations=7),
                                 BACKUP, 83.44)
    assert report == {
        "ok": True, "backup": "20261206-050712F", "backup_size_bytes": 48 * MIB,
        "restored_to": "2026-12-06 05:07:31.2+00", "seconds": 83.4,
        "tables": {"inbound_messages": [40, 41], "outbound_messages": [38, 38], "schema_migrations": [7, 7]},
    }


def test_a_restore_short_of_live_rows_fails_naming_each_table_and_where_to_look():
    report = helper.drill_report(LIVE, answer(inbound_messages=39, schema_migrations=7), BACKUP, 80)
    assert report["ok"] is False
    assert report["error"].startswith("the restore holds fewer rows than the live database had archived")
    assert "inbound_messages (39 restored, 40 live), outbound_messages (absent restored, 38 live)" in report["error"]
    assert "resto STAGE backup offsite info --check" in report["error"]


def test_a_scratch_instance_that_answered_nothing_fails():
    report = helper.drill_report(LIVE, {}, BACKUP, 12)
    assert (report["ok"], report["error"]) == (False, "the scratch instance gave no answer")


def test_a_step_that_failed_is_the_reports_error():
    report = helper.drill_report(LIVE, {}, {}, 3, "docker exec ... exited 1: no such container")
    assert (report["ok"], report["backup"], report["error"]) == (False, None, "docker exec ... exited 1: no such container")


@pytest.mark.parametrize(("size", "total", "free", "percent", "fits"), [
    (1 * GIB, 40 * GIB, 30 * GIB, 90, True),
    (1 * GIB, 40 * GIB, 4 * GIB + 300 * MIB, 90, False),   # 1.2 GiB more would cross 90 %
    (1 * GIB, 40 * GIB, 6 * GIB, 90, True),
    (0, 40 * GIB, 3 * GIB, 90, False),                      # already past the threshold
])
def test_the_scratch_copy_must_not_push_the_disk_past_the_monitoring_threshold(size, total, free, percent, fits):
    assert (helper.drill_room_error(size, total, free, percent) is None) == fits


def test_a_disk_too_full_for_the_drill_says_how_much_it_needs_and_the_way_out():
    error = helper.drill_room_error(10 * GIB, 40 * GIB, 12 * GIB, 90)
    assert error == ("not enough disk for the restore drill: its scratch copy needs about 12288 MiB, which would "
                     "leave the disk 100 % used (monitoring.disk_percent: 90 %); 12288 MiB are free. Free space on "
                     "the VPS (old releases, images: resto STAGE cleanup) or give it a larger disk; the live "
                     "database and its archiving are untouched")


def test_the_newest_backup_is_the_last_of_pgbackrests_list():
    info = [{"backup": [{"label": "a", "info": {"size": 10}}, {"label": "b", "info": {"size": 20}}]}]
    assert helper.newest_backup(info) == {"label": "b", "size": 20}
    assert helper.newest_backup([{"backup": []}]) == helper.newest_backup("error") == {}


def test_the_scratch_instance_answers_the_key_tables_and_the_last_replayed_transaction():
    sql = helper.drill_sql()
    assert sql.startswith("SELECT json_build_object('restored_to', pg_last_xact_replay_timestamp(), 'tables', (")
    assert helper.count_sql() in sql


def test_the_scratch_instance_shares_no_volume_port_or_archive_with_the_live_one():
    argv = offsite_restore_drill("/opt/resto/current")
    assert argv[argv.index("run"):argv.index("postgres", argv.index("run"))] == [
        "run", "--rm", "--no-deps", "--no-TTY", "--name", DRILL_CONTAINER, "--volume", "/var/lib/postgresql/data"]
    assert argv[-4:] == ["sh", "-c", DRILL_SCRIPT, "restore-drill"]
    assert "--archive-mode=off" in DRILL_SCRIPT and "listen_addresses=''" in DRILL_SCRIPT
    assert "--pg1-path=\"$data\"" in DRILL_SCRIPT and "data=/var/lib/postgresql/data/drill" in DRILL_SCRIPT


def test_the_drill_script_is_valid_posix_sh():
    proc = subprocess.run(["sh", "-n", "-c", DRILL_SCRIPT], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_drill_runs_weekly_after_sundays_backup_by_default():
    offsite = OffsiteBackupSettings()
    assert (offsite.drill_schedule, offsite.drill_period_seconds) == ("7 5 * * 0", 7 * 86400)


def test_a_drill_schedule_that_is_not_cron_is_refused_naming_the_field(production_data, secret_env):
    production_data["offsite_backup"] = {"drill_schedule": "weekly"}
    with pytest.raises(SettingsError) as caught:
        load_settings(production_data, secret_env)
    assert any("offsite_backup.drill_schedule" in problem and "5-field cron" in problem
               for problem in caught.value.problems)


def test_cron_file_runs_the_drill_as_the_deploy_user_on_its_schedule():
    assert drill_cron_file(OffsiteBackupSettings(drill_schedule="0 6 * * 6"), "deploy", PATHS) == (
        "# Managed by restobot (restobot/operations/backup.py): the off-site restore drill (pgBackRest into a "
        "scratch instance).\n"
        "# Change `offsite_backup.drill_schedule` in the inventory and deploy again; do not edit on the host.\n"
        "SHELL=/bin/sh\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "0 6 * * 6 deploy /opt/resto/bin/offsite-restore-drill >/dev/null\n"
    )
    assert DRILL_CRON_FILE == "/etc/cron.d/restobot-offsite-restore-drill"


def test_the_drills_outcome_stamp_and_lock_live_in_the_state_directory():
    assert (PATHS.drill_script, PATHS.drill_last_run, PATHS.drill_last_success, PATHS.drill_lock) == (
        "/opt/resto/bin/offsite-restore-drill", "/opt/resto/state/offsite-restore-drill-last-run",
        "/opt/resto/state/offsite-restore-drill-last-success", "/opt/resto/state/offsite-restore-drill.lock")


def test_the_drill_reads_the_disk_threshold_and_starts_the_current_releases_service():
    settings = settings_for_stage("production", generate_secrets(), monitoring={"disk_percent": 80},
                                  offsite_backup={"stanza": "resto-1"})
    values = drill_script_values(settings, BackupPaths(HostLayout("/srv/my resto")))
    assert (values["stanza"], values["disk_percent"], values["scratch_name"]) == ("resto-1", 80, DRILL_CONTAINER)
    assert "--project-directory '/srv/my resto/current'" in values["scratch_command"]


# --- the script, run here with a live container that does not exist: what a failed drill leaves ---------


def rendered(tmp_path: Path) -> tuple[Path, BackupPaths]:
    paths = BackupPaths(HostLayout(str(tmp_path / "base")))
    settings = settings_for_stage("production", generate_secrets())
    values = {**drill_script_values(settings, paths, container="restobot-unit-no-such-container"),
              **{"deploy_user": getpass.getuser(), "log": str(tmp_path / "backup.log")}}
    script = render_script(TEMPLATES / "offsite-restore-drill.sh.j2", values, tmp_path / "offsite-restore-drill")
    Path(paths.layout.state_dir).mkdir(parents=True)
    Path(paths.helper).parent.mkdir(parents=True)
    Path(paths.helper).write_text(Path(helper.__file__).read_text())  # as the deploy installs it
    return script, paths


def run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True, timeout=120)


def test_the_rendered_drill_is_valid_posix_sh(tmp_path):
    script, _ = rendered(tmp_path)
    proc = subprocess.run(["sh", "-n", str(script)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_failed_drill_records_failed_keeps_the_last_success_and_logs_its_report(tmp_path):
    script, paths = rendered(tmp_path)
    Path(paths.drill_last_success).write_text("2026-11-29T05:07:40Z ok\n")

    proc = run(script)

    assert proc.returncode == 1
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["ok"] is False and report["error"]
    assert proc.stderr.startswith("offsite-restore-drill: the drill failed; its report: {")
    assert Path(paths.drill_last_run).read_text().split()[1:] == ["failed"]
    assert Path(paths.drill_last_success).read_text() == "2026-11-29T05:07:40Z ok\n"
    log = (tmp_path / "backup.log").read_text()
    assert "restore-drill: report: {" in log and "restore-drill: FAILED (exit 1)" in log


def test_a_drill_that_finds_another_running_records_nothing(tmp_path):
    script, paths = rendered(tmp_path)
    Path(paths.drill_last_run).write_text("2026-11-29T05:07:40Z ok\n")

    with open(paths.drill_lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run(script)

    assert proc.returncode == 1
    assert "another drill is running" in proc.stderr
    assert Path(paths.drill_last_run).read_text() == "2026-11-29T05:07:40Z ok\n"


def test_the_helper_refuses_a_drill_without_the_scratch_command():
    proc = subprocess.run([sys.executable, helper.__file__, "drill", "--container", "c", "--stanza", "s",
                           "--name", "n", "--disk-percent", "90"], check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "the command starting the scratch instance is missing" in proc.stderr


def test_no_script_value_takes_the_name_of_an_argument_of_pyinfras_template_operation():
    """The values are passed to files.template as keywords: one named like its own arguments breaks the deploy."""
    reserved = set(inspect.signature(files.template._inner).parameters) | {"name"}
    settings = settings_for_stage("production", generate_secrets())
    for values in (drill_script_values(settings, PATHS), offsite_script_values(settings.offsite_backup, "ops", PATHS),
                   script_values(settings.backup, "ops", PATHS)):
        assert not set(values) & reserved
