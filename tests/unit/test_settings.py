"""One test per settings rule; each asserts the message names the field."""

from __future__ import annotations

import pytest

from restobot.settings import SettingsError, Stage, load_settings
from tests.conftest import load_inventory


def problems_of(data: dict, environ: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(data, environ)
    return caught.value.problems


@pytest.mark.parametrize("stage", ["production", "staging"])
def test_shipped_inventory_loads_with_generated_secrets(with_secrets, stage):
    namespace = load_inventory(stage)  # secrets from the (patched) process environment
    [(name, data)] = namespace[stage]
    settings = load_settings(data["resto"], with_secrets)
    assert settings.stage is Stage(stage)
    assert data["ssh_hostname"] == settings.ssh.host


def test_production_requires_app_secret(production_data, secret_env):
    del secret_env["META_APP_SECRET"]
    assert problems_of(production_data, secret_env) == [
        "meta.app_secret: required in production (set META_APP_SECRET)"
    ]


def test_production_requires_enforced_signatures(production_data, secret_env):
    secret_env["META_SIGNATURE_REQUIRED"] = "warn"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("meta.signature_required: must be 'enforce' in production (is 'warn'")


def test_staging_accepts_warn_mode_without_app_secret(production_data, secret_env):
    production_data["stage"] = "staging"
    del secret_env["META_APP_SECRET"]
    secret_env["META_SIGNATURE_REQUIRED"] = "warn"
    settings = load_settings(production_data, secret_env)
    assert settings.meta.signature_required == "warn"


def test_missing_secret_names_the_field_and_the_variable(production_data, secret_env):
    del secret_env["N8N_ENCRYPTION_KEY"]
    assert problems_of(production_data, secret_env) == [
        "n8n.encryption_key: required (set N8N_ENCRYPTION_KEY in the environment or in secrets/<stage>.env)"
    ]


@pytest.mark.parametrize("placeholder", ["changeme-changeme-changeme-changeme", "YOUR_TOKEN_GOES_HERE_PLEASE", "x" * 40])
def test_placeholder_secret_is_refused(production_data, secret_env, placeholder):
    secret_env["ADMIN_API_TOKEN"] = placeholder
    assert problems_of(production_data, secret_env) == [
        "admin.api_token: looks like a placeholder; generate a real value"
    ]


def test_short_secret_is_refused(production_data, secret_env):
    secret_env["META_VERIFY_TOKEN"] = "s3Kr1t"
    assert problems_of(production_data, secret_env) == [
        "meta.verify_token: must be at least 16 characters long"
    ]


def test_secret_with_a_quote_is_refused(production_data, secret_env):
    secret_env["POSTGRES_PASSWORD"] = "abc'def" + "g" * 20
    assert problems_of(production_data, secret_env) == [
        "database.password: must not contain quotes, backslashes or line breaks"
    ]


def test_secret_value_never_appears_in_the_error(production_data, secret_env):
    secret_env["META_VERIFY_TOKEN"] = "short-Zq9"
    secret_env["POSTGRES_PASSWORD"] = "placeholder-" + "Zq9" * 6
    with pytest.raises(SettingsError) as caught:
        load_settings(production_data, secret_env)
    message = str(caught.value)
    assert "Zq9" not in message
    assert "meta.verify_token" in message and "database.password" in message


def test_unknown_key_is_an_error(production_data, secret_env):
    production_data["meta"]["signature_requried"] = "enforce"
    assert problems_of(production_data, secret_env) == [
        "meta.signature_requried: unknown key (typo? see inventory/*.py and restobot/settings.py for the known keys)"
    ]


def test_unknown_top_level_section_is_an_error(production_data, secret_env):
    production_data["monitorng"] = {}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("monitorng: unknown key")


@pytest.mark.parametrize("domain", ["not a domain", "Resto.Example.com", "localhost", "-bad.example.com"])
def test_invalid_domain_is_refused(production_data, secret_env, domain):
    production_data["domains"]["domain"] = domain
    assert problems_of(production_data, secret_env) == [
        "domains.domain: must be a lower-case DNS name such as resto.example.com"
    ]


def test_invalid_url_is_refused(production_data, secret_env):
    production_data["restaurant"]["menu_url"] = "resto.example.com/menu"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("restaurant.menu_url: ")


def test_invalid_acme_email_is_refused(production_data, secret_env):
    production_data["acme"]["email"] = "ops-at-example"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("acme.email: must be an e-mail address")


def test_production_acme_directory_must_be_https(production_data, secret_env):
    production_data["acme"]["directory_url"] = "http://acme.internal/directory"
    assert problems_of(production_data, secret_env) == ["acme.directory_url: must be https in production"]


def test_signature_mode_outside_the_three_values_is_refused(production_data, secret_env):
    secret_env["META_SIGNATURE_REQUIRED"] = "strict"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("meta.signature_required: Input should be 'off', 'warn' or 'enforce'")


def test_uncertain_send_is_resend_unless_the_inventory_chooses_park(production_data, secret_env):
    assert load_settings(production_data, secret_env).pipeline.on_uncertain_send == "resend"
    production_data.setdefault("pipeline", {})["on_uncertain_send"] = "park"
    assert load_settings(production_data, secret_env).pipeline.on_uncertain_send == "park"


def test_uncertain_send_outside_its_two_choices_is_refused(production_data, secret_env):
    production_data.setdefault("pipeline", {})["on_uncertain_send"] = "drop"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("pipeline.on_uncertain_send: Input should be 'resend' or 'park'")


def test_the_reply_lease_is_two_minutes_unless_the_inventory_sets_it(production_data, secret_env):
    assert load_settings(production_data, secret_env).pipeline.outbound_lease_seconds == 120
    production_data.setdefault("pipeline", {})["outbound_lease_seconds"] = 300
    assert load_settings(production_data, secret_env).pipeline.outbound_lease_seconds == 300


def test_a_reply_lease_shorter_than_a_send_and_a_blink_is_refused(production_data, secret_env):
    production_data.setdefault("pipeline", {})["outbound_lease_seconds"] = 10
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("pipeline.outbound_lease_seconds: Input should be greater than or equal to 30")


def test_image_must_be_pinned(production_data, secret_env):
    production_data["images"] = {"n8n": "n8nio/n8n:latest"}
    assert problems_of(production_data, secret_env) == [
        "images.n8n: must be pinned to a version, not ':latest'"
    ]


def test_image_without_tag_is_refused(production_data, secret_env):
    production_data["images"] = {"postgres": "postgres"}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("images.postgres: must be an image reference with an explicit tag")


def test_console_allowlist_must_hold_networks(production_data, secret_env):
    production_data["console"]["ip_allowlist"] = ["198.51.100.7/32", "not-an-ip"]
    assert problems_of(production_data, secret_env) == [
        "console.ip_allowlist: entry 1 ('not-an-ip') is not an IP network such as 198.51.100.7/32"
    ]


def test_console_allowlist_cannot_be_empty(production_data, secret_env):
    production_data["console"]["ip_allowlist"] = []
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("console.ip_allowlist: ")


def test_several_problems_are_reported_together(production_data, secret_env):
    del secret_env["WA_API_TOKEN"]
    production_data["domains"]["domain"] = "bad domain"
    problems = problems_of(production_data, secret_env)
    assert {p.split(":")[0] for p in problems} == {"meta.wa_api_token", "domains.domain"}


def test_runbook_thresholds_are_the_defaults(production_data, secret_env):
    monitoring = load_settings(production_data, secret_env).monitoring
    assert (monitoring.cpu_percent, monitoring.memory_percent, monitoring.disk_percent) == (80, 85, 90)
    assert (monitoring.redis_queue_length, monitoring.errors_per_hour) == (1000, 10)


def test_environment_overrides_runbook_knobs(production_data, secret_env):
    secret_env["RATE_LIMIT_PER_30S"] = "25"
    secret_env["REPLAY_CHECK_ENABLED"] = "false"
    pipeline = load_settings(production_data, secret_env).pipeline
    assert pipeline.rate_limit_per_30s == 25 and pipeline.replay_check_enabled is False


def test_secrets_file_is_read_when_the_environment_lacks_them(tmp_path, production_data, secret_env, monkeypatch):
    (tmp_path / "secrets").mkdir()
    lines = [f"{name}='{value}'" for name, value in secret_env.items()]
    (tmp_path / "secrets" / "production.env").write_text("\n".join(["# comment", *lines]) + "\n")
    for name in secret_env:
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(production_data, root=tmp_path)
    assert settings.admin.api_token.get_secret_value() == secret_env["ADMIN_API_TOKEN"]


def test_secrets_are_hidden_in_repr(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    assert secret_env["META_APP_SECRET"] not in repr(settings)
    assert secret_env["POSTGRES_PASSWORD"] not in str(settings.model_dump())


def test_inventory_with_a_bad_setting_fails_while_loading(secret_env):
    from restobot.hosts import InventoryError

    del secret_env["ADMIN_API_TOKEN"]
    with pytest.raises(InventoryError, match=r"admin\.api_token: required \(set ADMIN_API_TOKEN"):
        load_inventory("production", secret_env)


def test_verify_token_must_be_url_safe(production_data, secret_env):
    secret_env["META_VERIFY_TOKEN"] = "token with spaces&more=16chars"
    assert problems_of(production_data, secret_env) == [
        "meta.verify_token: must hold only letters, digits and . _ ~ - (it travels in a URL)"
    ]


def test_stuck_alert_must_come_after_the_redrive(production_data, secret_env):
    production_data["pipeline"] = {**production_data.get("pipeline", {}),
                                   "inbound_redrive_after_seconds": 600, "inbound_stuck_alert_seconds": 300}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("pipeline: inbound_stuck_alert_seconds (300) must be longer than "
                              "inbound_redrive_after_seconds (600)")


def test_redrive_age_below_ten_seconds_is_refused(production_data, secret_env):
    production_data["pipeline"] = {**production_data.get("pipeline", {}), "inbound_redrive_after_seconds": 2}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("pipeline.inbound_redrive_after_seconds:")


def test_monitoring_defaults_are_the_runbook_and_checklist_ones(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    monitoring = settings.monitoring
    assert (monitoring.certificate_min_days, monitoring.alert_format, monitoring.backup_max_age_hours) == (
        14, "webhook", None)
    # The nightly schedule (17 3 * * *): a day, plus 10 % and 10 minutes for the run itself.
    assert settings.backup_max_age_seconds == int(86400 * 1.1) + 600


def test_backup_max_age_set_in_hours_is_used(production_data, secret_env):
    production_data["monitoring"] = {"backup_max_age_hours": 30}
    assert load_settings(production_data, secret_env).backup_max_age_seconds == 30 * 3600


def test_backup_max_age_shorter_than_the_schedule_is_refused(production_data, secret_env):
    production_data["monitoring"] = {"backup_max_age_hours": 20}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith(
        "monitoring.backup_max_age_hours: 20 h is shorter than the backup schedule's period ('17 3 * * *', every 24 h)")


def test_alert_format_outside_the_three_is_refused(production_data, secret_env):
    production_data["monitoring"] = {"alert_format": "teams"}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("monitoring.alert_format: Input should be 'slack', 'discord' or 'webhook'")


@pytest.mark.parametrize("kind", ["slack", "discord"])
def test_chat_webhook_over_plain_http_is_refused_outside_local(production_data, secret_env, kind):
    production_data["monitoring"] = {"alert_format": kind}
    secret_env["ALERT_WEBHOOK_URL"] = "http://hooks.example.com/services/T0/B0/abc"
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith(f"pipeline.alert_webhook_url: a {kind} webhook URL carries its token, so it must be https")
    assert "abc" not in problem


def test_generic_webhook_may_be_plain_http(production_data, secret_env):
    secret_env["ALERT_WEBHOOK_URL"] = "http://alerts.internal.example.com/hook"
    assert load_settings(production_data, secret_env).monitoring.alert_format == "webhook"


def test_certificate_margin_in_checks_points_to_monitoring(production_data, secret_env):
    production_data["checks"] = {"certificate_min_days": 30}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("checks: certificate_min_days moved to monitoring.certificate_min_days")


@pytest.mark.parametrize(("field", "value"), [("cpu_percent", 101), ("disk_percent", 0), ("sustained_minutes", 0),
                                              ("certificate_min_days", 0), ("repeat_interval_hours", 0)])
def test_monitoring_figure_out_of_range_is_refused(production_data, secret_env, field, value):
    production_data["monitoring"] = {field: value}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith(f"monitoring.{field}: Input should be")


def test_retention_defaults_keep_the_bots_rows_ninety_days(production_data, secret_env):
    retention = load_settings(production_data, secret_env).retention
    assert (retention.inbound_messages_days, retention.outbound_messages_days, retention.security_events_days) == (
        90, 90, 90)


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_retention_out_of_range_is_refused_naming_the_field(production_data, secret_env, days):
    production_data["retention"] = {"security_events_days": days}
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("retention.security_events_days:")
