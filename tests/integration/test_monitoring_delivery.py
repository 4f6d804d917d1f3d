"""One alert end to end on the real binaries: node-exporter's textfile -> Prometheus's rule -> Alertmanager -> webhook.

The local stand-ins (harness/images.py, Debian's packages) run the rendered configs on a docker network this
test creates, nothing published. The nightly backup's outcome is written where node-exporter's textfile
collector reads it: a failed run fires RestobotBackupFailed, which Alertmanager posts to ALERT_WEBHOOK_URL
(a recorder on the host's side of that network); a good run resolves it and the resolve is posted too.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import images
from harness.poll import poll
from harness.recorder import Recorder, start_recorder
from restobot.render import MonitoringOptions, render_monitoring, write_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage

pytestmark = pytest.mark.integration

NOBODY = 65534  # the official images' user, and Debian's nobody: it reads the 0600 alertmanager.yml
PROMETHEUS, ALERTMANAGER, NODE_EXPORTER = (
    images.image_ref(images.local_image(name)) for name in ("prometheus", "alertmanager", "node-exporter"))


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True, timeout=120)


@dataclass
class Stack:
    recorder: Recorder
    textfile: Path
    secrets: dict[str, str]
    containers: list[str]

    def backup_outcome(self, success: int) -> None:
        """Write the backup's outcome as the backup script will: a .prom file, renamed into place."""
        partial = self.textfile / "restobot_backup.prom.partial"
        partial.write_text("# HELP restobot_backup_last_run_success 1 when the last scheduled backup succeeded.\n"
                           "# TYPE restobot_backup_last_run_success gauge\n"
                           f"restobot_backup_last_run_success {success}\n")
        partial.chmod(0o644)
        os.replace(partial, self.textfile / "restobot_backup.prom")

    def notifications(self, alertname: str) -> list[dict]:
        bodies = [json.loads(request.body) for request in list(self.recorder.requests)
                  if request.method == "POST" and request.path == "/alertmanager"]
        return [body for body in bodies if body.get("commonLabels", {}).get("alertname") == alertname]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + docker("logs", "--tail", "15", name, check=False).stderr[-1500:]
                         for name in self.containers)


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    for ref in (PROMETHEUS, ALERTMANAGER, NODE_EXPORTER):
        if docker("image", "inspect", ref, check=False).returncode != 0:
            pytest.skip(f"{ref} is not built (scripts/build-images builds it)")
    suffix = secrets.token_hex(4)
    network = f"resto-mon-{suffix}"
    docker("network", "create", network)
    containers: list[str] = []
    recorder = None
    try:
        gateway = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network).stdout.strip()
        recorder = start_recorder(host=gateway)
        environ = generate_secrets()
        settings = settings_for_stage(
            "production", environ,
            pipeline={"alert_webhook_url": f"http://{gateway}:{recorder.port}/alertmanager"},
            monitoring={"group_wait_seconds": 1, "group_interval_minutes": 1, "down_minutes": 1})
        write_release(render_monitoring(settings, MonitoringOptions(scrape_interval="2s")), tmp_path)
        config = tmp_path / "monitoring"
        os.chown(config / "alertmanager" / "alertmanager.yml", NOBODY, NOBODY)
        textfile = tmp_path / "textfile"
        textfile.mkdir(mode=0o755)
        textfile.chmod(0o755)
        stack = Stack(recorder, textfile, environ, containers)
        stack.backup_outcome(0)
        for name, ref, mount, args in (
            ("node-exporter", NODE_EXPORTER, f"{textfile}:/textfile:ro",
             ["--collector.textfile.directory=/textfile"]),
            ("alertmanager", ALERTMANAGER, f"{config / 'alertmanager'}:/etc/alertmanager:ro",
             ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager",
              "--cluster.listen-address="]),
            ("prometheus", PROMETHEUS, f"{config / 'prometheus'}:/etc/prometheus:ro", []),
        ):
            container = f"{network}-{name}"
            docker("run", "-d", "--name", container, "--network", network, "--network-alias", name,
                   "-v", mount, ref, *args)
            containers.append(container)
        yield stack
    finally:
        for container in containers:
            docker("rm", "-f", container, check=False)
        docker("network", "rm", network, check=False)
        if recorder is not None:
            recorder.close()


def test_a_failed_backup_is_posted_firing_then_resolved(stack):
    firing = poll(lambda: [n for n in stack.notifications("RestobotBackupFailed") if n["status"] == "firing"],
                  timeout=90, interval=1, what="RestobotBackupFailed posted firing")
    body = firing[0]
    assert body["receiver"] == "alert-destination"
    assert body["groupLabels"] == {"alertname": "RestobotBackupFailed", "stage": "production"}
    [alert] = body["alerts"]
    assert alert["labels"] == {"alertname": "RestobotBackupFailed", "severity": "critical", "stage": "production",
                               "instance": "node-exporter:9100", "job": "node"}
    assert alert["annotations"]["summary"] == "The last scheduled backup failed"

    stack.backup_outcome(1)
    resolved = poll(lambda: [n for n in stack.notifications("RestobotBackupFailed") if n["status"] == "resolved"],
                    timeout=150, interval=1, what="RestobotBackupFailed posted resolved")
    assert [alert["status"] for alert in resolved[0]["alerts"]] == ["resolved"]

    posted = " ".join(request.body.decode() for request in stack.recorder.requests)
    leaked = [name for name, value in stack.secrets.items() if len(value) >= 12 and value in posted]
    assert not leaked, f"secrets in the posted alerts: {leaked}"


def test_nothing_is_published_on_the_host(stack):
    for container in stack.containers:
        assert docker("port", container).stdout.strip() == "", f"{container} publishes a port"
