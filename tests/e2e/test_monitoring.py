"""The deployed monitoring proven by breaking the thing (#13): each runbook alert posted firing, then resolved.

On the shared deployed stack, redeployed with the test inventory's lowered intervals and thresholds
(below), seven things are broken together, as an operator would meet them (the two that no earlier
module can have left alerting first, the rest once Alertmanager has posted any earlier resolve):

  * nginx's container stopped                      -> RestobotContainerDown {service: nginx}
  * blackbox-exporter hung (SIGSTOP): its healthcheck times out -> RestobotContainerUnhealthy
  * webhook posts with a wrong signature           -> RestobotSignatureErrors, RestobotErrorsPerHour
  * one conversation above the rate limit          -> RestobotRateLimitExcessive
  * a file filling the disk past the lowered threshold -> RestobotDiskFull
  * the backups directory unwritable, a backup run -> RestobotBackupFailed
  * n8n-worker stopped, a message left RECEIVED    -> RestobotMessagesStuck

The host's container-state writer, node-exporter, postgres-exporter and the blackbox exporter report
them, Prometheus's rules fire, and Alertmanager posts to ALERT_WEBHOOK_URL, the Meta double's alert
sink (/alerts). Each is then fixed (started, resumed, deleted, put back, re-driven; the burst of
events leaves the lowered window) and its resolve is posted: the same alert (fingerprint and start).
The stack is deployed back with its own settings afterwards.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from harness.deploys import (
    DeployedStack,
    public_request,
    run_deploy,
    stack_sql,
    write_inventory,
)
from harness.poll import PollTimeout, poll
from harness.traffic import at_the_start_of_a_rate_window
from restobot import meta_payloads
from restobot.commands import HostLayout
from restobot.operations.backup import BackupPaths
from restobot.settings import read_env_file, secrets_file

pytestmark = pytest.mark.e2e

LOWERED = {
    "container_state_interval_seconds": 5,
    "scrape_interval_seconds": 2,
    "down_minutes": 1,
    "sustained_minutes": 1,
    "group_wait_seconds": 1,
    "group_interval_minutes": 1,
    "events_window_minutes": 1,
    "signature_errors_per_hour": 3,
    "errors_per_hour": 3,
    "rate_limited_per_hour": 2,
}
RATE_LIMIT_PER_30S = 10  # pipeline.rate_limit_per_30s, the stack's default
BAD_SIGNATURES = LOWERED["signature_errors_per_hour"] + 1
OVER_THE_LIMIT = LOWERED["rate_limited_per_hour"] + 1
STUCK_SECONDS = 900  # pipeline.inbound_stuck_alert_seconds, the stack's default
FILL_FILE = "/var/lib/docker/restobot-e2e-disk-fill"
BACKUP = BackupPaths(HostLayout())
PROMETHEUS_ALERTS = "http://127.0.0.1:9090/api/v1/alerts"
GROUP_INTERVAL_SECONDS = LOWERED["group_interval_minutes"] * 60
# From the break: a sample (5 s), a scrape and an evaluation (2 s each), the rule's `for` (60 s for
# down_minutes and sustained_minutes; none for the windows, the backup and stuck messages), then
# group_wait (1 s); the healthcheck first needs 3 failed tries 15 s apart. Room for a loaded machine.
# To the resolve: the fix shows (a started container, the window of 60 s passing, the sweeper's
# re-drive after n8n-worker's start), then Alertmanager's next group_interval (60 s) at the latest.
FIRING_WITHIN_SECONDS = 200
RESOLVED_WITHIN_SECONDS = 240


@dataclass(frozen=True)
class Alert:
    """An alert the breakage must raise: its name and the labels that tell it from others of the name."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, alert: dict[str, Any]) -> bool:
        labels = alert.get("labels", {})
        return labels.get("alertname") == self.name and all(labels.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        return self.name + "".join(f" {k}={v}" for k, v in self.labels)


ALERTS = [
    Alert("RestobotContainerDown", (("service", "nginx"),)),
    Alert("RestobotContainerUnhealthy", (("service", "blackbox-exporter"),)),
    Alert("RestobotSignatureErrors"),
    Alert("RestobotErrorsPerHour"),
    Alert("RestobotRateLimitExcessive"),
    Alert("RestobotDiskFull"),
    Alert("RestobotBackupFailed"),
    Alert("RestobotMessagesStuck"),
]


def container(service: str) -> str:
    return f"resto-{service}-1"


def posted(stack: DeployedStack) -> list[dict[str, Any]]:
    """Every alert Alertmanager posted to the alert sink, in the order posted."""
    bodies = [
        request["body"]
        for request in stack.meta.requests()
        if request["path"] == "/alerts" and isinstance(request["body"], dict)
    ]
    return [alert for body in bodies for alert in body.get("alerts", [])]


def first_firing(stack: DeployedStack, alert: Alert, since: str) -> dict[str, Any] | None:
    """The first post of ``alert`` firing that started at or after ``since`` (RFC 3339, UTC)."""
    return next(
        (a for a in posted(stack) if alert.matches(a) and a["status"] == "firing" and a["startsAt"][:19] >= since),
        None,
    )


def its_resolve(stack: DeployedStack, firing: dict[str, Any]) -> dict[str, Any] | None:
    """The post that resolves ``firing``: the same alert (fingerprint) and the same start."""
    return next(
        (
            a
            for a in posted(stack)
            if a["status"] == "resolved"
            and a["fingerprint"] == firing["fingerprint"]
            and a["startsAt"] == firing["startsAt"]
        ),
        None,
    )


def active_alerts(stack: DeployedStack) -> list[dict[str, Any]]:
    """Prometheus's pending and firing alerts."""
    answer = stack.ssh(
        "docker",
        "exec",
        container("prometheus"),
        "wget",
        "-q",
        "-O",
        "-",
        PROMETHEUS_ALERTS,
    )
    return json.loads(answer.stdout)["data"]["alerts"]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


# --- the disk ----------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    size: int
    avail: int

    @property
    def used_percent(self) -> float:
        """As RestobotDiskFull reads it: 1 - avail / size (reserved blocks count as used)."""
        return 100 * (1 - self.avail / self.size)


def docker_disk(stack: DeployedStack) -> Disk:
    """The filesystem of the VPS's /var/lib/docker, where the stack's volumes grow."""
    lines = stack.ssh("df", "-B1", "--output=size,avail", "/var/lib/docker").stdout.split()
    return Disk(size=int(lines[-2]), avail=int(lines[-1]))


def lowered_disk_percent(disk: Disk) -> int:
    """A threshold 1 to 2 points above today's use, which a file of a few % of the disk crosses."""
    threshold = math.floor(disk.used_percent) + 2
    if threshold > 98:
        pytest.fail(
            f"the VPS's disk is {disk.used_percent:.1f}% used: no room to cross a lowered threshold "
            "without filling it; free space on this machine (docker system prune)",
            pytrace=False,
        )
    return threshold


def fill_past(stack: DeployedStack, threshold: int) -> None:
    disk = docker_disk(stack)
    target_used = (threshold + 1) / 100 * disk.size
    stack.ssh("fallocate", "-l", str(int(target_used - (disk.size - disk.avail))), FILL_FILE)


# --- the breakages -----------------------------------------------------------------


def post_webhook(stack: DeployedStack, body: bytes, signature: str) -> int:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body, headers)
    return response.status


def send_bad_signatures(stack: DeployedStack) -> None:
    for number in range(BAD_SIGNATURES):
        body = meta_payloads.encode(meta_payloads.whatsapp_text(f"e2e forged {number}"))
        status = post_webhook(stack, body, meta_payloads.sign(body, secrets.token_hex(16)))
        assert status == 403, f"a wrong signature was answered {status}"


def send_over_the_rate_limit(stack: DeployedStack) -> None:
    """One conversation: RATE_LIMIT_PER_30S messages, then OVER_THE_LIMIT more, at once."""
    app_secret = read_env_file(secrets_file("local"))["META_APP_SECRET"]
    sender = f"3369{secrets.randbelow(10**8):08d}"
    phone_number_id = stack.settings["meta"]["wa_phone_number_id"]
    at_the_start_of_a_rate_window()
    for number in range(RATE_LIMIT_PER_30S + OVER_THE_LIMIT):
        body = meta_payloads.encode(
            meta_payloads.whatsapp_text(f"e2e flood {number}", sender=sender, phone_number_id=phone_number_id)
        )
        status = post_webhook(stack, body, meta_payloads.sign(body, app_secret))
        assert status == 200, f"message {number} of the flood was answered {status}"


def events_since(stack: DeployedStack, since: str) -> dict[str, int]:
    rows = stack_sql(
        stack,
        "SELECT event_type, count(*) FROM security_events WHERE created_at >= :'since'::timestamptz "
        "GROUP BY event_type",
        since=since + "Z",
    )
    return {event: int(count) for event, count in (row.split("|") for row in rows.splitlines() if row)}


def leave_a_message_stuck(stack: DeployedStack) -> str:
    """n8n-worker stopped (nothing re-drives), then a row left RECEIVED as if its background step died long ago."""
    stack.ssh("docker", "stop", container("n8n-worker"))
    msg_id = f"wamid.e2e-stuck-{secrets.token_hex(6)}"
    stack_sql(
        stack,
        "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, text, payload, "
        "received_at) VALUES ('whatsapp', :'msg_id', 'whatsapp:e2e:33600000077', '33600000077', "
        "'Bonjour', '{}'::jsonb, now() - make_interval(secs => :age))",
        msg_id=msg_id,
        age=str(STUCK_SECONDS + 120),
    )
    return msg_id


def break_the_backups_directory(stack: DeployedStack) -> None:
    stack.ssh("chmod", "000", BACKUP.directory)
    failed = stack.ssh(BACKUP.script, check=False)
    assert failed.returncode != 0, "the backup ran into an unwritable directory and succeeded"


def repair_the_backups_directory(stack: DeployedStack) -> None:
    stack.ssh("chmod", "700", BACKUP.directory)
    stack.ssh(BACKUP.script, timeout=300)


FIXES: list[tuple[str, Callable[[DeployedStack], Any]]] = [
    (
        "start nginx",
        lambda stack: stack.ssh("docker", "start", container("nginx"), check=False),
    ),
    (
        "resume blackbox-exporter",
        lambda stack: stack.ssh(
            "docker",
            "kill",
            "--signal",
            "CONT",
            container("blackbox-exporter"),
            check=False,
        ),
    ),
    (
        "delete the disk's filler",
        lambda stack: stack.ssh("rm", "-f", FILL_FILE, check=False),
    ),
    (
        "start n8n-worker",
        lambda stack: stack.ssh("docker", "start", container("n8n-worker"), check=False),
    ),
    ("put the backups directory back", repair_the_backups_directory),
]


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def disk_threshold(deployed_stack) -> int:
    return lowered_disk_percent(docker_disk(deployed_stack))


@pytest.fixture(scope="module")
def watched(deployed_stack, disk_threshold, tmp_path_factory):
    """The stack redeployed with LOWERED monitoring; deployed back with its own settings after."""
    monitoring = {
        **deployed_stack.settings.get("monitoring", {}),
        **LOWERED,
        "disk_percent": disk_threshold,
    }
    settings = {**deployed_stack.settings, "monitoring": monitoring}
    inventory = write_inventory(
        tmp_path_factory.mktemp("monitoring") / "e2e.py",
        settings,
        group="e2e",
        name="e2e-vps",
    )
    lowered = run_deploy(inventory, release="e2e-monitoring")
    assert lowered.returncode == 0, f"the deploy with lowered monitoring failed\n{lowered.output_tail()}"
    yield deployed_stack
    for _, fix in FIXES:
        fix(deployed_stack)
    back = deployed_stack.deploy(release="e2e-base")
    assert back.returncode == 0, f"deploying the stack back failed\n{back.output_tail()}"


def matching_active(stack: DeployedStack) -> list[str]:
    return sorted({str(alert) for alert in ALERTS for active in active_alerts(stack) if alert.matches(active)})


@pytest.fixture(scope="module")
def broken(watched, disk_threshold):
    """Everything broken, after no watched alert is pending or firing: the time of the break (UTC)."""
    watched.ssh(BACKUP.script, timeout=300)  # a good run recorded, whatever the previous modules left
    poll(
        lambda: matching_active(watched),
        until=lambda active: not active,
        timeout=150,
        interval=3,
        what="no watched alert pending or firing before anything is broken (the previous modules' events "
        "leave the 1-minute window)",
    )
    quiet_since = time.monotonic()
    watched.meta.reset()
    since = utc_now()
    # First what no previous module can have left firing (and the slowest to fire: 3 failed healthchecks).
    watched.ssh("docker", "kill", "--signal", "STOP", container("blackbox-exporter"))
    fill_past(watched, disk_threshold)
    # Alertmanager posts a resolve at the group's next interval; an alert resolved just before the check
    # above and firing again before that post is never posted again (its notification log counts it as
    # sent): the alerts that the previous modules may have raised are broken once that interval is over.
    time.sleep(max(0.0, quiet_since + GROUP_INTERVAL_SECONDS + 10 - time.monotonic()))
    send_bad_signatures(watched)
    send_over_the_rate_limit(watched)
    # The events are recorded by the workflows on n8n-worker, which the stuck message stops.
    poll(
        lambda: events_since(watched, since),
        until=lambda events: (
            events.get("SIGNATURE_INVALID", 0) >= BAD_SIGNATURES and events.get("RATE_LIMIT", 0) >= OVER_THE_LIMIT
        ),
        timeout=60,
        interval=1,
        what="the bad signatures and the rate-limited messages recorded",
    )
    watched.ssh("docker", "stop", container("nginx"))
    break_the_backups_directory(watched)
    leave_a_message_stuck(watched)
    return since


@pytest.fixture(scope="module")
def fired(watched, broken) -> dict[Alert, dict[str, Any] | None]:
    """Each alert's first firing post, None when it did not come within FIRING_WITHIN_SECONDS."""
    return wait_for_each(lambda alert: first_firing(watched, alert, broken), FIRING_WITHIN_SECONDS)


@pytest.fixture(scope="module")
def resolved(watched, fired) -> dict[Alert, dict[str, Any] | None]:
    """Everything fixed; each fired alert's resolve post, None when it did not come in time."""
    for _, fix in FIXES:
        fix(watched)
    return wait_for_each(
        lambda alert: fired[alert] and its_resolve(watched, fired[alert]),
        RESOLVED_WITHIN_SECONDS,
    )


def wait_for_each(post_of: Callable[[Alert], dict[str, Any] | None], seconds: float) -> dict[Alert, Any]:
    """``post_of`` each alert, asked until all are there or ``seconds`` have gone by."""
    try:
        poll(
            lambda: all(post_of(alert) for alert in ALERTS),
            timeout=seconds,
            interval=2,
            what="every alert's post",
        )
    except PollTimeout:
        pass  # each test below names its own missing post
    return {alert: post_of(alert) for alert in ALERTS}


# --- tests -------------------------------------------------------------------------


@pytest.mark.parametrize("alert", ALERTS, ids=str)
def test_the_breakage_is_posted_firing_to_the_alert_webhook(fired, alert):
    assert fired[alert], (
        f"{alert} was not posted firing within {FIRING_WITHIN_SECONDS} s of the break; "
        f"posted: {sorted({a['labels']['alertname'] for a in fired.values() if a})}"
    )


@pytest.mark.parametrize("alert", ALERTS, ids=str)
def test_the_fix_is_posted_resolved(fired, resolved, alert):
    if not fired[alert]:
        pytest.fail(f"{alert} never fired: nothing to resolve", pytrace=False)
    assert resolved[alert], f"{alert} was not posted resolved within {RESOLVED_WITHIN_SECONDS} s of the fix"


def test_the_firing_alerts_carry_the_stage_and_a_severity(fired):
    for alert, post in fired.items():
        if post:
            assert post["labels"]["stage"] == "local", alert
            assert post["labels"]["severity"] in ("critical", "warning"), alert


def test_the_container_down_alert_names_the_service(fired):
    post = fired[ALERTS[0]]
    assert post and post["annotations"]["summary"] == "Container nginx is not running"


def test_the_stuck_message_was_re_driven_by_the_sweeper(watched, resolved):
    """The resolve of RestobotMessagesStuck comes from the row leaving RECEIVED, not from the row going away."""
    rows = stack_sql(
        watched,
        "SELECT status FROM inbound_messages WHERE msg_id LIKE 'wamid.e2e-stuck-%' AND redrive_count > 0",
    )
    assert rows and "RECEIVED" not in rows.splitlines(), f"the stuck row's status: {rows!r}"


def test_no_secret_is_in_the_posted_alerts(watched, resolved):
    text = " ".join(str(request["body"]) for request in watched.meta.requests() if request["path"] == "/alerts")
    secret_values = {name: value for name, value in read_env_file(secrets_file("local")).items() if len(value) >= 12}
    assert secret_values, "no secret read from secrets/local.env: this check would hold whatever was posted"
    leaked = [name for name, value in secret_values.items() if value in text]
    assert not leaked, f"secrets in the posted alerts: {leaked}"
