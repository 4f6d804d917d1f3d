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
        "--project resto --backup-stamp /opt/resto/backups/scheduled/last-success --samples 4 --every 15 --cpu n8n-main --cpu n8n-worker postgres redis n8n-main "
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
