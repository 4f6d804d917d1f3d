"""Who may get in: n8n's owner is set by the deploy, its setup is closed, Redis asks for a password,
the backend networks have no route out, and no shared token stands in for Meta's signature.

Issue 11's go-live items. Each says what an attacker would have found open.
"""

from __future__ import annotations

import pytest
from conftest import container, sha256

from restobot.commands import COMPOSE_PROJECT

OWNER_SETUP = "/rest/owner/setup"
# Run inside n8n-main: what n8n itself tells its login page (read-only: nothing is claimed).
SETUP_STATE_JS = """
fetch('http://127.0.0.1:5678/rest/settings').then(r => r.json()).then(
  s => console.log(JSON.stringify(s.data.userManagement.showSetupOnFirstLoad)),
  e => { console.error(e.message); process.exit(2); });
"""
INTERNAL_NETWORKS = ("gateway", "backend")


def test_n8n_owner_is_set_up_by_the_deploy(target, evidence):
    email = target.settings.n8n.owner_email
    owners = target.sql("""select email from "user" where "roleSlug" = 'global:owner' and password is not null""")
    assert owners.splitlines() == [email], (
        f"n8n's owner is {owners.splitlines() or 'not set up'}, want {email} (n8n.owner_email); "
        "deploy again: n8n sets its owner at start from N8N_INSTANCE_OWNER_* in env/n8n.env"
    )
    evidence(f"owner {email}")


def test_owner_setup_is_closed_inside_n8n(target, evidence):
    result = target.run("docker", "exec", container("n8n-main"), "node", "-e", SETUP_STATE_JS)
    state = result.stdout.strip()
    assert result.rc == 0 and state in ("true", "false"), f"could not ask n8n-main: {result.stderr.strip()[-300:]}"
    assert state == "false", (
        f"n8n offers its owner setup ({OWNER_SETUP}): whoever reaches n8n first owns the instance; "
        "set n8n.owner_email and N8N_OWNER_PASSWORD and deploy again"
    )
    evidence("n8n has an owner: its setup is closed")


def test_owner_setup_is_unreachable_on_the_api_name(target, evidence):
    answer = target.request("api", OWNER_SETUP, method="POST", body=b"{}", headers={"Content-Type": "application/json"})
    assert answer.status == 404, (
        f"POST https://{target.public_name('api')}{OWNER_SETUP} answered {answer.status} {answer.text[:80]!r}, "
        "want the gateway's 404"
    )
    evidence("404 from the gateway")


def test_no_legacy_shared_token_is_accepted(target, evidence):
    digest = target.container_env_sha256("n8n-main", "LEGACY_SHARED_TOKEN")
    empty = sha256("")
    opted_in = target.settings.pipeline.allow_legacy_shared_token
    assert digest in (None, empty), (
        "n8n-main accepts a LEGACY_SHARED_TOKEN in place of Meta's signature"
        + (" (the inventory opts in: pipeline.allow_legacy_shared_token)" if opted_in else "")
        + "; unset it and deploy again once every client signs"
    )
    evidence("LEGACY_SHARED_TOKEN is empty in n8n-main")


def test_redis_refuses_a_client_without_the_password(target, evidence):
    anonymous = target.run("docker", "exec", "--env", "REDISCLI_AUTH=", container("redis"), "redis-cli", "ping")
    answer = (anonymous.stdout + anonymous.stderr).strip()
    assert "NOAUTH" in answer, (
        f"redis answered {answer[:80]!r} to a client without a password, want NOAUTH; "
        "redis must start with the password of env/redis.env (deploy again)"
    )
    evidence("NOAUTH without the password")


def test_redis_answers_with_the_password(target, evidence):
    result = target.run("docker", "exec", container("redis"), "sh", "-c",
                        'REDISCLI_AUTH="$REDIS_PASSWORD" exec redis-cli ping')
    assert result.stdout.strip() == "PONG", (
        f"redis with the deployed password answered {(result.stdout + result.stderr).strip()[:120]!r}"
    )
    evidence("PONG with the password")


@pytest.mark.parametrize("network", INTERNAL_NETWORKS)
def test_backend_network_has_no_route_out(target, network, evidence):
    name = f"{COMPOSE_PROJECT}_{network}"
    result = target.run("docker", "network", "inspect", "--format", "{{.Internal}}", name)
    assert result.stdout.strip() == "true", (
        f"docker network {name} is {'not internal' if result.rc == 0 else 'missing'} "
        f"({(result.stdout + result.stderr).strip()[:120]}); compose.yml declares it internal: deploy again"
    )
    evidence(f"{name} internal")
