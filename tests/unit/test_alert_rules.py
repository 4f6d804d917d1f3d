"""The alert rules (templates/monitoring/alerts.yml.j2), fired and kept silent offline by `promtool test rules`.

Each alert has one case: input series above its threshold (the alert fires, with these labels and this
text) and the same series at or below it (silent). The thresholds are not the runbook's defaults, so a
rule that ignored its setting fails. promtool is Debian's (scripts/setup-host installs it), the version
of the local Prometheus stand-in.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from restobot.render import render_monitoring, write_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage

# Every threshold moved off its default: each rule must read its own setting.
MONITORING = {
    "cpu_percent": 70, "memory_percent": 75, "disk_percent": 80, "redis_queue_length": 500,
    "errors_per_hour": 7, "signature_errors_per_hour": 4, "rate_limited_per_hour": 30, "events_window_minutes": 30,
    "sustained_minutes": 3, "down_minutes": 4, "certificate_min_days": 20, "backup_max_age_hours": 30,
}
PIPELINE = {"dlq_alert_threshold": 6, "inbound_stuck_alert_seconds": 1260}
EVAL = "10m"  # past every `for:` above
EVAL_SECONDS = 600
DOWN = MONITORING["down_minutes"]
SUSTAINED = MONITORING["sustained_minutes"]
MAX_AGE = MONITORING["backup_max_age_hours"] * 3600


@dataclass(frozen=True)
class Case:
    """Input series when the alert must fire, when it must not, and the alert it raises."""

    firing: dict[str, float]
    silent: dict[str, float]
    labels: dict[str, str]
    summary: str
    description: str
    # Further firing alerts beyond the first (same rule, other series).
    more: tuple[dict[str, str], ...] = field(default=())


def fs(metric: str, mountpoint: str = "/", fstype: str = "ext4") -> str:
    return f'{metric}{{device="/dev/vda1",fstype="{fstype}",mountpoint="{mountpoint}"}}'


EVENTS = "restobot_security_events_in_window"
CASES: dict[str, Case] = {
    "RestobotContainerDown": Case(
        firing={'restobot_container_running{service="n8n-worker"}': 0,
                'restobot_container_running{service="postgres"}': 1},
        silent={'restobot_container_running{service="n8n-worker"}': 1},
        labels={"severity": "critical", "service": "n8n-worker"},
        summary="Container n8n-worker is not running",
        description=f"The n8n-worker container has not been running for {DOWN} minutes."),
    "RestobotContainerUnhealthy": Case(
        firing={'restobot_container_healthy{service="nginx"}': 0},
        silent={'restobot_container_healthy{service="nginx"}': 1},
        labels={"severity": "critical", "service": "nginx"},
        summary="Container nginx fails its healthcheck",
        description=f"Docker has reported nginx unhealthy for {DOWN} minutes."),
    "RestobotContainerStateUnknown": Case(
        firing={'up{job="node"}': 1},
        silent={'restobot_container_running{service="nginx"}': 1},
        labels={"severity": "critical"},
        summary="The container states are not reported",
        description=f"No restobot_container_running series for {DOWN} minutes: container down and healthcheck "
                    "alerts cannot fire."),
    "RestobotPublicProbeFailing": Case(
        firing={'probe_success{job="blackbox-api-healthz",probe="api-healthz"}': 0},
        silent={'probe_success{job="blackbox-api-healthz",probe="api-healthz"}': 1},
        labels={"severity": "critical", "job": "blackbox-api-healthz", "probe": "api-healthz"},
        summary="Public probe api-healthz fails",
        description=f"The probe api-healthz has failed for {DOWN} minutes."),
    "RestobotMonitoringTargetDown": Case(
        firing={'up{job="postgres"}': 0},
        silent={'up{job="postgres"}': 1},
        labels={"severity": "warning", "job": "postgres"},
        summary="Prometheus cannot scrape postgres",
        description=f"The postgres target has been down for {DOWN} minutes: the alerts fed by it cannot fire."),
    "RestobotPostgresDown": Case(
        firing={'pg_up{job="postgres"}': 0},
        silent={'pg_up{job="postgres"}': 1},
        labels={"severity": "critical", "job": "postgres"},
        summary="PostgreSQL does not answer",
        description=f"postgres-exporter has not reached PostgreSQL for {DOWN} minutes."),
    "RestobotRedisDown": Case(
        firing={'redis_up{job="redis"}': 0},
        silent={'redis_up{job="redis"}': 1},
        labels={"severity": "critical", "job": "redis"},
        summary="Redis does not answer",
        description=f"redis-exporter has not reached Redis for {DOWN} minutes."),
    "RestobotCertificateExpiring": Case(
        firing={'probe_ssl_earliest_cert_expiry{probe="api-healthz"}': 19 * 86400 + EVAL_SECONDS},
        silent={'probe_ssl_earliest_cert_expiry{probe="api-healthz"}': 21 * 86400 + EVAL_SECONDS},
        labels={"severity": "warning", "probe": "api-healthz"},
        summary="The certificate of api-healthz expires in 19 days",
        description="Under the 20-day margin: check Traefik's ACME renewals."),
    "RestobotHighCpu": Case(
        firing={'restobot_container_cpu_percent{service="n8n-main"}': 71},
        # Only n8n's CPU is watched (the runbook's "CPU n8n"): PostgreSQL at 95 % stays silent.
        silent={'restobot_container_cpu_percent{service="n8n-main"}': 70,
                'restobot_container_cpu_percent{service="postgres"}': 95},
        labels={"severity": "warning", "service": "n8n-main"},
        summary="n8n-main uses 71% CPU",
        description=f"Above 70% for {SUSTAINED} minutes (docker stats)."),
    "RestobotHighMemory": Case(
        firing={"node_memory_MemAvailable_bytes": 24, "node_memory_MemTotal_bytes": 100},
        silent={"node_memory_MemAvailable_bytes": 25, "node_memory_MemTotal_bytes": 100},
        labels={"severity": "warning"},
        summary="Memory 76% used",
        description=f"Above 75% for {SUSTAINED} minutes."),
    "RestobotDiskFull": Case(
        firing={fs("node_filesystem_avail_bytes"): 19, fs("node_filesystem_size_bytes"): 100},
        # A full tmpfs is no disk.
        silent={fs("node_filesystem_avail_bytes"): 20, fs("node_filesystem_size_bytes"): 100,
                fs("node_filesystem_avail_bytes", "/run", "tmpfs"): 1,
                fs("node_filesystem_size_bytes", "/run", "tmpfs"): 100},
        labels={"severity": "critical", "device": "/dev/vda1", "fstype": "ext4", "mountpoint": "/"},
        summary="/ is 81% full",
        description=f"Above 80% for {SUSTAINED} minutes."),
    "RestobotInodesFull": Case(
        firing={fs("node_filesystem_files_free"): 1900, fs("node_filesystem_files"): 10000},
        silent={fs("node_filesystem_files_free"): 2000, fs("node_filesystem_files"): 10000},
        labels={"severity": "critical", "device": "/dev/vda1", "fstype": "ext4", "mountpoint": "/"},
        summary="/ uses 81% of its inodes",
        description=f"Above 80% for {SUSTAINED} minutes."),
    "RestobotRedisQueueLong": Case(
        firing={'redis_key_size{key="bull:jobs:wait"}': 300, 'redis_key_size{key="bull:jobs:prioritized"}': 200,
                'redis_key_size{key="bull:jobs:paused"}': 1},
        # 500 is not above 500; completed jobs are not waiting.
        silent={'redis_key_size{key="bull:jobs:wait"}': 300, 'redis_key_size{key="bull:jobs:prioritized"}': 200,
                'redis_key_size{key="bull:jobs:completed"}': 10000},
        labels={"severity": "warning"},
        summary="501 jobs wait in n8n's queue",
        description=f"Above 500 for {SUSTAINED} minutes: the worker does not keep up."),
    "RestobotErrorsPerHour": Case(
        firing={f'{EVENTS}{{event_type="AUTH_FAILED"}}': 5, f'{EVENTS}{{event_type="PAYLOAD_INVALID"}}': 3},
        # Meta's retries (REPLAY), rate limiting and a quarantined sender's refused messages have their
        # own meaning: not errors.
        silent={f'{EVENTS}{{event_type="AUTH_FAILED"}}': 4, f'{EVENTS}{{event_type="PAYLOAD_INVALID"}}': 3,
                f'{EVENTS}{{event_type="REPLAY"}}': 500, f'{EVENTS}{{event_type="RATE_LIMIT"}}': 500,
                f'{EVENTS}{{event_type="QUARANTINED"}}': 500},
        labels={"severity": "warning"},
        summary="8 errors in the last 30 minutes",
        description="security_events other than REPLAY, RATE_LIMIT and QUARANTINED, above 7 per 30 minutes."),
    "RestobotSignatureErrors": Case(
        firing={f'{EVENTS}{{event_type="SIGNATURE_INVALID"}}': 3, f'{EVENTS}{{event_type="SIGNATURE_MISSING"}}': 2},
        silent={f'{EVENTS}{{event_type="SIGNATURE_INVALID"}}': 2, f'{EVENTS}{{event_type="SIGNATURE_MISSING"}}': 2,
                f'{EVENTS}{{event_type="AUTH_FAILED"}}': 100},
        labels={"severity": "critical"},
        summary="5 signature errors in the last 30 minutes",
        description="Webhook requests with a wrong or missing Meta signature, above 4 per 30 minutes: a potential attack."),
    "RestobotRateLimitExcessive": Case(
        firing={f'{EVENTS}{{event_type="RATE_LIMIT"}}': 31},
        silent={f'{EVENTS}{{event_type="RATE_LIMIT"}}': 30, f'{EVENTS}{{event_type="REPLAY"}}': 100},
        labels={"severity": "warning"},
        summary="31 messages rate-limited in the last 30 minutes",
        description="RATE_LIMIT events above 30 per 30 minutes (the limit is 10 per conversation per 30 s)."),
    "RestobotN8nJobsFailing": Case(
        firing={"n8n_scaling_mode_queue_jobs_failed": "0+1x15"},     # 10 failed by EVAL
        silent={"n8n_scaling_mode_queue_jobs_failed": "0+0.5x15"},   # 5
        labels={"severity": "warning"},
        summary="10 n8n queue jobs failed in the last 30 minutes",
        description="Jobs the workers could not finish (a worker crashed or stalled mid-execution; n8n's own figure), "
                    "above 7 per 30 minutes: resto production status, and the n8n-worker logs."),
    "RestobotMessagesStuck": Case(
        firing={"restobot_inbound_received_oldest_age_seconds": 1320},
        silent={"restobot_inbound_received_oldest_age_seconds": 1260},
        labels={"severity": "critical"},
        summary="An inbound message has waited 22m 0s in RECEIVED",
        description="Older than 1260 s: nothing re-drives it (is n8n down?)."),
    "RestobotReplyOutcomeUnknown": Case(
        firing={"restobot_outbound_outcome_unknown": 2},
        silent={"restobot_outbound_outcome_unknown": 0},
        labels={"severity": "warning"},
        summary="2 replies may not have reached their customer",
        description="The worker was lost between sending each and recording Meta's answer, and W3 parked them in "
                    "the DLQ (pipeline.on_uncertain_send: park): resto production dlq list shows them; "
                    "resto production dlq replay sends them again."),
    "RestobotBackupFailed": Case(
        firing={"restobot_backup_last_run_success": 0},
        silent={"restobot_backup_last_run_success": 1},
        labels={"severity": "critical"},
        summary="The last scheduled backup failed",
        description="See the backup's log on the host; the newest good dump stays in the backups directory."),
    "RestobotBackupTooOld": Case(
        firing={"restobot_backup_last_success_timestamp_seconds": EVAL_SECONDS - MAX_AGE - 3600},
        silent={"restobot_backup_last_success_timestamp_seconds": EVAL_SECONDS - MAX_AGE + 3600},
        labels={"severity": "critical"},
        summary="No successful backup for over 30 h",
        description="The schedule '17 3 * * *' should have produced one: check cron and the backup's log."),
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (scripts/setup-host installs it from Debian's prometheus package)")
    return path


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    settings = settings_for_stage("production", generate_secrets(), monitoring=MONITORING, pipeline=PIPELINE)
    directory = tmp_path_factory.mktemp("monitoring")
    write_release(render_monitoring(settings), directory)
    return directory / "monitoring" / "prometheus" / "alerts.yml"


def rule_names(rules: Path) -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]]


def promtool_test(promtool: str, rules: Path, name: str, series: dict[str, float | str],
                  alerts: list[dict]) -> subprocess.CompletedProcess[str]:
    """Run one `promtool test rules` case: ``series`` constant for 15 minutes (or a promtool values
    expression, for a counter), ``alerts`` expected at EVAL."""
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": key, "values": value if isinstance(value, str) else f"{value:.17g}x15"}
                             for key, value in series.items()],
            "alert_rule_test": [{"eval_time": EVAL, "alertname": name, "exp_alerts": alerts}],
        }],
    }
    path = rules.parent / f"test-{name}-{len(alerts)}.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def expected(case: Case) -> list[dict]:
    return [{"exp_labels": case.labels,
             "exp_annotations": {"summary": case.summary, "description": case.description}}]


def test_every_rule_has_a_case(rules):
    assert sorted(rule_names(rules)) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_alert_fires_above_its_threshold(promtool, rules, name):
    case = CASES[name]
    result = promtool_test(promtool, rules, name, case.firing, expected(case))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_alert_stays_silent_at_or_below_its_threshold(promtool, rules, name):
    result = promtool_test(promtool, rules, name, CASES[name].silent, [])
    assert result.returncode == 0, result.stdout + result.stderr


def test_backup_alert_fires_when_no_backup_was_ever_recorded(promtool, rules):
    result = promtool_test(promtool, rules, "RestobotBackupTooOld", {'up{job="node"}': 1}, [{
        "exp_labels": {"severity": "critical"},
        "exp_annotations": {"summary": CASES["RestobotBackupTooOld"].summary,
                            "description": CASES["RestobotBackupTooOld"].description},
    }])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_case_whose_alert_did_not_behave(promtool, rules):
    """The harness can fail: a firing input against an expected silence is reported, with the alert it got."""
    result = promtool_test(promtool, rules, "RestobotDiskFull", CASES["RestobotDiskFull"].firing, [])
    assert result.returncode != 0
    assert "RestobotDiskFull" in result.stdout + result.stderr


def test_the_runbook_alerts_each_have_a_rule(rules):
    """The runbook's recommended alerts, its thresholds table, and #13's additions, each named by a rule."""
    runbook = {
        "container down": "RestobotContainerDown", "healthcheck fail": "RestobotContainerUnhealthy",
        "public healthz": "RestobotPublicProbeFailing", "signature errors": "RestobotSignatureErrors",
        "rate limit excessive": "RestobotRateLimitExcessive", "disk > 90%": "RestobotDiskFull",
        "CPU n8n > 80%": "RestobotHighCpu", "memory > 85%": "RestobotHighMemory",
        "Redis queue > 1000": "RestobotRedisQueueLong", "errors/hour > 10": "RestobotErrorsPerHour",
        "backup failed": "RestobotBackupFailed", "backup too old": "RestobotBackupTooOld",
        "certificate expiring": "RestobotCertificateExpiring", "messages stuck": "RestobotMessagesStuck",
    }
    missing = {item: name for item, name in runbook.items() if name not in rule_names(rules)}
    assert not missing


def test_the_dlq_alert_is_w8s_alone():
    """The runbook's W8_DLQ_HANDLER posts the DLQ alert (DLQ_ALERT_THRESHOLD, ALERT_WEBHOOK_URL): no rule
    announces the same condition a second time. The DLQ count stays a metric, for the dashboards."""
    rules = render_monitoring(settings_for_stage("production", generate_secrets()))
    text = rules["monitoring/prometheus/alerts.yml"].text
    assert "DLQ" not in "".join(line for line in text.splitlines() if "alert:" in line or "expr:" in line)
    assert "restobot_outbound:" in rules["monitoring/postgres-exporter/queries.yml"].text


# --- the off-site backup's alerts: rendered only while offsite_backup is enabled ---------------------

OFFSITE = {"enabled": True, "schedule": "37 3 * * *",
           "sftp": {"host": "backup.example.net", "user": "u12345", "path": "/backups/resto",
                    "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsycvnFokzgwk+wg/3g55PO3cJm/0hW975MP6JNfpp8",  # pragma: allowlist secret
                    "key_path": "/home/ops/.ssh/resto-offsite"}}
# A day's schedule: 24 h + 10 % + an hour.
OFFSITE_MAX_AGE = int(86400 * 1.1) + 3600
# The drill's weekly default: 7 days + 10 % + an hour.
DRILL_MAX_AGE = int(7 * 86400 * 1.1) + 3600
OFFSITE_CASES: dict[str, Case] = {
    "RestobotOffsiteBackupFailed": Case(
        firing={"restobot_offsite_backup_last_run_success": 0},
        silent={"restobot_offsite_backup_last_run_success": 1},
        labels={"severity": "critical"},
        summary="The last off-site backup run failed",
        description="Tonight's pgBackRest backup, check or verify failed (the backup log on the host says which); "
                    "WAL archiving may have stopped too: resto production backup offsite info --check."),
    "RestobotOffsiteBackupTooOld": Case(
        firing={"restobot_offsite_backup_last_success_timestamp_seconds": EVAL_SECONDS - OFFSITE_MAX_AGE - 3600},
        silent={"restobot_offsite_backup_last_success_timestamp_seconds": EVAL_SECONDS - OFFSITE_MAX_AGE + 3600},
        labels={"severity": "critical"},
        summary=f"No successful off-site backup run for over {OFFSITE_MAX_AGE / 3600:g} h",
        description="The schedule '37 3 * * *' should have produced one: check cron and the backup's log."),
    "RestobotWalArchiveFailing": Case(
        firing={"restobot_wal_archive_failing": 1},
        silent={"restobot_wal_archive_failing": 0},
        labels={"severity": "critical"},
        summary="PostgreSQL cannot archive its WAL to the off-site repository",
        description="archive_command (pgBackRest's archive-push) fails: the WAL piles up in pg_wal until the disk "
                    "is full, and a point-in-time restore stops at the last archived segment. "
                    "resto production backup offsite info --check says why."),
    "RestobotRestoreDrillFailed": Case(
        firing={"restobot_offsite_restore_drill_last_run_success": 0},
        silent={"restobot_offsite_restore_drill_last_run_success": 1},
        labels={"severity": "critical"},
        summary="The last off-site restore drill failed",
        description="The repository's latest point did not restore into a scratch instance, or lacked rows the "
                    "live database had: its report is in the backup log on the host. Until a drill passes, assume "
                    "the off-site backup cannot be restored; run it again: sudo /opt/resto/bin/offsite-restore-drill."),
    "RestobotRestoreDrillTooOld": Case(
        firing={"restobot_offsite_restore_drill_last_success_timestamp_seconds": EVAL_SECONDS - DRILL_MAX_AGE - 3600},
        silent={"restobot_offsite_restore_drill_last_success_timestamp_seconds": EVAL_SECONDS - DRILL_MAX_AGE + 3600},
        labels={"severity": "warning"},
        summary=f"No off-site restore drill has passed for over {DRILL_MAX_AGE / 86400:.1f} days",
        description="The schedule '7 5 * * 0' should have produced one: check cron and the backup's log."),
}


@pytest.fixture(scope="module")
def offsite_rules(tmp_path_factory) -> Path:
    settings = settings_for_stage("production", generate_secrets(), monitoring=MONITORING, pipeline=PIPELINE,
                                  offsite_backup=OFFSITE)
    directory = tmp_path_factory.mktemp("offsite-monitoring")
    write_release(render_monitoring(settings), directory)
    return directory / "monitoring" / "prometheus" / "alerts.yml"


def test_the_offsite_alerts_are_added_while_offsite_is_enabled(offsite_rules):
    assert sorted(rule_names(offsite_rules)) == sorted({**CASES, **OFFSITE_CASES})


@pytest.mark.parametrize("name", sorted(OFFSITE_CASES))
def test_offsite_alert_fires_above_its_threshold_and_stays_silent_below(promtool, offsite_rules, name):
    case = OFFSITE_CASES[name]
    fired = promtool_test(promtool, offsite_rules, name, case.firing, expected(case))
    silent = promtool_test(promtool, offsite_rules, name, case.silent, [])
    assert (fired.returncode, silent.returncode) == (0, 0), fired.stdout + fired.stderr + silent.stdout + silent.stderr


@pytest.mark.parametrize("name", ["RestobotOffsiteBackupTooOld", "RestobotRestoreDrillTooOld"])
def test_offsite_too_old_fires_when_no_run_was_ever_recorded(promtool, offsite_rules, name):
    result = promtool_test(promtool, offsite_rules, name, {'up{job="node"}': 1}, expected(OFFSITE_CASES[name]))
    assert result.returncode == 0, result.stdout + result.stderr
