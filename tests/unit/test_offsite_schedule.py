"""The nightly off-site run (#15): tonight's backup type, the cron entry, the script's recorded outcome.

pgBackRest itself runs in tests/integration/test_offsite_backup.py and tests/e2e/test_offsite_backup.py
(the deploy runs the script once on a host that never ran it); here, what is ours, by value.
"""

from __future__ import annotations

import dataclasses
import fcntl
import getpass
import json
import subprocess
import sys
from pathlib import Path

import pytest

from restobot.commands import HostLayout, offsite_repository_is_this_databases
from restobot.operations.backup import (
    OFFSITE_CRON_FILE,
    TEMPLATES,
    BackupPaths,
    offsite_cron_file,
    offsite_script_values,
    unless_foreign,
)
from restobot.remote import backup as helper
from restobot.settings import OffsiteBackupSettings, SettingsError, load_settings
from tests.conftest import render_script

PATHS = BackupPaths(HostLayout())
DAY = 86400
NOW = 1_796_000_000


def info(*backups: tuple[str, int]) -> list[dict]:
    """``pgbackrest --output=json info`` of one stanza holding ``backups`` (type, stop time), its shape trimmed."""
    return [{"name": "restobot", "status": {"code": 0, "message": "ok"},
             "backup": [{"label": f"b{index}", "type": kind, "timestamp": {"start": stop - 60, "stop": stop}}
                        for index, (kind, stop) in enumerate(backups)]}]


@pytest.mark.parametrize(("backups", "every", "expected"), [
    ((), 7, "full"),                                                  # a stanza without backups
    ((("full", NOW - 6 * DAY),), 7, "incr"),
    ((("full", NOW - 7 * DAY),), 7, "full"),
    ((("full", NOW - 7 * DAY + 1800),), 7, "full"),                   # a few minutes early tonight
    ((("full", NOW - 7 * DAY + 7200),), 7, "incr"),
    ((("full", NOW - 20 * DAY), ("incr", NOW - DAY)), 7, "full"),     # incrementals do not reset the week
    ((("full", NOW - 20 * DAY), ("full", NOW - 2 * DAY), ("incr", NOW - DAY)), 7, "incr"),
    ((("full", NOW - DAY),), 1, "full"),
])
def test_tonights_backup_is_full_once_the_newest_full_is_the_interval_old(backups, every, expected):
    assert helper.offsite_type(info(*backups), every, NOW) == expected


@pytest.mark.parametrize("answer", [None, {}, [], [{}], [{"backup": [{"type": "full", "timestamp": {"stop": "x"}}]}]])
def test_an_answer_that_does_not_read_as_pgbackrests_asks_for_a_full_backup(answer):
    assert helper.offsite_type(answer, 7, NOW) == "full"


def run_helper(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, helper.__file__, "offsite-type", "--full-every-days", "7"],
                          input=stdin, capture_output=True, text=True, timeout=30)


def test_the_helper_prints_the_type_from_pgbackrests_answer_on_stdin():
    assert run_helper(json.dumps(info())).stdout == "full\n"


def test_the_helper_refuses_an_answer_that_is_not_json_with_exit_2():
    proc = run_helper("ERROR: [039]: HTTP request failed")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "offsite-type: pgbackrest info's answer is not JSON" in proc.stderr


# --- whose repository: a VPS rebuilt after a loss finds another database's backups ---------------------

OURS, THEIRS = 7_380_000_000_000_000_001, 7_380_000_000_000_000_002


def owned_by(*system_ids: int) -> list[dict]:
    """``pgbackrest info`` of a stanza whose db history holds ``system_ids``, the last one current."""
    return [{"name": "restobot", "status": {"code": 0, "message": "ok"}, "backup": [],
             "db": [{"id": index + 1, "repo-key": index + 1, "system-id": system_id, "version": "17"}
                    for index, system_id in enumerate(system_ids)]}]


MISSING_STANZA = [{"name": "restobot", "status": {"code": 1, "message": "missing stanza path"}, "backup": [], "db": []}]


@pytest.mark.parametrize(("answer", "expected"), [
    (owned_by(OURS), OURS), (owned_by(THEIRS, OURS), OURS), (owned_by(OURS, THEIRS), THEIRS),
    (MISSING_STANZA, None), (None, None), ([{}], None),
])
def test_the_repository_backs_up_the_database_of_its_newest_db_entry(answer, expected):
    assert helper.repository_system_id(answer) == expected


@pytest.mark.parametrize("answer", [owned_by(OURS), owned_by(THEIRS, OURS), MISSING_STANZA])
def test_a_repository_of_this_database_or_without_a_stanza_is_ours_to_write(answer):
    assert helper.foreign_repository(answer, OURS, "production") is None


def test_another_databases_repository_is_refused_naming_both_and_the_restore_command():
    why = helper.foreign_repository(owned_by(THEIRS), OURS, "production")
    assert f"system identifier {THEIRS}" in why and f"this host's is {OURS}" in why
    assert "`resto production backup offsite restore`, then deploy again" in why
    assert "Nothing was written to the repository." in why


def fake_docker(tmp_path: Path, answer: list[dict], system_id: int) -> dict[str, str]:
    """PATH with a docker that answers pgbackrest info and pg_controldata as the postgres container does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "info.json").write_text(json.dumps(answer))
    (bin_dir / "docker").write_text(f"""#!/bin/sh
case "$*" in
  *pgbackrest*) cat {tmp_path / "info.json"} ;;
  *pg_controldata*) printf 'pg_control version number:            1700\nDatabase system identifier:           {system_id}\n' ;;
  *) exit 1 ;;
esac
""")
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.parametrize(("answer", "status"), [(owned_by(OURS), 0), (MISSING_STANZA, 0), (owned_by(THEIRS), 3)])
def test_the_hosts_owner_check_reads_the_repository_and_the_cluster(tmp_path, answer, status):
    argv = offsite_repository_is_this_databases("restobot", helper.__file__, "production")
    proc = subprocess.run(argv, env=fake_docker(tmp_path, answer, OURS), capture_output=True, text=True, timeout=30)
    assert proc.returncode == status, proc.stderr
    assert ("another database" in proc.stderr) == (status == 3)


# --- settings and cron ------------------------------------------------------------------------------------


def test_the_run_is_nightly_after_the_local_dump_by_default():
    offsite = OffsiteBackupSettings()
    assert (offsite.schedule, offsite.period_seconds) == ("37 3 * * *", DAY)


def test_a_schedule_that_is_not_cron_is_refused_naming_the_field(production_data, secret_env):
    production_data["offsite_backup"] = {"schedule": "nightly"}
    with pytest.raises(SettingsError) as caught:
        load_settings(production_data, secret_env)
    assert any("offsite_backup.schedule" in problem and "5-field cron" in problem for problem in caught.value.problems)


def test_cron_file_runs_the_script_as_the_deploy_user_on_the_schedule():
    assert offsite_cron_file(OffsiteBackupSettings(schedule="5 2 * * *"), "deploy", PATHS) == (
        "# Managed by restobot (restobot/operations/backup.py): the nightly off-site backup (pgBackRest).\n"
        "# Change `offsite_backup.schedule` in the inventory and deploy again; do not edit on the host.\n"
        "SHELL=/bin/sh\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "5 2 * * * deploy /opt/resto/bin/offsite-backup >/dev/null\n"
    )
    assert OFFSITE_CRON_FILE == "/etc/cron.d/restobot-offsite-backup"


def test_the_outcome_and_the_stamp_live_in_the_state_directory():
    assert (PATHS.offsite_last_run, PATHS.offsite_last_success, PATHS.offsite_lock) == (
        "/opt/resto/state/offsite-backup-last-run", "/opt/resto/state/offsite-backup-last-success",
        "/opt/resto/state/offsite-backup.lock")


def test_script_values_quote_shell_words():
    values = offsite_script_values(OffsiteBackupSettings(stanza="resto-1", full_interval_days=3), "ops",
                                   BackupPaths(HostLayout("/srv/my resto")))
    assert (values["stanza"], values["full_every_days"], values["lock"]) == (
        "resto-1", 3, "'/srv/my resto/state/offsite-backup.lock'")


# --- the script, run here without docker: what a failed run leaves -------------------------------------


def rendered(tmp_path: Path) -> tuple[Path, BackupPaths]:
    paths = BackupPaths(HostLayout(str(tmp_path / "base")))
    # A container that does not exist: pgbackrest info fails as it does when postgres is gone.
    values = {**offsite_script_values(OffsiteBackupSettings(), getpass.getuser(), paths,
                                      container="restobot-unit-no-such-container"),
              "log": str(tmp_path / "backup.log")}
    script = render_script(TEMPLATES / "offsite-backup.sh.j2", values, tmp_path / "offsite-backup")
    Path(paths.layout.state_dir).mkdir(parents=True)
    return script, paths


def run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True, timeout=60)


def test_the_rendered_script_is_valid_posix_sh(tmp_path):
    script, _ = rendered(tmp_path)
    proc = subprocess.run(["sh", "-n", str(script)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_failed_run_records_failed_keeps_the_last_success_and_logs_why(tmp_path):
    script, paths = rendered(tmp_path)
    Path(paths.offsite_last_success).write_text("2026-12-01T03:37:40Z incr\n")

    proc = run(script)

    assert proc.returncode == 1
    assert proc.stderr.startswith("offsite-backup: pgbackrest info failed")
    assert Path(paths.offsite_last_run).read_text().split()[1:] == ["failed"]
    assert Path(paths.offsite_last_success).read_text() == "2026-12-01T03:37:40Z incr\n"
    assert "offsite: FAILED: pgbackrest info failed" in (tmp_path / "backup.log").read_text()


def test_a_run_that_finds_another_running_records_nothing(tmp_path):
    script, paths = rendered(tmp_path)
    Path(paths.offsite_last_run).write_text("2026-12-01T03:37:40Z ok\n")

    with open(paths.offsite_lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run(script)

    assert proc.returncode == 1
    assert "another off-site backup is running" in proc.stderr
    assert Path(paths.offsite_last_run).read_text() == "2026-12-01T03:37:40Z ok\n"


def test_a_run_on_a_rebuilt_vps_before_its_restore_fails_naming_the_restore_and_backs_nothing_up(tmp_path):
    script, paths = rendered(tmp_path)
    Path(paths.helper).parent.mkdir(parents=True)
    Path(paths.helper).write_text(Path(helper.__file__).read_text())  # as the deploy installs it
    env = fake_docker(tmp_path, owned_by(THEIRS), OURS)

    proc = subprocess.run(["sh", str(script)], env=env, check=False, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1
    assert proc.stderr.startswith("offsite-backup: the off-site repository holds the backups of another database")
    assert "resto production backup offsite restore" in proc.stderr
    assert Path(paths.offsite_last_run).read_text().split()[1:] == ["failed"]
    assert "starting a" not in (tmp_path / "backup.log").read_text()  # no backup was tried


# --- the deploy's steps on the repository, decided when they run ------------------------------------------


@dataclasses.dataclass
class Line:
    line: str


class ScriptedHost:
    """A pyinfra host whose commands answer as scripted: the owner check's answer, then each step's."""

    def __init__(self, owner: tuple[bool, list[str]], steps_fail: bool = False):
        self.owner, self.steps_fail = owner, steps_fail
        self.ran: list[str] = []
        self.logged: list[tuple[str, str]] = []

    def run_shell_command(self, command, print_output=False, print_input=False):
        text = str(command)
        self.ran.append(text)
        if "offsite-owner" in text:
            ok, lines = self.owner
        else:
            ok, lines = (not self.steps_fail), ["ERROR: [037]: unable to open file"] if self.steps_fail else []
        return ok, [Line(line) for line in lines]

    def log_styled(self, message, fg=None, log_func=None):
        self.logged.append((fg, message))


STEPS = [["docker", "exec", "resto-postgres-1", "pgbackrest", "--stanza=restobot", "stanza-create"]]


def decide(target: ScriptedHost) -> bool:
    return unless_foreign(None, target, "restobot", PATHS.helper, "production", STEPS)


def test_the_steps_run_on_a_repository_of_this_database():
    target = ScriptedHost(owner=(True, []))
    assert decide(target) is True
    assert len(target.ran) == 2 and "stanza-create" in target.ran[1]


def test_another_databases_repository_is_left_alone_and_the_deploy_goes_on_with_a_warning():
    why = helper.foreign_repository(owned_by(THEIRS), OURS, "production")
    target = ScriptedHost(owner=(False, [why]))
    assert decide(target) is True
    assert len(target.ran) == 1  # the owner check only
    assert target.logged == [("yellow", why)]


@pytest.mark.parametrize(("owner", "steps_fail", "says"), [
    ((False, ["ERROR: [039]: HTTP request failed"]), False, "reading the off-site repository failed"),
    ((True, []), True, "unable to open file"),
])
def test_an_unreadable_repository_or_a_failed_step_fails_the_deploy_saying_why(owner, steps_fail, says):
    target = ScriptedHost(owner=owner, steps_fail=steps_fail)
    assert decide(target) is False
    assert target.logged[-1][0] == "red" and says in target.logged[-1][1]
