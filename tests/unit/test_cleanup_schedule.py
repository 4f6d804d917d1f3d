"""The nightly cleanup the host runs (restobot/operations/cleanup.py, templates/cleanup/cleanup.sh.j2):
its cron entry by value, and the rendered script's own logic (lock, audit, log, exit status) run
under sh with the statement replaced by a command that answers as psql would (the real statement
against the deployed stack: tests/e2e/test_cli.py)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from restobot import cli
from restobot.commands import CLEANUP_SQL, HostLayout
from restobot.operations import cleanup
from restobot.settings import RetentionSettings
from tests.conftest import render_script, settings_for_stage

LAYOUT = HostLayout("/srv/my resto")


@pytest.fixture
def settings(secret_env):
    return settings_for_stage("production", secret_env, retention={"inbound_messages_days": 30, "schedule": "5 4 * * *"})


def test_cron_runs_the_script_as_root_on_the_retention_schedule(settings):
    assert cleanup.cron_file(settings, "/srv/my resto/bin/cleanup").splitlines()[-1] == (
        "5 4 * * * root '/srv/my resto/bin/cleanup' >/dev/null")


def test_a_schedule_that_is_not_cron_is_refused():
    with pytest.raises(ValueError, match="must be a 5-field cron expression"):
        RetentionSettings(schedule="every night")


def test_the_script_runs_the_cli_cleanups_statement_with_the_settings_ages(settings):
    values = cleanup.script_values(settings, LAYOUT)
    words = shlex.split(values["delete_command"])
    assert words[:3] == ["docker", "exec", "resto-postgres-1"] and CLEANUP_SQL in words
    assert "--set=inbound_days=30" in words and "--set=outbound_days=90" in words
    assert values["lock_dir"] == "'/srv/my resto/deploy.lock'"


def render(tmp_path: Path, settings, delete_command: str) -> tuple[Path, HostLayout]:
    layout = HostLayout(str(tmp_path / "resto"))
    Path(layout.base_dir).mkdir()
    Path(layout.current).symlink_to("releases/v7-abc")
    values = {**cleanup.script_values(settings, layout), "delete_command": delete_command,
              "log": shlex.quote(str(tmp_path / "cleanup.log"))}
    script = render_script(cleanup.TEMPLATE, values, tmp_path / "cleanup")
    return script, layout


def run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)


def audit(layout: HostLayout) -> list[dict]:
    return cli.parse_audit(Path(layout.audit_log).read_text().splitlines())


def test_the_rendered_script_is_valid_posix_sh(tmp_path, settings):
    script, _ = render(tmp_path, settings, cleanup.script_values(settings, LAYOUT)["delete_command"])
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_run_deletes_under_the_lock_and_audits_the_rows_per_table(tmp_path, settings):
    answer = '{"inbound_messages" : 2, "outbound_messages" : 0, "security_events" : 5, "execution_entity" : 1}'
    lock_dir = HostLayout(str(tmp_path / "resto")).lock_dir
    answers_under_the_lock = shlex.join(["sh", "-c", 'test -f "$0/info" && printf %s "$1"', lock_dir, answer])
    script, layout = render(tmp_path, settings, answers_under_the_lock)
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    [entry] = audit(layout)
    assert (entry["action"], entry["release"]) == ("cleanup (scheduled)", "v7-abc")
    assert entry["by"].startswith("cron@") and entry["duration_s"] is not None
    assert entry["result"] == "ok deleted inbound_messages=2 outbound_messages=0 security_events=5 execution_entity=1"
    assert "deleted inbound_messages=2" in (tmp_path / "cleanup.log").read_text()
    assert not Path(layout.lock_dir).exists()


def test_a_held_lock_deletes_nothing_exits_75_and_says_so(tmp_path, settings):
    marker = tmp_path / "deleted"
    script, layout = render(tmp_path, settings, f"touch {shlex.quote(str(marker))}")
    Path(layout.lock_dir).mkdir()
    Path(layout.lock_info).write_text("holder=ops@laptop action=deploy release=v8 since=2026-12-02T03:00:00Z\n")
    proc = run(script)
    assert proc.returncode == 75
    assert "skipped, the deploy lock is held (holder=ops@laptop action=deploy" in proc.stderr
    assert not marker.exists()
    assert audit(layout)[-1]["result"] == "skipped: the deploy lock is held"
    assert Path(layout.lock_info).read_text().startswith("holder=ops@laptop")  # the holder's lock is kept


def test_a_failed_statement_exits_1_audits_the_reason_and_frees_the_lock(tmp_path, settings):
    script, layout = render(tmp_path, settings, "sh -c 'echo \"psql: error: connection refused\" >&2; exit 2'")
    proc = run(script)
    assert proc.returncode == 1
    assert "cleanup: failed: psql: error: connection refused" in proc.stderr
    assert audit(layout)[-1]["result"].startswith("failed: psql: error: connection refused")
    assert not Path(layout.lock_dir).exists()
