"""Rendering: every template renders for every inventory, strictly, with the right modes."""

from __future__ import annotations

import jinja2
import pytest

from restobot.render import (
    CONTAINER_OWNED_FILES,
    MONITORING_FILES,
    RELEASE_FILES,
    SECRET_MODE,
    env_quote,
    make_environment,
    render_release,
)
from restobot.settings import load_settings


@pytest.fixture
def settings(production_data, secret_env):
    return load_settings(production_data, secret_env)


def test_every_template_is_rendered(settings):
    assert set(render_release(settings)) == {path for path, _ in (*RELEASE_FILES.values(), *MONITORING_FILES.values())}


def test_env_files_are_private_and_configs_are_not(settings):
    modes = {path: rendered.mode for path, rendered in render_release(settings).items()}
    assert {path for path, mode in modes.items() if mode == SECRET_MODE} == {
        "env/n8n.env", "env/postgres.env", "env/migrate.env", "env/redis.env", "env/postgres-exporter.env",
        "env/redis-exporter.env", "monitoring/alertmanager/alertmanager.yml",
    }


def test_only_alertmanager_s_private_config_is_owned_by_its_container_user():
    assert CONTAINER_OWNED_FILES == {"monitoring/alertmanager/alertmanager.yml": 65534}


def test_secrets_appear_only_in_env_files(settings, secret_env):
    for path, rendered in render_release(settings).items():
        if path.startswith("env/") or path == "monitoring/alertmanager/alertmanager.yml":
            continue
        for name in ("META_APP_SECRET", "POSTGRES_PASSWORD", "N8N_ENCRYPTION_KEY", "ADMIN_API_TOKEN"):
            assert secret_env[name] not in rendered.text, f"{name} leaked into {path}"


def test_undefined_variable_fails_the_render(tmp_path):
    (tmp_path / "broken.j2").write_text("{{ s.no_such_section }}")
    environment = make_environment(tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        environment.get_template("broken.j2").render(s={})


@pytest.mark.parametrize(
    "value, quoted",
    [
        ("plain", "'plain'"),
        ("1 rue de l'Exemple", '"1 rue de l\'Exemple"'),
        ("it's $HOME \\ \"x\"", '"it\'s \\$HOME \\\\ \\"x\\""'),
    ],
)
def test_env_quote(value, quoted):
    assert env_quote(value) == quoted


def test_env_quote_refuses_line_breaks():
    with pytest.raises(ValueError, match="line breaks"):
        env_quote("a\nb")


def test_n8n_env_defines_every_variable_the_workflows_read(settings):
    from restobot.remote.workflows import WORKFLOW_ENV_VARS

    text = render_release(settings)["env/n8n.env"].text
    defined = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert set(WORKFLOW_ENV_VARS) <= defined, set(WORKFLOW_ENV_VARS) - defined


@pytest.mark.parametrize("choice", ["resend", "park"])
def test_the_uncertain_send_choice_reaches_w3(production_data, secret_env, choice):
    production_data.setdefault("pipeline", {})["on_uncertain_send"] = choice
    text = render_release(load_settings(production_data, secret_env))["env/n8n.env"].text
    assert f"OUTBOUND_ON_UNCERTAIN_SEND='{choice}'" in text.splitlines()


def test_the_reply_lease_reaches_w3(production_data, secret_env):
    production_data.setdefault("pipeline", {})["outbound_lease_seconds"] = 90
    text = render_release(load_settings(production_data, secret_env))["env/n8n.env"].text
    assert "OUTBOUND_LEASE_SECONDS='90'" in text.splitlines()


def test_credentials_overwrite_reaches_n8n_as_json(settings, secret_env):
    import json

    line = next(
        l for l in render_release(settings)["env/n8n.env"].text.splitlines() if l.startswith("CREDENTIALS_OVERWRITE_DATA=")
    )
    data = json.loads(line.split("=", 1)[1].strip("'"))
    assert data["postgres"]["password"] == secret_env["POSTGRES_PASSWORD"]
    assert data["redis"]["host"] == "redis"
