"""The monitoring stack's rendered configs: Prometheus's (promtool), Alertmanager's (amtool), the exporters'.

Alertmanager sends every alert to ALERT_WEBHOOK_URL in the chosen format, grouped, with resolve messages;
no secret reaches any of these files, and the webhook URL (it carries the destination's token) only the
0600 alertmanager.yml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from restobot.render import SECRET_MODE, SECURITY_EVENT_TYPES, render_monitoring, write_release
from restobot.secrets import generate_secrets
from restobot.settings import REPO_ROOT
from tests.conftest import settings_for_stage
from tests.unit.test_alert_rules import OFFSITE

WEBHOOK = "https://hooks.example.com/services/T0000/B0000/s3cr3tPartOfTheUrl"
ALERTMANAGER = "monitoring/alertmanager/alertmanager.yml"
RECEIVER_KEY = {"slack": ("slack_configs", "api_url"), "discord": ("discord_configs", "webhook_url"),
                "webhook": ("webhook_configs", "url")}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup-host installs it from Debian's packages)")
    return path


def rendered(tmp_path: Path, stage: str = "production", url: str | None = WEBHOOK, **monitoring) -> Path:
    settings = settings_for_stage(stage, generate_secrets(), monitoring=monitoring,
                                  pipeline={"alert_webhook_url": url})
    write_release(render_monitoring(settings), tmp_path)
    return tmp_path / "monitoring"


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("stage", ["production", "staging"])
def test_prometheus_config_and_its_rules_pass_promtool(tmp_path, stage):
    directory = rendered(tmp_path, stage)
    result = run(tool("promtool"), "check", "config", str(directory / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_prometheus_scrapes_every_exporter_and_probes_both_names(tmp_path):
    config = yaml.safe_load((rendered(tmp_path) / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {
        "prometheus": ["localhost:9090"], "alertmanager": ["alertmanager:9093"], "node": ["node-exporter:9100"],
        "postgres": ["postgres-exporter:9187"], "redis": ["redis-exporter:9121"], "n8n": ["n8n-main:5678"],
        "blackbox-exporter": ["blackbox-exporter:9115"],
        "blackbox-api-healthz": ["https://api.resto.example.com/healthz"],
        "blackbox-console-tls": ["console.resto.example.com:443"],
    }
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["global"]["external_labels"] == {"stage": "production"}
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("kind", sorted(RECEIVER_KEY))
def test_alertmanager_sends_grouped_alerts_and_their_resolution_to_the_webhook(tmp_path, kind):
    directory = rendered(tmp_path, alert_format=kind)
    path = directory / "alertmanager" / "alertmanager.yml"
    result = run(tool("amtool"), "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["route"] == {"receiver": "alert-destination", "group_by": ["alertname", "stage"],
                               "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}
    [receiver] = config["receivers"]
    section, url_key = RECEIVER_KEY[kind]
    assert set(receiver) == {"name", section}
    [destination] = receiver[section]
    assert destination[url_key] == WEBHOOK
    assert destination["send_resolved"] is True


def test_alertmanager_without_a_webhook_url_still_loads(tmp_path):
    path = rendered(tmp_path, url=None) / "alertmanager" / "alertmanager.yml"
    result = run(tool("amtool"), "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(path.read_text())["receivers"] == [{"name": "alert-destination"}]


def test_grouping_settings_reach_alertmanager(tmp_path):
    path = rendered(tmp_path, group_wait_seconds=10, group_interval_minutes=2, repeat_interval_hours=12)
    route = yaml.safe_load((path / "alertmanager" / "alertmanager.yml").read_text())["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "2m", "12h")


@pytest.mark.parametrize(("minutes", "words"), [(60, "hour"), (1, "minute"), (15, "15 minutes")])
def test_the_events_window_is_counted_over_and_named_in_the_alerts(tmp_path, minutes, words):
    path = rendered(tmp_path, events_window_minutes=minutes)
    rules = {rule["alert"]: rule for group in yaml.safe_load((path / "prometheus" / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]}
    assert rules["RestobotSignatureErrors"]["annotations"]["summary"].endswith(f"signature errors in the last {words}")
    assert f"[{minutes}m]" in rules["RestobotN8nJobsFailing"]["expr"]
    queries = (path / "postgres-exporter" / "queries.yml").read_text()
    assert f"make_interval(mins => {minutes})" in queries


@pytest.mark.parametrize("definition", ["restobot.title", "restobot.text"])
def test_message_templates_render(tmp_path, definition):
    directory = rendered(tmp_path, alert_format="slack") / "alertmanager"
    result = run(tool("amtool"), "template", "render", "--template.glob=restobot.tmpl",
                 f'--template.text={{{{ template "{definition}" . }}}}', cwd=directory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()


def test_no_secret_reaches_the_monitoring_files_and_the_url_only_alertmanager_s(tmp_path):
    secrets = generate_secrets()
    secrets["ALERT_WEBHOOK_URL"] = WEBHOOK
    settings = settings_for_stage("production", secrets)
    files = render_monitoring(settings)
    for path, file in files.items():
        for name, value in secrets.items():
            if name != "ALERT_WEBHOOK_URL" and len(value) >= 12:
                assert value not in file.text, f"{name} appears in {path}"
        if path != ALERTMANAGER:
            assert "s3cr3tPartOfTheUrl" not in file.text, f"the webhook URL appears in {path}"
    assert "s3cr3tPartOfTheUrl" in files[ALERTMANAGER].text
    assert files[ALERTMANAGER].mode == SECRET_MODE


def test_alert_texts_name_no_url_and_no_message_field(tmp_path):
    rules = yaml.safe_load((rendered(tmp_path) / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            text = " ".join(rule["annotations"].values())
            assert "http" not in text and "hooks." not in text, rule["alert"]
            # Only labels the rules' own series carry: never a customer's text or sender.
            assert set(re.findall(r"\$labels\.(\w+)", text)) <= {"service", "probe", "job", "mountpoint"}


def test_the_exporter_counts_every_security_event_type_the_schema_allows():
    # The last migration that sets security_events' event_type CHECK is the one in force.
    checks = [re.search(r"event_type IN \(([^)]*)\)", path.read_text())
              for path in sorted((REPO_ROOT / "migrations").glob("*.sql"))]
    last = [check for check in checks if check is not None][-1]
    assert tuple(re.findall(r"'([A-Z_]+)'", last.group(1))) == SECURITY_EVENT_TYPES


def test_postgres_exporter_queries_feed_the_rules(tmp_path):
    directory = rendered(tmp_path)
    queries = yaml.safe_load((directory / "postgres-exporter" / "queries.yml").read_text())
    metrics = {f"{name}_{column}" for name, query in queries.items() for metric in query["metrics"]
               for column, spec in metric.items() if spec["usage"] == "GAUGE"}
    assert metrics == {"restobot_security_events_in_window", "restobot_inbound_received",
                       "restobot_inbound_received_oldest_age_seconds", "restobot_outbound_messages",
                       "restobot_outbound_outcome_unknown"}
    rules = (directory / "prometheus" / "alerts.yml").read_text()
    # The counts by state are for the dashboards; the DLQ alert is W8_DLQ_HANDLER's (the runbook's).
    for metric in metrics - {"restobot_inbound_received", "restobot_outbound_messages"}:
        assert metric in rules, f"{metric} feeds no rule"


def test_with_the_offsite_backup_the_wal_archive_query_feeds_its_rule(tmp_path):
    settings = settings_for_stage("production", generate_secrets(), offsite_backup=OFFSITE)
    write_release(render_monitoring(settings), tmp_path)
    queries = yaml.safe_load((tmp_path / "monitoring" / "postgres-exporter" / "queries.yml").read_text())
    rules = yaml.safe_load((tmp_path / "monitoring" / "prometheus" / "alerts.yml").read_text())
    expressions = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    assert [column for metric in queries["restobot_wal_archive"]["metrics"] for column in metric] == [
        "failing", "failed_count", "archived_count"]
    assert expressions["RestobotWalArchiveFailing"] == "restobot_wal_archive_failing == 1"


def test_blackbox_modules_are_the_ones_prometheus_asks_for(tmp_path):
    directory = rendered(tmp_path)
    modules = yaml.safe_load((directory / "blackbox" / "config.yml").read_text())["modules"]
    config = yaml.safe_load((directory / "prometheus" / "prometheus.yml").read_text())
    asked = {module for job in config["scrape_configs"] for module in job.get("params", {}).get("module", [])}
    assert asked == set(modules) == {"https_2xx", "tls_connect"}
