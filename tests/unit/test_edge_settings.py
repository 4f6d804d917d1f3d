"""The edge's settings rules (issue 11): n8n's owner, Redis's password, no legacy token in production,
execution retention, and the webhook workflows that save no execution."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest

from restobot.render import render_release
from restobot.secrets import ensure_secrets_file, generate_secrets
from restobot.settings import SettingsError, load_settings, read_env_file

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


def problems_of(data: dict, environ: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(data, environ)
    return caught.value.problems


def test_production_refuses_a_legacy_shared_token(production_data, secret_env):
    secret_env["LEGACY_SHARED_TOKEN"] = "L" + "x1" * 20
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("pipeline.legacy_shared_token: refused in production")
    assert "pipeline.allow_legacy_shared_token: true" in problem
    assert secret_env["LEGACY_SHARED_TOKEN"] not in problem


def test_production_accepts_a_legacy_token_the_inventory_opts_into(production_data, secret_env):
    secret_env["LEGACY_SHARED_TOKEN"] = "L" + "x1" * 20
    production_data["pipeline"] = {**production_data.get("pipeline", {}), "allow_legacy_shared_token": True}
    assert load_settings(production_data, secret_env).pipeline.legacy_shared_token is not None


def test_staging_accepts_a_legacy_token_without_opting_in(production_data, secret_env):
    production_data["stage"] = "staging"
    secret_env["LEGACY_SHARED_TOKEN"] = "L" + "x1" * 20
    assert load_settings(production_data, secret_env).pipeline.legacy_shared_token is not None


def test_generated_secrets_hold_no_legacy_token_unless_asked():
    assert "LEGACY_SHARED_TOKEN" not in generate_secrets()
    assert "LEGACY_SHARED_TOKEN" in generate_secrets(legacy_shared_token=True)


@pytest.mark.parametrize(("variable", "path"), [("REDIS_PASSWORD", "redis.password"),
                                                ("N8N_OWNER_PASSWORD", "n8n.owner_password")])
def test_password_is_required_with_its_variable_named(production_data, secret_env, variable, path):
    del secret_env[variable]
    assert problems_of(production_data, secret_env) == [
        f"{path}: required (set {variable} in the environment or in secrets/<stage>.env)"
    ]


@pytest.mark.parametrize("password", ["alllowercase-and-long-1", "ALLUPPERCASE-NO-DIGIT", "Ab1" + "x" * 62])
def test_owner_password_follows_n8ns_rule(production_data, secret_env, password):
    secret_env["N8N_OWNER_PASSWORD"] = password
    [problem] = problems_of(production_data, secret_env)
    assert problem == ("n8n.owner_password: must be at most 64 characters with a digit and an upper-case letter "
                       "(n8n's rule)")


def test_owner_email_must_be_an_address(production_data, secret_env):
    production_data["n8n"] = {**production_data["n8n"], "owner_email": "not-an-address"}
    assert problems_of(production_data, secret_env) == [
        "n8n.owner_email: must be an e-mail address (the n8n console's login)"
    ]


def test_redis_password_must_be_url_safe(production_data, secret_env):
    secret_env["REDIS_PASSWORD"] = "a/b@c" + "x" * 40
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("redis.password: must hold only letters, digits and . _ ~ -")


def test_owner_hash_verifies_the_password_and_is_stable(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    first = settings.n8n.owner_password_hash()
    assert first.startswith("$2a$10$")
    assert bcrypt.checkpw(secret_env["N8N_OWNER_PASSWORD"].encode(), first.encode())
    assert load_settings(production_data, secret_env).n8n.owner_password_hash() == first


def test_owner_hash_differs_between_instances_with_one_password(production_data, secret_env):
    first = load_settings(production_data, secret_env).n8n.owner_password_hash()
    other = {**secret_env, "N8N_ENCRYPTION_KEY": generate_secrets()["N8N_ENCRYPTION_KEY"]}
    assert load_settings(production_data, other).n8n.owner_password_hash() != first


def test_n8n_env_sets_the_owner_and_prunes_executions(production_data, secret_env, tmp_path):
    settings = load_settings(production_data, secret_env)
    env_file = tmp_path / "n8n.env"
    env_file.write_text(render_release(settings)["env/n8n.env"].text)
    env = read_env_file(env_file)
    assert env["N8N_INSTANCE_OWNER_MANAGED_BY_ENV"] == "true"
    assert env["N8N_INSTANCE_OWNER_EMAIL"] == settings.n8n.owner_email
    assert env["N8N_INSTANCE_OWNER_PASSWORD_HASH"] == settings.n8n.owner_password_hash()
    assert secret_env["N8N_OWNER_PASSWORD"] not in env_file.read_text()
    assert (env["EXECUTIONS_DATA_PRUNE"], env["EXECUTIONS_DATA_MAX_AGE"], env["EXECUTIONS_DATA_PRUNE_MAX_COUNT"]) == (
        "true", "168", "10000")
    # An unsaved execution (it held the request's headers while it ran) is erased within a minute.
    assert (env["EXECUTIONS_DATA_HARD_DELETE_BUFFER"], env["EXECUTIONS_DATA_PRUNE_HARD_DELETE_INTERVAL"]) == ("0", "1")


def test_rendering_twice_changes_nothing(production_data, secret_env):
    first = render_release(load_settings(production_data, secret_env))
    second = render_release(load_settings(production_data, secret_env))
    assert {path: f.sha256 for path, f in first.items()} == {path: f.sha256 for path, f in second.items()}


def test_existing_secrets_file_gains_only_the_names_it_lacks(tmp_path):
    path = tmp_path / "local.env"
    path.write_text("META_VERIFY_TOKEN=kept-as-it-was-0123456789\n")
    path.chmod(0o600)
    ensure_secrets_file(path)
    values = read_env_file(path)
    assert values["META_VERIFY_TOKEN"] == "kept-as-it-was-0123456789"
    assert {"N8N_OWNER_PASSWORD", "REDIS_PASSWORD"} <= set(values)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("path", [p for p in WORKFLOWS
                                  if any(n["type"] == "n8n-nodes-base.webhook" for n in json.loads(p.read_text())["nodes"])],
                         ids=lambda p: p.name)
def test_webhook_workflow_saves_no_execution(path):
    settings = json.loads(path.read_text())["settings"]
    assert (settings.get("saveDataSuccessExecution"), settings.get("saveDataErrorExecution"),
            settings.get("saveManualExecutions"), settings.get("saveExecutionProgress")) == ("none", "none", False, False), (
        f"{path.name} keeps request headers and query strings (tokens) in saved executions"
    )
