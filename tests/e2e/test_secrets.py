"""``resto local secrets rotate POSTGRES_PASSWORD`` and ``META_APP_SECRET`` on the deployed local stack.

The rotation changes the role's password in PostgreSQL and deploys the serving release again with
the new value in every file that holds it. Proven on the host: the old password no longer logs in
and the new one does (over TCP, where pg_hba asks for scram-sha-256); a customer's message is
stored and answered through the edge afterwards; the value is in no output and not in the audit log.
The next deploy (the app secret's rotation, with an overlap) succeeds: messages signed with the old
and the new secret are both stored, a wrong one is refused.

The rotation works on a copy of the local secrets (``RESTOBOT_SECRETS_DIR``), and the module puts
the old password back at the end (``rotate --from-stdin``): the shared stack and secrets/local.env
agree again for whatever runs next (the demo's VPS among them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid

import pytest

from harness.deploys import public_request, run_pyinfra, stack_sql
from harness.poll import poll
from restobot import meta_payloads
from restobot.commands import HostLayout, container_name
from restobot.settings import REPO_ROOT, SECRETS_DIR_ENV, read_env_file, secrets_file

pytestmark = pytest.mark.e2e

MARK = f"e2e-rotate-{uuid.uuid4().hex[:8]}"


def resto(stack, folder, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), SECRETS_DIR_ENV: str(folder)}
    return subprocess.run([sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), "local", *args],
                          cwd=REPO_ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=1800)


def deploy_with(stack, folder):
    return run_pyinfra(stack.inventory, REPO_ROOT / "deploy.py", "--data", "release=e2e-base",
                       env={SECRETS_DIR_ENV: str(folder)})


@pytest.fixture(scope="module")
def secrets_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secrets")
    shutil.copy2(secrets_file("local"), folder / "local.env")
    (folder / "local.env").chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def rotated(deployed_stack, secrets_copy):
    """POSTGRES_PASSWORD rotated on the stack (serving e2e-base, as this checkout renders it, first);
    afterwards the old one is put back the same way."""
    stack = deployed_stack
    serving = deploy_with(stack, secrets_copy)
    assert serving.returncode == 0, serving.output_tail()
    old = read_env_file(secrets_copy / "local.env")["POSTGRES_PASSWORD"]
    proc = resto(stack, secrets_copy, "secrets", "rotate", "POSTGRES_PASSWORD", "--yes", "--json")
    new = read_env_file(secrets_copy / "local.env")["POSTGRES_PASSWORD"]
    yield stack, old, new, proc
    back = resto(stack, secrets_copy, "secrets", "rotate", "POSTGRES_PASSWORD", "--from-stdin", "--yes", stdin=old)
    assert back.returncode == 0, back.stderr[-4000:] + back.stdout[-4000:]


def logs_in(stack, password: str) -> bool:
    """psql as the role over TCP to the container's own address (127.0.0.1 is trusted in pg_hba)."""
    proc = stack.ssh("docker", "exec", "-e", f"PGPASSWORD={password}", container_name("postgres"), "sh", "-c",
                     'exec psql -X -At -h "$(hostname -i | cut -d" " -f1)" -U "$POSTGRES_USER" -d "$POSTGRES_DB" '
                     "-c 'SELECT 1'", check=False)
    assert proc.returncode == 0 or "password authentication failed" in proc.stderr, proc.stderr
    return proc.returncode == 0


def test_the_rotation_deploys_the_serving_release_again(rotated):
    stack, old, new, proc = rotated
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    assert data["secret"] == "POSTGRES_PASSWORD" and data["database_role_changed"] is True  # pragma: allowlist secret
    assert data["previous_release"].startswith("e2e-base-") and data["release"].startswith("e2e-base-")
    assert data["release"] != data["previous_release"]  # the archive holds the rendered env files
    assert new != old
    assert read_env_file(secrets_file("local"))["POSTGRES_PASSWORD"] == old  # only the copy was rotated


def test_the_old_password_no_longer_logs_in_and_the_new_one_does(rotated):
    stack, old, new, _ = rotated
    assert logs_in(stack, new)
    assert not logs_in(stack, old)


def send_signed(stack, secret: str) -> tuple[int, str]:
    """A customer's WhatsApp message through the edge, signed with ``secret``: the answer and its wamid."""
    sender = "3368" + str(secrets.randbelow(10**8)).zfill(8)
    payload = meta_payloads.whatsapp_text(f"{MARK} after the rotation", sender=sender)
    body = meta_payloads.encode(payload)
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secret)})
    return response.status, payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


def forget(stack, wamid: str) -> None:
    stack_sql(stack, "DELETE FROM outbound_messages WHERE msg_id = :'id'; "
                     "DELETE FROM inbound_messages WHERE msg_id = :'id'", id=wamid)


def test_a_customers_message_is_stored_and_answered_after_the_rotation(rotated):
    stack, _, _, _ = rotated
    status, wamid = send_signed(stack, read_env_file(secrets_file("local"))["META_APP_SECRET"])
    assert status == 200
    try:
        poll(lambda: stack_sql(stack, "SELECT status FROM outbound_messages WHERE msg_id = :'id'", id=wamid),
             until=lambda status: status == "SENT", timeout=90, interval=1, what="the reply sent")
    finally:
        forget(stack, wamid)


def test_the_value_is_in_no_output_nor_in_the_audit_log(rotated):
    stack, _, new, proc = rotated
    assert new not in proc.stdout + proc.stderr
    audit = stack.ssh("cat", HostLayout().audit_log).stdout
    assert "secrets rotate POSTGRES_PASSWORD" in audit
    assert new not in audit


def test_the_next_deploy_rotates_the_app_secret_and_takes_the_old_and_the_new_one_during_its_overlap(
        rotated, secrets_copy):
    """The deploy after the password's rotation (that it works is the point): the app secret rotated, as
    Meta issues a new one. Deliveries signed with the old one are still taken for the overlap (the old
    value stays accepted: nothing to put back at the end)."""
    stack = rotated[0]
    old, new = read_env_file(secrets_copy / "local.env")["META_APP_SECRET"], secrets.token_hex(16)
    proc = resto(stack, secrets_copy, "secrets", "rotate", "META_APP_SECRET", "--from-stdin", "--yes",
                 "--overlap", "1h", "--json", stdin=new)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["old_value_accepted_until"]
    answers = {}
    for name, secret in (("new", new), ("old", old), ("wrong", secrets.token_hex(16))):
        status, wamid = send_signed(stack, secret)
        answers[name] = status
        stored = stack_sql(stack, "SELECT count(*) FROM inbound_messages WHERE msg_id = :'id'", id=wamid)
        forget(stack, wamid)
        answers[f"{name} stored"] = stored
    assert answers == {"new": 200, "new stored": "1", "old": 200, "old stored": "1", "wrong": 403, "wrong stored": "0"}
    assert new not in proc.stdout + proc.stderr
