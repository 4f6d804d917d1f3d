"""The checklist's pure parts, by value: parsers, the report, the settings section."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from restobot import golive
from restobot.render import render_monitoring
from restobot.settings import BackupSettings, ChecksSettings, cron_period_seconds, load_settings

UFW = textwrap.dedent("""\
    Status: active
    Logging: on (low)
    Default: deny (incoming), allow (outgoing), deny (routed)
    New profiles: skip

    To                         Action      From
    --                         ------      ----
    22/tcp                     ALLOW IN    Anywhere
    80/tcp                     ALLOW IN    Anywhere
    443/tcp                    ALLOW IN    Anywhere
    22/tcp (v6)                ALLOW IN    Anywhere (v6)
    80/tcp (v6)                ALLOW IN    Anywhere (v6)
    443/tcp (v6)               ALLOW IN    Anywhere (v6)
""")


def test_ufw_status_is_parsed():
    status = golive.parse_ufw_status(UFW)
    assert (status.active, status.default_incoming) == (True, "deny")
    assert golive.allowed_ports(status) == {22, 80, 443}


def test_ufw_extra_rule_and_range_are_counted():
    text = UFW + "8081/tcp                   ALLOW IN    Anywhere\n6000:6002/tcp              ALLOW IN    Anywhere\n"
    assert golive.allowed_ports(golive.parse_ufw_status(text)) == {22, 80, 443, 8081, 6000, 6001, 6002}


def test_inactive_ufw_is_not_active():
    status = golive.parse_ufw_status("Status: inactive\n")
    assert (status.active, status.default_incoming, golive.allowed_ports(status)) == (False, None, set())


def test_sshd_t_alias_of_prohibit_password_is_understood():
    values = golive.parse_sshd_t("permitrootlogin without-password\npasswordauthentication no\n")
    assert golive.sshd_value(values, "permitrootlogin") == "prohibit-password"
    assert golive.sshd_value(values, "passwordauthentication") == "no"
    assert golive.sshd_value(values, "kbdinteractiveauthentication") is None


SS = textwrap.dedent("""\
    LISTEN 0      4096   127.0.0.11:32985 0.0.0.0:*
    LISTEN 0      128       0.0.0.0:22    0.0.0.0:*
    LISTEN 0      4096      0.0.0.0:443   0.0.0.0:*
    LISTEN 0      128          [::]:22       [::]:*
    LISTEN 0      4096      0.0.0.0:6379  0.0.0.0:*
    LISTEN 0      4096    127.0.0.1:5432  0.0.0.0:*
""")


def test_external_listeners_exclude_loopback():
    assert golive.external_listener_ports(golive.parse_listeners(SS)) == {22, 443, 6379}


def test_published_ports_list_only_bound_ones():
    text = "resto-traefik-1\t0.0.0.0:80->80/tcp, 0.0.0.0:443->443/tcp\nresto-redis-1\t6379/tcp\n"
    assert golive.published_ports(text) == {"resto-traefik-1": ["0.0.0.0:80->80/tcp", "0.0.0.0:443->443/tcp"]}


def test_ports_beyond_loopback_leave_out_loopback_bindings():
    published = {"resto-traefik-1": ["0.0.0.0:80->80/tcp", "0.0.0.0:443->443/tcp"],
                 "resto-prometheus-1": ["127.0.0.1:9090->9090/tcp"],
                 "resto-alertmanager-1": ["127.0.0.1:9093->9093/tcp", ":::9093->9093/tcp"]}
    assert golive.beyond_loopback(published) == {"resto-traefik-1": ["0.0.0.0:80->80/tcp", "0.0.0.0:443->443/tcp"],
                                                 "resto-alertmanager-1": [":::9093->9093/tcp"]}


def test_addresses_outside_the_allowlist_skip_loopback_and_members():
    addresses = ["127.0.0.1", "172.17.0.3", "10.213.62.200", "203.0.113.10"]
    assert golive.addresses_outside(["127.0.0.1/32", "172.16.0.0/12"], addresses) == ["10.213.62.200",
                                                                                        "203.0.113.10"]


def test_ip_addr_output_gives_addresses():
    text = "2: eth0    inet 172.17.0.3/16 brd 172.17.255.255 scope global eth0\\ valid_lft forever\n"
    assert golive.parse_ip_addr(text) == ["172.17.0.3"]


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("17 3 * * *", 86400), ("0 */6 * * *", 6 * 3600), ("5 * * * *", 3600), ("*/15 * * * *", 900),
    ("0 4 * * 0", 7 * 86400), ("0 4 1 * *", 31 * 86400),
])
def test_cron_period(schedule, seconds):
    assert cron_period_seconds(schedule) == BackupSettings(schedule=schedule).period_seconds == seconds


@pytest.mark.parametrize(("header", "age"), [
    ("max-age=31536000; includeSubDomains", 31536000), ('max-age="600"', 600), ("includeSubDomains", None), (None, None),
])
def test_hsts_max_age(header, age):
    assert golive.hsts_max_age(header) == age


def test_split_address():
    assert golive.split_address("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert golive.split_address("[::1]:443") == ("::1", 443)


def test_inventory_hosts_are_the_groups_entries_with_settings():
    namespace = {"SETTINGS": {}, "prod": [("vps", {"resto": {}, "ssh_hostname": "x"})],
                 "other": [("vps", {"resto": {}})], "_private": [("y", {"resto": {}})], "junk": [1, 2]}
    assert [host.name for host in golive.inventory_hosts(namespace)] == ["vps"]


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="test_edge" name="test_healthz_answers_ok[vps]" time="0.1">
  <properties><property name="evidence" value="200 ok"/></properties></testcase>
<testcase classname="test_host" name="test_env_file_is_private_to_the_deploy_user[vps-n8n.env]" time="0.2">
  <failure message="AssertionError: /opt/resto/current/env/n8n.env is mode 0o644&#10;assert ...">trace</failure></testcase>
<testcase classname="test_meta" name="test_meta_webhook_subscription_is_confirmed[vps-whatsapp]" time="0">
  <skipped type="pytest.skip" message="manual: in Meta's App Dashboard">skip</skipped></testcase>
<testcase classname="test_ops" name="test_other[vps]" time="0">
  <skipped type="pytest.skip" message="not applicable">skip</skipped></testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "checks.xml"
    path.write_text(JUNIT)
    return golive.rows_from_junit(path)


def test_report_rows_from_junit(rows):
    assert [(row.item, row.outcome, row.reason) for row in rows] == [
        ("edge: healthz answers ok [vps]", "pass", "200 ok"),
        ("host: env file is private to the deploy user [vps-n8n.env]", "FAIL",
         "/opt/resto/current/env/n8n.env is mode 0o644"),
        ("meta: meta webhook subscription is confirmed [vps-whatsapp]", "manual", "in Meta's App Dashboard"),
        ("ops: other [vps]", "skip", "not applicable"),
    ]


def test_any_failure_or_plain_skip_exits_one(rows):
    assert golive.exit_status(rows) == 1
    assert golive.exit_status([rows[0], rows[2]]) == 0
    assert golive.exit_status([rows[0], rows[2]], strict_manual=True) == 1
    assert golive.exit_status([]) == 2


def test_table_lists_failures_first_and_never_counts_manual_as_pass(rows):
    table = golive.format_table(rows)
    lines = table.splitlines()
    assert "FAIL" in lines[2] and "manual" in table
    assert lines[-1] == ("4 items: 1 pass, 1 fail, 1 manual, 1 skip "
                         "(manual items are NOT passes: a human must confirm them)")


def test_checks_settings_refuse_an_address_without_port():
    with pytest.raises(ValueError, match="HOST:PORT"):
        ChecksSettings(public_address="127.0.0.1")


def test_checks_settings_refuse_a_non_numeric_recipient():
    with pytest.raises(ValueError, match="numeric id"):
        ChecksSettings(test_recipients={"whatsapp": "+33 6"})


def test_checks_settings_defaults_are_production_ones():
    checks = ChecksSettings()
    assert (checks.public_address, checks.ca_bundle, checks.test_recipients) == (None, None, {})


def test_pytest_argv_runs_the_checks_dir_with_workers(tmp_path):
    argv = golive.pytest_argv(tmp_path / "inv.py", tmp_path / "x.xml", workers=4, select="tls")
    assert argv[1:4] == ["-m", "pytest", str(golive.CHECKS_DIR)]
    assert ["-n", "4"] == argv[argv.index("-n"):argv.index("-n") + 2]
    assert ["-k", "tls"] == argv[-2:]


RULES_API = json.dumps({"status": "success", "data": {"groups": [
    {"name": "restobot-availability", "rules": [
        {"name": "RestobotContainerDown", "type": "alerting", "health": "ok"},
        {"name": "RestobotPublicProbeFailing", "type": "alerting", "health": "err"},
    ]},
    {"name": "recorded", "rules": [{"name": "job:up:sum", "type": "recording", "health": "ok"}]},
]}})


def test_loaded_alert_rules_are_the_alerting_ones_with_their_health():
    assert golive.loaded_alert_rules(RULES_API) == {"RestobotContainerDown": "ok", "RestobotPublicProbeFailing": "err"}


# Prometheus's /api/v1/targets answer, trimmed to what is read.
TARGETS_API = json.dumps({"status": "success", "data": {"activeTargets": [
    {"labels": {"job": "n8n", "instance": "n8n-main:5678"}, "health": "up", "lastError": ""},
    {"labels": {"job": "redis", "instance": "redis-exporter:9121"}, "health": "down",
     "lastError": "dial tcp: lookup redis-exporter: no such host"},
    {"labels": {"job": "node", "instance": "node-exporter:9100"}, "health": "unknown"},
], "droppedTargets": []}})


def test_scrape_targets_are_named_by_job_and_instance_with_their_health():
    assert golive.scrape_targets(TARGETS_API) == {
        "n8n n8n-main:5678": "up", "redis redis-exporter:9121": "down", "node node-exporter:9100": "unknown"}
    assert golive.scrape_targets('{"status": "success", "data": {"activeTargets": []}}') == {}


def test_every_runbook_alert_names_a_rule_of_the_rendered_rules(production_data, secret_env):
    rules = render_monitoring(load_settings(production_data, secret_env))["monitoring/prometheus/alerts.yml"].text
    names = {rule["alert"] for group in yaml.safe_load(rules)["groups"] for rule in group["rules"]}
    assert {rule for wanted in golive.RUNBOOK_ALERT_RULES.values() for rule in wanted} <= names


def test_routed_receivers_are_read_from_amtool():
    assert golive.routed_receivers("alert-destination\n") == ["alert-destination"]
    assert golive.routed_receivers("a, b\n") == ["a", "b"]
    assert golive.routed_receivers("\n") == []


@pytest.mark.parametrize("alert_format", ["webhook", "slack", "discord"])
def test_receiver_urls_read_the_rendered_alertmanager_config(production_data, secret_env, alert_format):
    data = {**production_data, "monitoring": {"alert_format": alert_format},
            "pipeline": {**production_data.get("pipeline", {}), "alert_webhook_url": "https://hooks.example.test/T/x"}}
    text = render_monitoring(load_settings(data, secret_env))["monitoring/alertmanager/alertmanager.yml"].text
    assert golive.receiver_urls(text, golive.ALERT_RECEIVER, alert_format) == ["https://hooks.example.test/T/x"]
    other = next(name for name in golive.RECEIVER_CONFIGS if name != alert_format)
    assert golive.receiver_urls(text, golive.ALERT_RECEIVER, other) == []
    assert golive.receiver_urls(text, "another-receiver", alert_format) == []


def test_the_checklist_can_be_narrowed_to_its_meta_module(tmp_path):
    argv = golive.pytest_argv(tmp_path / "inv.py", tmp_path / "r.xml", workers=0, select=None,
                              modules=[golive.META_CHECKS])
    paths = argv[argv.index("pytest") + 1:argv.index("-c")]
    assert paths == [str(golive.CHECKS_DIR / "test_meta.py")]
    assert (golive.CHECKS_DIR / golive.META_CHECKS).is_file()


def test_the_checklist_outside_a_checkout_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(golive, "CHECKS_DIR", tmp_path / "checks")
    with pytest.raises(golive.ChecklistNotRun, match="run it from a checkout of the project"):
        golive.run_checklist(tmp_path / "inv.py")
