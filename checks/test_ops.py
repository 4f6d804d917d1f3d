"""Backups and monitoring: the runbook's "Backup DB configuré et testé" and "Monitoring/alertes configurés"."""

from __future__ import annotations

import json
import time

import pytest
from conftest import container

from restobot import golive

# --- backups --------------------------------------------------------------------------------


def _scheduled_dir(target) -> str:
    return f"{target.layout.backups_dir}/scheduled"


def test_backup_schedule_is_installed(target, evidence):
    script = f"{target.settings.host.base_dir}/bin/backup"
    result = target.host.run(
        f"grep -lsF {script} /etc/cron.d/* /var/spool/cron/crontabs/* /etc/crontab 2>/dev/null")
    assert result.stdout.strip(), f"no cron entry runs {script} (looked in /etc/cron.d, the crontabs, /etc/crontab)"
    evidence(f"{script} scheduled in {result.stdout.split()[0]}")


def test_retention_cleanup_is_scheduled(target, evidence):
    script = f"{target.settings.host.base_dir}/bin/cleanup"
    result = target.host.run(f"grep -sF {script} /etc/cron.d/restobot-cleanup")
    assert result.rc == 0 and result.stdout.strip(), (
        f"no cron entry runs {script} (/etc/cron.d/restobot-cleanup): rows past their retention are kept "
        "for ever; deploy again")
    schedule = " ".join(result.stdout.split()[:5])
    assert schedule == target.settings.retention.schedule, (
        f"the cleanup runs at '{schedule}', the settings say '{target.settings.retention.schedule}': deploy again")
    evidence(f"{script} at '{schedule}'")


def test_cron_daemon_is_running(target, evidence):
    result = target.host.run("pgrep -x cron || pgrep -x crond")
    assert result.rc == 0, "no cron daemon runs: the backup schedule never fires"
    evidence(f"cron pid {result.stdout.split()[0]}")


def test_latest_backup_is_newer_than_its_period(target, evidence):
    stamp = f"{_scheduled_dir(target)}/last-success"
    period = target.settings.backup.period_seconds
    allowed = target.settings.backup_max_age_seconds  # monitoring.backup_max_age_hours, or the period + 10 %
    result = target.host.run(f"now=$(date +%s); m=$(stat -c %Y {stamp}) && echo $((now - m))")
    assert result.rc == 0 and result.stdout.strip().isdigit(), (
        f"no {stamp}: no scheduled backup has succeeded yet"
    )
    age = int(result.stdout.strip())
    assert age <= allowed, (
        f"the last successful backup is {age / 3600:.1f} h old; the schedule '{target.settings.backup.schedule}' "
        f"runs every {period / 3600:.0f} h (allowed: {allowed / 3600:.1f} h)"
    )
    evidence(f"last success {age / 3600:.1f} h ago (period {period / 3600:.0f} h)")


def test_latest_backup_restores_with_the_same_row_counts(target, evidence):
    verify = f"{target.settings.host.base_dir}/bin/backup-verify"
    if not target.host.file(verify).exists:
        pytest.fail(f"{verify} is missing: the backup cannot be proven restorable")
    result = target.host.run(verify)
    last = (result.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        report = json.loads(last)
    except json.JSONDecodeError:
        pytest.fail(f"{verify} exited {result.rc} without its JSON report: {(result.stdout + result.stderr)[-300:]}")
    assert result.rc == 0 and report.get("ok") is True, (
        f"{verify} exited {result.rc}: {json.dumps({k: report.get(k) for k in ('dump', 'tables', 'error') if k in report})[:400]}"
    )
    evidence(f"{report.get('dump')} restored in {report.get('restore_seconds')} s, "
             f"{len(report.get('tables') or {})} tables with equal row counts")


# --- monitoring and alerts ---------------------------------------------------------------------


@pytest.mark.parametrize("threshold", sorted(golive.RUNBOOK_THRESHOLDS))
def test_threshold_is_within_the_runbook(target, threshold, evidence):
    value = getattr(target.settings.monitoring, threshold)
    limit = golive.RUNBOOK_THRESHOLDS[threshold]
    assert value <= limit, f"monitoring.{threshold} is {value}, above the runbook's alert threshold {limit}"
    evidence(f"{threshold} = {value} (runbook: {limit})")


def test_alert_destination_is_configured_in_n8n(target, evidence):
    configured = target.settings.pipeline.alert_webhook_url
    assert configured is not None, "pipeline.alert_webhook_url (ALERT_WEBHOOK_URL) is not set: alerts go nowhere"
    running = target.container_env("n8n-main", "ALERT_WEBHOOK_URL")
    assert running == str(configured), "ALERT_WEBHOOK_URL in n8n-main is not the settings' (deploy again)"
    evidence(f"ALERT_WEBHOOK_URL set in n8n-main ({configured.host})")


NODE_POST = """
const url = process.env.ALERT_WEBHOOK_URL;
if (!url) { console.log('unset'); process.exit(3); }
const text = process.argv[1];
fetch(url, {method: 'POST', headers: {'content-type': 'application/json'},
  body: JSON.stringify({text, content: text, test: true}), signal: AbortSignal.timeout(8000)})
  .then((r) => { console.log(r.status); process.exit(r.ok ? 0 : 1); })
  .catch((e) => { console.log('error ' + (e.cause && e.cause.code || e.message)); process.exit(2); });
"""


def test_alert_destination_answers_a_test_alert(target, evidence):
    """Posted from n8n-main itself (the path real alerts take), Slack/Discord-compatible."""
    if target.settings.pipeline.alert_webhook_url is None:
        pytest.fail("pipeline.alert_webhook_url is not set: no destination to test")
    message = f"[{target.settings.stage.value}] go-live checklist: test alert, no action needed ({time.strftime('%Y-%m-%d %H:%M')})"
    result = target.run("docker", "exec", container("n8n-main"), "node", "-e", NODE_POST, message)
    answer = result.stdout.strip()
    assert result.rc == 0, f"the alert destination answered {answer or result.stderr.strip()[-200:]} to a test alert"
    evidence(f"test alert answered {answer}")


PROMETHEUS_RULES_URL = "http://127.0.0.1:9090/api/v1/rules?type=alert"
PROMETHEUS_TARGETS_URL = "http://127.0.0.1:9090/api/v1/targets?state=active"
ALERTMANAGER_CONFIG = "/etc/alertmanager/alertmanager.yml"


def _loaded_rules(target) -> dict[str, str]:
    """The alert rules the running Prometheus evaluates, read inside its container (nothing is published)."""
    result = target.run("docker", "exec", container("prometheus"), "wget", "-q", "-O", "-", PROMETHEUS_RULES_URL)
    assert result.rc == 0, f"Prometheus's rules API did not answer: {(result.stderr or result.stdout).strip()[-300:]}"
    return golive.loaded_alert_rules(result.stdout)


@pytest.mark.parametrize("alert", sorted(golive.RUNBOOK_ALERT_RULES))
def test_runbook_alert_rule_is_loaded_in_prometheus(target, alert, evidence):
    loaded = _loaded_rules(target)
    wanted = golive.RUNBOOK_ALERT_RULES[alert]
    missing = [rule for rule in wanted if rule not in loaded]
    assert not missing, f"{', '.join(missing)} not loaded in the running Prometheus (deploy again)"
    broken = [f"{rule} ({loaded[rule]})" for rule in wanted if loaded[rule] == "err"]
    assert not broken, f"rules failing to evaluate: {', '.join(broken)}"
    evidence(", ".join(f"{rule} {loaded[rule]}" for rule in wanted))


@pytest.mark.parametrize("alert", sorted(golive.RUNBOOK_ALERT_RULES))
def test_runbook_alert_is_routed_to_the_alert_destination(target, alert, evidence):
    """Alertmanager's own route test on its running configuration, then the receiver's URL against the settings'."""
    for rule in golive.RUNBOOK_ALERT_RULES[alert]:
        result = target.run("docker", "exec", container("alertmanager"), "amtool", "config", "routes", "test",
                            f"--config.file={ALERTMANAGER_CONFIG}", f"alertname={rule}",
                            f"stage={target.settings.stage.value}")
        assert result.rc == 0, f"amtool could not test the route: {(result.stderr or result.stdout).strip()[-300:]}"
        receivers = golive.routed_receivers(result.stdout)
        assert receivers == [golive.ALERT_RECEIVER], f"{rule} is routed to {receivers}, not {golive.ALERT_RECEIVER}"
    configured = target.settings.pipeline.alert_webhook_url
    assert configured is not None, "pipeline.alert_webhook_url (ALERT_WEBHOOK_URL) is not set: alerts go nowhere"
    running = target.run("docker", "exec", container("alertmanager"), "cat", ALERTMANAGER_CONFIG)
    assert running.rc == 0, f"cannot read Alertmanager's configuration: {running.stderr.strip()[-200:]}"
    alert_format = target.settings.monitoring.alert_format
    urls = golive.receiver_urls(running.stdout, golive.ALERT_RECEIVER, alert_format)
    assert urls == [str(configured)], (
        f"{golive.ALERT_RECEIVER} does not post to ALERT_WEBHOOK_URL as {alert_format} with resolves (deploy again)")
    evidence(f"{', '.join(golive.RUNBOOK_ALERT_RULES[alert])} -> {golive.ALERT_RECEIVER} ({alert_format}, "
             f"{configured.host})")


def _scrape_targets(target) -> dict[str, str]:
    result = target.run("docker", "exec", container("prometheus"), "wget", "-q", "-O", "-", PROMETHEUS_TARGETS_URL)
    assert result.rc == 0, f"Prometheus's targets API did not answer: {(result.stderr or result.stdout).strip()[-300:]}"
    return golive.scrape_targets(result.stdout)


def test_every_scrape_target_is_up(target, evidence):
    """Every source the alerts read (exporters, probes, n8n's own /metrics) answers Prometheus. A target not
    scraped yet (just deployed) is waited for, up to two scrape intervals."""
    deadline = time.monotonic() + 2 * target.settings.monitoring.scrape_interval_seconds + 5
    targets = _scrape_targets(target)
    while any(health == "unknown" for health in targets.values()) and time.monotonic() < deadline:
        time.sleep(2)
        targets = _scrape_targets(target)
    assert targets, "Prometheus scrapes nothing (deploy again)"
    failing = sorted(f"{name} ({health})" for name, health in targets.items() if health != "up")
    assert not failing, f"scrape targets not up: {', '.join(failing)} (resto STAGE status, then the target's logs)"
    evidence(f"{len(targets)} up: " + ", ".join(sorted({name.split()[0] for name in targets})))
