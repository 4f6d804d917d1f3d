"""The deployed monitoring proven by breaking the thing (#13): a stopped container is alerted, then resolved.

On the shared deployed stack, redeployed with the test inventory's lowered intervals (below), nginx's
container is stopped: the host's container-state writer reports it, Prometheus's RestobotContainerDown
fires after its `for`, and Alertmanager posts it to ALERT_WEBHOOK_URL, which is the Meta double's alert
sink (/alerts, where W8 posts too). Started again, the resolve is posted. The stack is deployed back
with its own settings afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.deploys import DeployedStack, run_deploy, write_inventory
from harness.poll import poll
from restobot.settings import read_env_file, secrets_file

pytestmark = pytest.mark.e2e

SERVICE = "nginx"
CONTAINER = f"resto-{SERVICE}-1"
LOWERED = {
    "container_state_interval_seconds": 5,
    "scrape_interval_seconds": 2,
    "down_minutes": 1,
    "group_wait_seconds": 1,
    "group_interval_minutes": 1,
}
# Firing: the state sample (5 s) + a scrape and an evaluation (2 s each) + the rule's `for` (60 s)
# + group_wait (1 s), with room for a loaded machine. Resolved: sample, scrape, evaluation, then
# Alertmanager's next group_interval (60 s) at the latest.
FIRING_WITHIN_SECONDS = 110
RESOLVED_WITHIN_SECONDS = 110


def posted_alerts(stack: DeployedStack, status: str) -> list[dict[str, Any]]:
    """RestobotContainerDown alerts of SERVICE in ``status`` among Alertmanager's posts to the alert sink."""
    bodies = [request["body"] for request in stack.meta.requests()
              if request["path"] == "/alerts" and isinstance(request["body"], dict)]
    return [alert for body in bodies for alert in body.get("alerts", [])
            if alert.get("status") == status and alert["labels"].get("alertname") == "RestobotContainerDown"
            and alert["labels"].get("service") == SERVICE]


@pytest.fixture(scope="module")
def watched(deployed_stack, tmp_path_factory):
    """The stack redeployed with LOWERED monitoring intervals; deployed back with its own settings after."""
    settings = {**deployed_stack.settings,
                "monitoring": {**deployed_stack.settings.get("monitoring", {}), **LOWERED}}
    inventory = write_inventory(tmp_path_factory.mktemp("monitoring") / "e2e.py", settings, group="e2e",
                                name="e2e-vps")
    lowered = run_deploy(inventory, release="e2e-monitoring")
    assert lowered.returncode == 0, f"the deploy with lowered intervals failed\n{lowered.output_tail()}"
    deployed_stack.meta.reset()
    yield deployed_stack
    deployed_stack.ssh("docker", "start", CONTAINER, check=False)
    back = deployed_stack.deploy(release="e2e-base")
    assert back.returncode == 0, f"deploying the stack back failed\n{back.output_tail()}"


@pytest.fixture(scope="module")
def stopped(watched):
    """SERVICE's container stopped; the RestobotContainerDown alert posted firing, once it arrives."""
    assert not posted_alerts(watched, "firing"), "a container-down alert was posted before anything stopped"
    watched.ssh("docker", "stop", CONTAINER)
    return poll(lambda: posted_alerts(watched, "firing"), timeout=FIRING_WITHIN_SECONDS, interval=2,
                what=f"RestobotContainerDown for {SERVICE} posted firing")


@pytest.fixture(scope="module")
def started_again(watched, stopped):
    """SERVICE's container started again; the alert posted resolved, once it arrives."""
    watched.ssh("docker", "start", CONTAINER)
    return poll(lambda: posted_alerts(watched, "resolved"), timeout=RESOLVED_WITHIN_SECONDS, interval=2,
                what=f"RestobotContainerDown for {SERVICE} posted resolved")


def test_a_stopped_container_is_posted_firing_to_the_alert_webhook(stopped):
    assert stopped[0]["labels"]["severity"] == "critical"
    assert stopped[0]["labels"]["stage"] == "local"


def test_the_firing_alert_names_the_service(stopped):
    assert stopped[0]["annotations"]["summary"] == f"Container {SERVICE} is not running"


def test_the_container_started_again_is_posted_resolved(started_again):
    assert started_again[0]["labels"]["service"] == SERVICE


def test_no_secret_is_in_the_posted_alerts(watched, started_again):
    posted = " ".join(str(request["body"]) for request in watched.meta.requests() if request["path"] == "/alerts")
    secrets = {name: value for name, value in read_env_file(secrets_file("local")).items() if len(value) >= 12}
    assert secrets, "no secret read from secrets/local.env: this check would hold whatever was posted"
    leaked = [name for name, value in secrets.items() if value in posted]
    assert not leaked, f"secrets in the posted alerts: {leaked}"
