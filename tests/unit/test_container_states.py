"""The container states written for node-exporter (restobot/remote/container_states.py) and their cron entry."""

from __future__ import annotations

import json
import os

from restobot.commands import HostLayout
from restobot.operations import monitoring
from restobot.remote import container_states as states

LAYOUT = HostLayout("/opt/resto")


def record(service: str, state: str, status: str) -> dict[str, str]:
    return {"Names": f"resto-{service}-1", "State": state, "Status": status,
            "Labels": f"com.docker.compose.depends_on=a:service_healthy:false,com.docker.compose.project=resto,"
                      f"com.docker.compose.service={service}"}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_running_healthy_and_cpu_are_reported_per_service():
    text = states.metrics(["nginx", "n8n-main"],
                          [record("nginx", "running", "Up 2 minutes (healthy)"),
                           record("n8n-main", "running", "Up 1 minute (healthy)")],
                          {"resto-n8n-main-1": 12.5})
    assert lines(text) == [
        'restobot_container_running{service="nginx"} 1',
        'restobot_container_healthy{service="nginx"} 1',
        'restobot_container_running{service="n8n-main"} 1',
        'restobot_container_healthy{service="n8n-main"} 1',
        'restobot_container_cpu_percent{service="n8n-main"} 12.5',
    ]


def test_a_stopped_or_missing_container_reads_not_running_and_no_health():
    text = states.metrics(["nginx", "redis"], [record("nginx", "exited", "Exited (0) 3 seconds ago")], {})
    assert lines(text) == ['restobot_container_running{service="nginx"} 0',
                           'restobot_container_running{service="redis"} 0']


def test_an_unhealthy_container_reads_healthy_0_and_a_starting_one_no_health():
    text = states.metrics(["nginx", "redis"], [record("nginx", "running", "Up 5 minutes (unhealthy)"),
                                               record("redis", "running", "Up 2 seconds (health: starting)")], {})
    assert lines(text) == ['restobot_container_running{service="nginx"} 1',
                           'restobot_container_healthy{service="nginx"} 0',
                           'restobot_container_running{service="redis"} 1']


def test_the_running_container_speaks_while_compose_replaces_one():
    text = states.metrics(["nginx"], [record("nginx", "running", "Up 1 second"),
                                      record("nginx", "exited", "Exited (0) 1 second ago")], {})
    assert lines(text) == ['restobot_container_running{service="nginx"} 1']


def test_containers_of_other_services_are_left_out():
    text = states.metrics(["nginx"], [record("db-migrate", "exited", "Exited (0) 1 hour ago")], {})
    assert lines(text) == ['restobot_container_running{service="nginx"} 0']


def test_docker_output_is_parsed():
    ps = json.dumps(record("nginx", "running", "Up")) + "\n"
    assert states.parse_ps(ps) == [record("nginx", "running", "Up")]
    assert states.parse_stats("resto-n8n-main-1\t3.25%\nresto-x-1\t--\n") == {"resto-n8n-main-1": 3.25}


def test_the_file_is_replaced_whole_and_world_readable(tmp_path):
    states.write_atomically(str(tmp_path), "restobot_container_running{service=\"nginx\"} 1\n")
    written = tmp_path / states.OUTPUT
    assert written.read_text() == "restobot_container_running{service=\"nginx\"} 1\n"
    assert written.stat().st_mode & 0o777 == 0o644
    assert [path.name for path in tmp_path.iterdir()] == [states.OUTPUT]


def test_one_cron_run_samples_a_minute_at_the_interval():
    assert [monitoring.samples_per_minute(seconds) for seconds in (5, 15, 60)] == [12, 4, 1]


def test_cron_runs_the_program_as_root_every_minute_for_every_service():
    assert monitoring.cron_file(LAYOUT, 15).splitlines()[-1] == (
        "* * * * * root python3 /opt/resto/bin/restobot_container_states.py --dir /opt/resto/metrics "
        "--project resto --backup-stamp /opt/resto/backups/scheduled/last-success "
        "--backup-last-run /opt/resto/state/backup-last-run "
        "--offsite-stamp /opt/resto/state/offsite-backup-last-success "
        "--offsite-last-run /opt/resto/state/offsite-backup-last-run "
        "--drill-stamp /opt/resto/state/offsite-restore-drill-last-success "
        "--drill-last-run /opt/resto/state/offsite-restore-drill-last-run --samples 4 --every 15 --cpu n8n-main --cpu n8n-worker postgres redis n8n-main "
        "n8n-worker nginx traefik prometheus alertmanager node-exporter postgres-exporter redis-exporter "
        "blackbox-exporter >/dev/null"
    )


def test_one_off_containers_are_left_out():
    one_off = record("n8n-main", "running", "Up 2 seconds (health: starting)")
    one_off["Labels"] += ",com.docker.compose.oneoff=True"
    text = states.metrics(["n8n-main"], [record("n8n-main", "exited", "Exited (137) 1 second ago"), one_off], {})
    assert lines(text) == ['restobot_container_running{service="n8n-main"} 0']


def test_the_backup_s_last_success_is_its_stamp_s_time_and_absent_without_one(tmp_path):
    stamp = tmp_path / "last-success"
    assert states.backup_metrics(states.stamp_mtime(str(stamp))) == ""
    stamp.write_text("x")
    os.utime(stamp, (1796000000, 1796000000))
    assert lines(states.backup_metrics(states.stamp_mtime(str(stamp)))) == [
        "restobot_backup_last_success_timestamp_seconds 1796000000"]


def test_the_backup_s_last_run_reads_1_when_it_recorded_ok_and_0_when_it_recorded_failed():
    assert lines(states.last_run_metrics("2026-12-02T03:17:02Z ok\n")) == ["restobot_backup_last_run_success 1"]
    assert lines(states.last_run_metrics("2026-12-02T03:17:02Z failed\n")) == ["restobot_backup_last_run_success 0"]


def test_the_backup_s_last_run_is_absent_without_a_record_or_with_one_that_reads_otherwise(tmp_path):
    assert states.read_record(str(tmp_path / "backup-last-run")) is None
    assert states.read_record(None) is None
    assert [states.last_run_metrics(text) for text in (None, "", "ok", "2026-12-02T03:17:02Z done\n",
                                                       "2026-12-02T03:17:02Z ok extra\n")] == [""] * 5


def test_a_sample_writes_the_backup_s_last_run_with_the_containers(tmp_path, monkeypatch):
    record_file = tmp_path / "backup-last-run"
    record_file.write_text("2026-12-02T03:17:02Z failed\n")
    outputs = {"ps": json.dumps(record("nginx", "running", "Up 1 minute")) + "\n"}
    monkeypatch.setattr(states, "run", lambda argv: outputs.get(argv[1], ""))
    states.sample(str(tmp_path), "resto", ["nginx"], [], None, str(record_file))
    assert lines((tmp_path / states.OUTPUT).read_text()) == [
        'restobot_container_running{service="nginx"} 1', "restobot_backup_last_run_success 0"]


def test_the_offsite_backup_s_metrics_are_its_stamp_s_time_and_its_recorded_outcome(tmp_path):
    stamp = tmp_path / "offsite-backup-last-success"
    stamp.write_text("2026-12-02T03:37:40Z incr\n")
    os.utime(stamp, (1796000000, 1796000000))
    assert lines(states.offsite_metrics(states.stamp_mtime(str(stamp)), "2026-12-02T03:37:40Z failed\n")) == [
        "restobot_offsite_backup_last_success_timestamp_seconds 1796000000",
        "restobot_offsite_backup_last_run_success 0"]


def test_the_offsite_backup_s_metrics_are_absent_while_it_never_ran(tmp_path):
    """Off-site disabled (or not run yet): no files, no metric (its alerts are not even rendered then)."""
    assert states.offsite_metrics(states.stamp_mtime(str(tmp_path / "none")),
                                  states.read_record(str(tmp_path / "none"))) == ""


def test_a_sample_writes_the_offsite_backup_s_last_run_after_the_nightly_dump_s(tmp_path, monkeypatch):
    (tmp_path / "backup-last-run").write_text("2026-12-02T03:17:02Z ok\n")
    (tmp_path / "offsite-last-run").write_text("2026-12-02T03:37:40Z ok\n")
    monkeypatch.setattr(states, "run", lambda argv: "")
    states.sample(str(tmp_path), "resto", [], [], None, str(tmp_path / "backup-last-run"), None,
                  str(tmp_path / "offsite-last-run"))
    assert lines((tmp_path / states.OUTPUT).read_text()) == [
        "restobot_backup_last_run_success 1", "restobot_offsite_backup_last_run_success 1"]


def test_the_restore_drill_s_metrics_are_its_stamp_s_time_and_its_recorded_outcome(tmp_path):
    stamp = tmp_path / "offsite-restore-drill-last-success"
    stamp.write_text("2026-12-06T05:07:40Z ok\n")
    os.utime(stamp, (1796500000, 1796500000))
    assert lines(states.drill_metrics(states.stamp_mtime(str(stamp)), "2026-12-13T05:08:02Z failed\n")) == [
        "restobot_offsite_restore_drill_last_success_timestamp_seconds 1796500000",
        "restobot_offsite_restore_drill_last_run_success 0"]


def test_a_sample_writes_the_restore_drill_s_last_run_after_the_offsite_backup_s(tmp_path, monkeypatch):
    (tmp_path / "offsite-last-run").write_text("2026-12-06T03:37:40Z ok\n")
    (tmp_path / "drill-last-run").write_text("2026-12-06T05:07:40Z ok\n")
    monkeypatch.setattr(states, "run", lambda argv: "")
    states.sample(str(tmp_path), "resto", [], [], None, None, None, str(tmp_path / "offsite-last-run"),
                  None, str(tmp_path / "drill-last-run"))
    assert lines((tmp_path / states.OUTPUT).read_text()) == [
        "restobot_offsite_backup_last_run_success 1", "restobot_offsite_restore_drill_last_run_success 1"]
