"""Every kind of token sent through the deployed stack, then looked for in the whole database: none is there.

n8n saves an execution's data with the webhook's headers and query string; the
webhook workflows save none, so the verify token, the admin token and any
x-api-token a client sends (right or wrong) never stay in PostgreSQL, and thus
never in a backup. This module's own executions are erased by n8n (waited for);
one an earlier module's restart interrupted (n8n keeps it, crashed, with the
verify or the admin token of the harness's own requests) goes with the host's
nightly cleanup, which the module runs before it looks.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse

import pytest

from harness.poll import poll
from restobot import golive, meta_payloads
from restobot.commands import HostLayout, container_exec, psql
from restobot.settings import read_env_file, secrets_file

pytestmark = pytest.mark.e2e

CHANNELS = ("whatsapp", "instagram", "messenger")


class Edge:
    """The deployed stack's api name, reached through Traefik's published 443."""

    def __init__(self, stack):
        self.name = f"api.{stack.settings['domains']['domain']}"
        self.address = golive.split_address(stack.settings["checks"]["public_address"])

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        return golive.http_request(self.name, path, address=self.address, method=method, body=body,
                                      headers=headers, verify=False, timeout=20)


def verify_path(channel: str, token: str, challenge: str) -> str:
    query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge})
    return f"/v1/inbound/{channel}?{query}"


def database_dump(stack) -> str:
    """The stack's whole database as SQL text, every table and row."""
    return stack.ssh("docker", "exec", "resto-postgres-1", "sh", "-c",
                     'exec pg_dump --data-only -U "$POSTGRES_USER" -d "$POSTGRES_DB"', timeout=300).stdout


def where_stored(dump: str, token: str) -> list[str]:
    """The tables whose rows hold ``token``, each with the start of one such row (the token masked).

    A failure names where the token is, not the whole dump: that would put the database in the CI log.
    """
    found, table = [], "?"
    for line in dump.splitlines():
        if line.startswith("COPY "):
            table = line.split()[1]
        elif token in line:
            found.append(f"{table}: {line.replace(token, '<TOKEN>')[:300]}")
    return found


@pytest.fixture(scope="module")
def sent_tokens(deployed_stack) -> dict[str, str]:
    """Send every kind of token through the edge once; what was sent, by kind."""
    local = read_env_file(secrets_file("local"))
    tokens = {
        "verify token": local["META_VERIFY_TOKEN"],
        "admin token": local["ADMIN_API_TOKEN"],
        "wrong verify token": f"wrongverify{secrets.token_hex(12)}",
        "unknown x-api-token": f"unknownapitoken{secrets.token_hex(12)}",
        "signature header": f"sha256={secrets.token_hex(32)}",
    }
    edge = Edge(deployed_stack)
    tokens["_first_execution"] = sql(deployed_stack, "select coalesce(max(id), 0) + 1 from execution_entity")
    for channel in CHANNELS:
        challenge = f"challenge-{secrets.token_hex(4)}"
        answer = edge.send("GET", verify_path(channel, tokens["verify token"], challenge))
        assert (answer.status, answer.text) == (200, challenge)
        assert edge.send("GET", verify_path(channel, tokens["wrong verify token"], "x")).status == 403
        body = meta_payloads.encode(meta_payloads.whatsapp_text("token test", sender="33600000001"))
        headers = {"Content-Type": "application/json"}
        assert edge.send("POST", f"/v1/inbound/{channel}", body,
                         {**headers, "x-api-token": tokens["unknown x-api-token"]}).status == 403
        assert edge.send("POST", f"/v1/inbound/{channel}", body,
                         {**headers, "X-Hub-Signature-256": tokens["signature header"]}).status == 403
    replay = json.dumps({"dry_run": True, "max_messages": 1}).encode()
    answer = edge.send("POST", "/v1/admin/dlq/replay", replay,
                       {"Content-Type": "application/json", "x-api-token": tokens["admin token"]})
    assert answer.status == 200, answer.text
    return tokens


WEBHOOK_WORKFLOWS = ("RbW0MetaVerify00", "RbW1InWhatsApp00", "RbW1InInstagram0", "RbW1InMessenger0",
                     "RbW9DlqReplay000")


def sql(stack, query: str, variables: dict[str, str] | None = None) -> str:
    return stack.ssh(*container_exec("resto-postgres-1", psql(query, variables))).stdout.strip()


@pytest.fixture(scope="module")
def executions_erased(deployed_stack, sent_tokens) -> None:
    """Wait (bounded) until n8n has erased the webhook executions it wrote while they ran."""
    # This module's executions: an earlier module's n8n restart can leave a run it interrupted behind.
    query = ("""select count(*) from execution_entity where "workflowId" = any(string_to_array(:'ids', ',')) """
             "and id >= :'first'::bigint")
    ids = {"ids": ",".join(WEBHOOK_WORKFLOWS), "first": sent_tokens["_first_execution"]}
    poll(lambda: sql(deployed_stack, query, ids), until=lambda left: left == "0", timeout=240, interval=5,
         what="this module's webhook executions erased by n8n (count still stored)")


def test_the_refusals_were_recorded(deployed_stack, sent_tokens):
    """The requests did reach n8n: the search below is not vacuous."""
    counts = sql(deployed_stack, "select event_type, count(*) from security_events where event_type in "
                                  "('VERIFY_TOKEN_INVALID', 'AUTH_FAILED', 'SIGNATURE_INVALID') group by 1").split()
    recorded = dict(line.split("|") for line in counts)
    assert {kind: int(count) >= len(CHANNELS) for kind, count in recorded.items()} == {
        "AUTH_FAILED": True, "SIGNATURE_INVALID": True, "VERIFY_TOKEN_INVALID": True}


@pytest.fixture(scope="module")
def cleaned(deployed_stack, executions_erased) -> None:
    """The host's nightly cleanup, run now: it deletes the executions interruptions left (after the wait
    above, none of this module's is left for it to delete)."""
    ran = deployed_stack.ssh(f"{HostLayout().base_dir}/bin/cleanup", check=False)
    assert ran.returncode == 0, ran.stderr


@pytest.mark.parametrize("kind", ["verify token", "admin token", "wrong verify token", "unknown x-api-token",
                                  "signature header"])
def test_token_is_nowhere_in_the_database(deployed_stack, sent_tokens, cleaned, kind):
    dump = database_dump(deployed_stack)
    size = len(dump)  # a name, so that a failure prints the size and not the dump
    assert size > 10_000, "the dump is too small to be the stack's database"
    token = sent_tokens[kind].removeprefix("sha256=")
    assert where_stored(dump, token) == [], f"the {kind} sent through the edge is stored in PostgreSQL"
