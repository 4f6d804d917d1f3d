"""The product's main job, end to end on a fresh VPS container over real SSH:
deploy, redeploy (nothing changes), upgrade, roll back, refuse what must be
refused, survive a failed migration, a concurrent deploy and a killed one.

The tests run in file order on one stack (the session's ``deployed_stack``):
each starts from the state the previous one left, like an operator's day.
Releases v1..v4 are real git checkouts made here from the repository's files,
each tagged, so release names come from git as in production.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from restobot import meta_payloads as meta
from restobot.operations.lock import NON_IDEMPOTENT_OPERATIONS
from restobot.release_archive import SOURCE_GLOBS
from restobot.settings import REPO_ROOT, read_env_file, secrets_file
from tests.e2e.conftest import PYINFRA, run_pyinfra, write_inventory

pytestmark = pytest.mark.e2e

NOTE_MIGRATION = (
    "-- migrate:backward-compatible\n"
    "-- v2 adds a nullable column: v1 still runs on this schema.\n"
    "ALTER TABLE inbound_messages ADD COLUMN e2e_note text;\n"
)
BROKEN_MIGRATION = (
    "CREATE TABLE e2e_half_applied (id int);\n"
    "ALTER TABLE no_such_table ADD COLUMN x int;\n"
)
INCOMPATIBLE_MIGRATION = (
    "-- v4 renames a column: releases before it cannot run on this schema.\n"
    "ALTER TABLE inbound_messages RENAME COLUMN e2e_note TO e2e_remark;\n"
)


# --- releases as git checkouts ---------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def with_release_header(workflows_dir: Path, value: str) -> None:
    """Make W0 answer with ``X-Release: value``: a workflow change visible from outside."""
    for path in workflows_dir.glob("*.json"):
        data = json.loads(path.read_text())
        if data["name"] != "W0_META_VERIFY_UNIFIED":
            continue
        for node in data["nodes"]:
            if node["name"] == "Answer Meta":
                node["parameters"]["options"]["responseHeaders"]["entries"].append({"name": "X-Release", "value": value})
        path.write_text(json.dumps(data, indent=2))


def make_checkout(root: Path, tag: str, migrations: dict[str, str], header: str | None) -> Path:
    checkout = root / tag
    for pattern in SOURCE_GLOBS:
        for path in REPO_ROOT.glob(pattern):
            target = checkout / path.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    for name, text in migrations.items():
        (checkout / "migrations" / name).write_text(text)
    if header:
        with_release_header(checkout / "workflows", header)
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "-c", "user.email=e2e@localhost", "-c", "user.name=e2e", "commit", "-qm", tag)
    git(checkout, "tag", tag)
    return checkout


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkouts")
    note = {"0090_e2e_note.sql": NOTE_MIGRATION}
    return {
        "v1": make_checkout(root, "v1", {}, None),
        "v2": make_checkout(root, "v2", note, "v2"),
        "v3": make_checkout(root, "v3", {**note, "0091_e2e_broken.sql": BROKEN_MIGRATION}, "v3"),
        "v4": make_checkout(root, "v4", {**note, "0092_e2e_rename.sql": INCOMPATIBLE_MIGRATION}, "v2"),
    }


# --- talking to the stack ------------------------------------------------------------------


def public_request(stack, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request to api.<domain> through the VPS's published :443 (Traefik), SNI and all."""
    api_host = f"api.{stack.settings['domains']['domain']}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the go-live checks verify the chain; here we test routing
    raw = socket.create_connection(("127.0.0.1", stack.endpoint.https_port), timeout=10)
    connection = http.client.HTTPConnection(api_host, timeout=20)
    connection.sock = context.wrap_socket(raw, server_hostname=api_host)
    connection.request(method, path, body=body, headers={"Host": api_host, **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response, payload


def local_secrets() -> dict[str, str]:
    return read_env_file(secrets_file("local"))


def verify(stack, challenge: str) -> tuple[int, str, str | None]:
    token = local_secrets()["META_VERIFY_TOKEN"]
    response, body = public_request(
        stack, "GET", f"/v1/inbound/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge={challenge}"
    )
    return response.status, body.decode(), response.getheader("X-Release")


def send_whatsapp(stack, text: str) -> int:
    body = meta.encode(meta.whatsapp_text(text))
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, local_secrets()["META_APP_SECRET"])}
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body, headers)
    return response.status


def sql(stack, query: str) -> str:
    return stack.ssh(
        "docker", "exec", "resto-postgres-1", "psql", "-X", "-At", "-U", "n8n", "-d", "n8n", "-c", query
    ).stdout.strip()


def current_release(stack) -> str:
    return stack.ssh("readlink", "/opt/resto/current").stdout.strip().rsplit("/", 1)[-1]


def started_at(stack, container: str) -> str:
    return stack.ssh("docker", "inspect", "--format", "{{.State.StartedAt}}", container).stdout.strip()


def audit_lines(stack) -> list[str]:
    return stack.ssh("cat", "/opt/resto/audit.log").stdout.splitlines()


def changed_operations(run) -> list[str]:
    return [name for name in run.changed if name not in NON_IDEMPOTENT_OPERATIONS]


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not seen within {seconds:.0f} s")


# --- the operator's day ----------------------------------------------------------------------


def test_bad_inventory_fails_before_any_connection(deployed_stack, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    tree = {**deployed_stack.settings, "ssh": {**deployed_stack.settings["ssh"], "port": listener.getsockname()[1]}}
    tree["domains"] = {"domain": "not a domain"}
    inventory = write_inventory(tmp_path / "bad.py", tree, group="bad", name="bad-vps")
    try:
        run = run_pyinfra(inventory, REPO_ROOT / "deploy.py")
        accepted = 0
        while True:
            try:
                listener.accept()[0].close()
                accepted += 1
            except OSError:
                break
    finally:
        listener.close()
    assert run.returncode != 0
    assert "domains.domain: must be a lower-case DNS name such as resto.example.com" in run.stderr + run.stdout
    assert accepted == 0, "pyinfra connected before refusing the settings"


def test_v1_deploys_and_passes_its_smoke_checks(deployed_stack, checkouts):
    run = deployed_stack.deploy(source=checkouts["v1"])
    assert run.returncode == 0, run.output_tail()
    assert current_release(deployed_stack).startswith("v1-")
    assert verify(deployed_stack, "hello-v1") == (200, "hello-v1", None)
    assert "smoke PASS verify-instagram" in run.stderr + run.stdout


def test_second_deploy_with_nothing_changed_changes_nothing(deployed_stack, checkouts):
    run = deployed_stack.deploy(source=checkouts["v1"])
    assert run.returncode == 0, run.output_tail()
    assert changed_operations(run) == []
    assert run.results["totals"]["error"] == 0


def test_v2_brings_its_migration_and_its_workflow(deployed_stack, checkouts):
    assert send_whatsapp(deployed_stack, "before v2") == 200
    run = deployed_stack.deploy(source=checkouts["v2"])
    assert run.returncode == 0, run.output_tail()
    assert current_release(deployed_stack).startswith("v2-")
    assert sql(deployed_stack, "SELECT count(*) FROM information_schema.columns "
                               "WHERE table_name = 'inbound_messages' AND column_name = 'e2e_note'") == "1"
    assert verify(deployed_stack, "hello-v2") == (200, "hello-v2", "v2")
    backups = deployed_stack.ssh("ls", "/opt/resto/backups").stdout.split()
    assert any(re.fullmatch(r"before-v2-[0-9a-f]{8}\.dump", name) for name in backups), backups


def test_rollback_to_v1_serves_v1_workflows_and_keeps_every_row(deployed_stack):
    assert send_whatsapp(deployed_stack, "during v2") == 200
    rows = wait_for(lambda: sql(deployed_stack, "SELECT count(*) FROM inbound_messages"), 30, "inbound rows")
    run = deployed_stack.rollback("v1")
    assert run.returncode == 0, run.output_tail()
    assert current_release(deployed_stack).startswith("v1-")
    assert verify(deployed_stack, "back-to-v1") == (200, "back-to-v1", None)
    assert sql(deployed_stack, "SELECT count(*) FROM inbound_messages") == rows
    assert "0090_e2e_note.sql" in sql(deployed_stack, "SELECT filename FROM schema_migrations")
    assert any(" rollback release=v1-" in line and "result=success" in line for line in audit_lines(deployed_stack))


def test_rollback_to_a_release_not_on_the_host_changes_nothing(deployed_stack):
    before = (current_release(deployed_stack), audit_lines(deployed_stack))
    run = deployed_stack.rollback("v9")
    assert run.returncode != 0
    assert "release v9 is not on the host" in run.stderr + run.stdout
    assert (current_release(deployed_stack), audit_lines(deployed_stack)) == before


def test_failed_migration_stops_the_deploy_and_v2_keeps_serving(deployed_stack, checkouts):
    assert deployed_stack.deploy(source=checkouts["v2"]).returncode == 0
    main_started = started_at(deployed_stack, "resto-n8n-main-1")
    worker_started = started_at(deployed_stack, "resto-n8n-worker-1")
    run = deployed_stack.deploy(source=checkouts["v3"])
    output = run.stderr + run.stdout
    assert run.returncode != 0
    assert "0091_e2e_broken.sql" in output and 'relation "no_such_table" does not exist' in output
    assert current_release(deployed_stack).startswith("v2-")
    assert verify(deployed_stack, "still-v2") == (200, "still-v2", "v2")
    assert sql(deployed_stack, "SELECT to_regclass('e2e_half_applied') IS NULL") == "t"
    assert "0091_e2e_broken.sql" not in sql(deployed_stack, "SELECT filename FROM schema_migrations")
    # n8n was never restarted, so it never ran on the half-migrated schema.
    assert started_at(deployed_stack, "resto-n8n-main-1") == main_started
    assert started_at(deployed_stack, "resto-n8n-worker-1") == worker_started
    assert deployed_stack.ssh("test", "!", "-e", "/opt/resto/deploy.lock", check=False).returncode == 0
    assert any("result=failed at 'Ensure every migration is applied'" in line for line in audit_lines(deployed_stack))


def start_deploy(stack, source: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PYINFRA), str(stack.inventory), str(REPO_ROOT / "deploy.py"), "-y", "--data", f"source={source}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def lock_held(stack) -> bool:
    return stack.ssh("test", "-d", "/opt/resto/deploy.lock", check=False).returncode == 0


def test_second_deploy_at_the_same_time_refuses_naming_the_holder(deployed_stack, checkouts):
    first = start_deploy(deployed_stack, checkouts["v1"])
    try:
        wait_for(lambda: lock_held(deployed_stack), 60, "the first deploy's lock")
        second = deployed_stack.deploy(source=checkouts["v1"])
    finally:
        first_output, _ = first.communicate(timeout=900)
    assert second.returncode != 0
    assert re.search(r"Deploy lock found \(holder=\S+ action=deploy release=v1-", second.stderr + second.stdout)
    assert first.returncode == 0, first_output[-4000:]
    assert current_release(deployed_stack).startswith("v1-")


def test_killed_deploy_leaves_its_lock_and_the_next_run_converges(deployed_stack, checkouts):
    deploy = start_deploy(deployed_stack, checkouts["v2"])
    seen = []
    for line in deploy.stdout:
        seen.append(line)
        if "Starting operation: Ensure v2-" in line and "serves" in line:
            time.sleep(3)  # in the middle of compose up / the workflow import
            deploy.send_signal(signal.SIGKILL)
            break
    deploy.wait(timeout=60)
    assert any("serves" in line for line in seen), "".join(seen)[-3000:]
    assert lock_held(deployed_stack)

    refused = deployed_stack.deploy(source=checkouts["v2"])
    assert refused.returncode != 0 and "Deploy lock found" in refused.stderr + refused.stdout

    unlocked = run_pyinfra(deployed_stack.inventory, REPO_ROOT / "unlock.py")
    assert unlocked.returncode == 0, unlocked.output_tail()
    assert not lock_held(deployed_stack)
    assert any(" unlock release=- " in line for line in audit_lines(deployed_stack))

    converged = deployed_stack.deploy(source=checkouts["v2"])
    assert converged.returncode == 0, converged.output_tail()
    assert current_release(deployed_stack).startswith("v2-")
    assert verify(deployed_stack, "converged") == (200, "converged", "v2")


def test_rollback_over_an_incompatible_migration_is_refused_then_restores_on_request(deployed_stack, checkouts):
    assert send_whatsapp(deployed_stack, "before v4") == 200
    wait_for(lambda: sql(deployed_stack, "SELECT count(*) FROM inbound_messages WHERE text = 'before v4'") == "1",
             30, "the message sent before v4")
    assert deployed_stack.deploy(source=checkouts["v4"]).returncode == 0
    assert current_release(deployed_stack).startswith("v4-")

    refused = deployed_stack.rollback("v2")
    output = refused.stderr + refused.stdout
    assert refused.returncode != 0
    assert "not marked backward-compatible: 0092_e2e_rename.sql" in output
    assert "restore_backup=true" in output
    assert current_release(deployed_stack).startswith("v4-")

    restored = deployed_stack.rollback("v2", "--data", "restore_backup=true")
    assert restored.returncode == 0, restored.output_tail()
    assert current_release(deployed_stack).startswith("v2-")
    ledger = sql(deployed_stack, "SELECT filename FROM schema_migrations")
    assert "0092_e2e_rename.sql" not in ledger and "0090_e2e_note.sql" in ledger
    assert sql(deployed_stack, "SELECT count(*) FROM inbound_messages WHERE text = 'before v4'") == "1"
    assert verify(deployed_stack, "restored") == (200, "restored", "v2")
