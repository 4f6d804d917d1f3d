"""The operator's tool (``resto STAGE COMMAND``, restobot/cli.py) against the deployed local stack.

Each command runs as the operator runs it: a subprocess reading the stack's inventory
and the local secrets, over real SSH with the pinned host key. What it claims is checked
on the host itself (docker's start times and health, the lock directory, the audit log,
rows in PostgreSQL): a restarted service has a new start time and is healthy again; a
held lock is shown and refuses a change; a read never takes the lock; bad input changes
nothing. Rows the module adds to the database carry a marker and are removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import secrets
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from harness.deploys import checklist_inventory, stack_sql
from restobot import meta_payloads
from restobot.commands import HostLayout, container_name
from restobot.operations.lock import Actor, lock_info
from restobot.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

LAYOUT = HostLayout()
MARK = f"e2e-cli-{uuid.uuid4().hex[:8]}"
READS = [
    ["ps"], ["logs", "nginx", "--tail", "3"], ["stats"], ["lock", "status"], ["audit", "--tail", "5"],
    ["migrations", "status"], ["executions", "--failed"], ["messages"], ["security", "--since", "1h"],
    ["flooding", "--since", "1m"], ["dlq", "count"], ["dlq", "list"], ["db", "size"],
    ["dlq", "replay", "--dry-run"], ["cleanup", "--dry-run"], ["migrations", "log"], ["smoke"], ["backup", "list"],
    ["quarantine", "list"],
]


class Resto:
    """``python -m restobot.cli --inventory INVENTORY local ARGS`` (the ``resto`` console script's code)."""

    def __init__(self, inventory: Path):
        self.inventory = inventory

    def __call__(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run([sys.executable, "-m", "restobot.cli", "--inventory", str(self.inventory), "local",
                               *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    def json(self, *args: str) -> dict:
        proc = self(*args, "--json")
        assert proc.returncode == 0, f"resto {' '.join(args)} exited {proc.returncode}\n{proc.stderr}{proc.stdout}"
        return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def stack(deployed_stack):
    return deployed_stack


@pytest.fixture(scope="module")
def resto(stack) -> Resto:
    return Resto(stack.inventory)


sql = stack_sql


def host_file(stack, path: str) -> str:
    return stack.ssh("sh", "-c", 'cat "$0" 2>/dev/null || true', path).stdout


def inspect(stack, service: str) -> dict:
    out = stack.ssh("docker", "inspect", "--format", "{{json .State}}", container_name(service)).stdout
    return json.loads(out)


def host_snapshot(stack) -> dict:
    """What a command must not change: the audit log, the lock, every service's start time."""
    lock = stack.ssh("sh", "-c", '[ -d "$0" ] && cat "$0/info" || echo free', LAYOUT.lock_dir).stdout
    started = stack.ssh("sh", "-c", "docker ps -a --filter label=com.docker.compose.project=resto -q "
                        "| xargs docker inspect --format '{{.Name}} {{.State.Status}} {{.State.StartedAt}}'").stdout
    return {"audit": host_file(stack, LAYOUT.audit_log), "lock": lock, "containers": sorted(started.splitlines())}


def hold_lock(stack, holder: Actor, action: str) -> str:
    """Take the deploy lock on the host as a deploy does (mkdir, then its info)."""
    info = lock_info(holder, action, "e2e-base", "2026-12-01T09:00:00Z")
    stack.ssh("sh", "-c", 'mkdir "$0" && printf "%s" "$1" > "$0/info"', LAYOUT.lock_dir, info)
    return info.strip()


def free_lock(stack) -> None:
    stack.ssh("rm", "-rf", LAYOUT.lock_dir)


@pytest.fixture
def held_lock(stack):
    info = hold_lock(stack, Actor("e2e-deployer", "ci-runner"), "deploy")
    yield info
    free_lock(stack)


# --- reads ---------------------------------------------------------------------------------------------


def test_ps_shows_every_service_running_healthy_under_the_deployed_release(resto):
    data = resto.json("ps")
    assert data["release"].startswith("e2e-base-")  # the release's name and its archive's hash
    assert data["not_healthy"] == []
    services = {c["service"]: c for c in data["containers"]}
    for service in ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik"):
        assert (services[service]["state"], services[service]["health"]) == ("running", "healthy"), service
        assert services[service]["name"] == container_name(service)
    assert resto("ps", "--check").returncode == 0


def test_logs_tail_gives_at_most_n_lines_of_the_service(resto):
    data = resto.json("logs", "traefik", "--tail", "3")
    assert 1 <= len(data["lines"]) <= 3
    assert {line["service"] for line in data["lines"]} == {"traefik"}
    assert all(line["time"] for line in data["lines"])


def test_logs_follow_shows_a_request_as_it_comes_and_stops_on_ctrl_c(resto, stack):
    from harness.deploys import public_request

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    follower = subprocess.Popen([sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), "local",
                                 "logs", "nginx", "--tail", "1", "--follow", "--json"],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        path = f"/{MARK}-follow"
        seen, deadline = [], time.monotonic() + 60
        while not any(path in line for line in seen) and time.monotonic() < deadline:
            public_request(stack, "GET", path)
            with contextlib.suppress(queue.Empty):
                while True:
                    seen.append(lines.get(timeout=1))
        matches = [json.loads(line) for line in seen if path in line]
        assert matches, f"no line of {path} within 60 s; the last lines: {seen[-5:]}"
        assert matches[0]["service"] == "nginx" and matches[0]["time"]
    finally:
        follower.send_signal(signal.SIGINT)
        status = follower.wait(timeout=30)
    assert status == 0, follower.stderr.read()


def test_stats_reads_every_container_and_the_disk(resto):
    data = resto.json("stats")
    assert {row["name"] for row in data["containers"]} >= {container_name(s) for s in ("postgres", "nginx", "n8n-main")}
    assert all(isinstance(row["cpu_percent"], float) for row in data["containers"])
    assert data["disk"]["total_kib"] > 0


def test_audit_shows_the_first_deploy(resto):
    entries = resto.json("audit", "--tail", "50")["entries"]
    assert any(e.get("action") == "deploy" and e.get("release", "").startswith("e2e-base-") and e.get("result") == "success"
               for e in entries), entries


def test_migrations_status_has_every_migration_applied(resto):
    data = resto.json("migrations", "status")
    assert data["release"] == "e2e-base"
    files = sorted(path.name for path in (REPO_ROOT / "migrations").glob("*.sql"))
    assert [(m["filename"], m["state"]) for m in data["migrations"]] == [(name, "applied") for name in files]
    assert (data["pending"], data["unknown"], data["problems"]) == ([], [], [])
    assert all(m["applied_at"] for m in data["migrations"])


def test_migrations_log_is_what_the_first_deploys_runner_printed(resto, stack):
    data = resto.json("migrations", "log")
    assert data["release"] == resto.json("ps")["release"]  # the first deploy, the only one that migrated
    assert data["file"] == LAYOUT.migration_log(data["release"])
    assert data["lines"] == host_file(stack, data["file"]).splitlines()
    text = "\n".join(data["lines"])
    assert all(path.name in text for path in (REPO_ROOT / "migrations").glob("*.sql")), text


def test_db_size_lists_the_bots_and_n8ns_tables(resto):
    data = resto.json("db", "size", "--limit", "1000")
    assert data["database"]["database"] == "n8n" and data["database"]["bytes"] > 0
    assert {"inbound_messages", "outbound_messages", "execution_entity", "workflow_entity"} <= {
        t["table"] for t in data["tables"]}


@pytest.fixture
def failed_execution(stack):
    """An execution of a deployed workflow, recorded as failed (n8n's own table; removed afterwards)."""
    workflow_id, name = sql(stack, "SELECT id, name FROM workflow_entity ORDER BY name LIMIT 1").split("|")
    execution = sql(stack, 'INSERT INTO execution_entity (finished, mode, "startedAt", "stoppedAt", "workflowId", '
                           "status, \"createdAt\") VALUES (false, 'trigger', now(), now(), :'wf', 'error', now()) "
                           "RETURNING id", wf=workflow_id).splitlines()[0]
    yield int(execution), workflow_id, name
    sql(stack, "DELETE FROM execution_entity WHERE id = (:'id')::int", id=execution)


def test_failed_executions_carry_their_workflows_name(resto, failed_execution):
    execution, workflow_id, name = failed_execution
    rows = resto.json("executions", "--failed", "--limit", "50")["executions"]
    [row] = [r for r in rows if r["id"] == execution]
    assert (row["workflow_id"], row["workflow_name"], row["status"]) == (workflow_id, name, "error")
    assert all(r["status"] in ("error", "crashed") for r in rows)


@pytest.fixture
def dlq_rows(stack):
    """Two replies in the DLQ on whatsapp and one on messenger, marked by this module (removed afterwards)."""
    sql(stack, "INSERT INTO outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
               "retry_count, error_code, error_message) SELECT c, :'mark' || '-' || n, :'mark', '33600000099', "
               "'{}'::jsonb, 'DLQ', 5, '131056', 'e2e: gave up' FROM (VALUES ('whatsapp', 1), ('whatsapp', 2), "
               "('messenger', 3)) AS v(c, n)", mark=MARK)
    yield
    sql(stack, "DELETE FROM outbound_messages WHERE conversation_key = :'mark'", mark=MARK)


def test_dlq_count_list_and_messages_show_the_dlq(resto, stack, dlq_rows):
    before = int(sql(stack, "SELECT count(*) FROM outbound_messages WHERE status = 'DLQ'"))
    counted = resto.json("dlq", "count")
    assert counted["count"] == before >= 3
    assert counted["by_channel"]["messenger"] >= 1 and counted["by_channel"]["whatsapp"] >= 2
    listed = resto.json("dlq", "list", "--channel", "whatsapp", "--limit", "1000")["messages"]
    assert {m["msg_id"] for m in listed} >= {f"{MARK}-1", f"{MARK}-2"}
    assert {m["channel"] for m in listed} == {"whatsapp"}
    assert len(resto.json("dlq", "list", "--limit", "1")["messages"]) == 1
    trouble = resto.json("messages", "--limit", "1000")["messages"]
    assert {m["msg_id"] for m in trouble} >= {f"{MARK}-1", f"{MARK}-2", f"{MARK}-3"}
    assert all("recipient" not in m and "payload" not in m for m in trouble)  # personal data stays in the database


def test_security_counts_a_wrongly_signed_post_of_this_test(resto, stack):
    from harness.deploys import public_request

    before = {e["event_type"]: e["count"] for e in resto.json("security", "--since", "1h")["events"]}
    body = meta_payloads.encode(meta_payloads.whatsapp_text("e2e cli wrong signature"))
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secrets.token_hex(16))})
    assert response.status == 403
    deadline = time.monotonic() + 30
    while True:
        after = {e["event_type"]: e["count"] for e in resto.json("security", "--since", "1h")["events"]}
        if after.get("SIGNATURE_INVALID", 0) > before.get("SIGNATURE_INVALID", 0) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert after.get("SIGNATURE_INVALID", 0) == before.get("SIGNATURE_INVALID", 0) + 1


@pytest.fixture
def flood(stack):
    """Four messages of one conversation in the last minute (already handled: nothing re-drives them)."""
    sql(stack, "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload, status, "
               "status_reason, processed_at) SELECT 'whatsapp', :'mark' || '-' || n, :'mark', '33600000099', "
               "'{}'::jsonb, 'DROPPED', 'e2e', now() FROM generate_series(1, 4) AS n", mark=MARK)
    yield MARK
    sql(stack, "DELETE FROM inbound_messages WHERE conversation_key = :'mark'", mark=MARK)


def test_flooding_names_the_conversation_above_the_threshold(resto, flood):
    above = resto.json("flooding", "--since", "1m", "--more-than", "3")["conversations"]
    assert [(c["conversation_key"], c["count"]) for c in above if c["conversation_key"] == flood] == [(flood, 4)]
    not_above = resto.json("flooding", "--since", "1m", "--more-than", "4")["conversations"]
    assert flood not in {c["conversation_key"] for c in not_above}


# --- the lock: shown while held, reads never take it, changes refuse it ------------------------------------


def test_lock_status_shows_a_held_lock_and_its_holder(resto, held_lock):
    data = resto.json("lock", "status")
    assert (data["held"], data["holder"], data["action"], data["info"]) == (
        True, "e2e-deployer@ci-runner", "deploy", held_lock)
    assert resto.json("lock", "status") == data  # reading it twice changes nothing


@pytest.mark.parametrize("argv", READS, ids=[" ".join(argv) for argv in READS])
def test_a_read_succeeds_under_a_held_lock_and_leaves_host_and_lock_as_they_were(resto, stack, held_lock, argv):
    before = host_snapshot(stack)
    proc = resto(*argv, "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert host_snapshot(stack) == before


def test_a_change_under_a_held_lock_refuses_with_exit_4_and_changes_nothing(resto, stack, held_lock):
    before = host_snapshot(stack)
    proc = resto("restart", "nginx")
    assert proc.returncode == 4, proc.stderr
    assert f"the deploy lock is held ({held_lock})" in proc.stderr
    assert "resto local lock release" in proc.stderr
    assert host_snapshot(stack) == before


def test_lock_release_frees_a_lock_left_behind_and_audits_it(resto, stack):
    info = hold_lock(stack, Actor("killed-deploy", "laptop"), "deploy")
    proc = resto("lock", "release")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"released the deploy lock ({info})", proc.stdout + proc.stderr
    assert host_snapshot(stack)["lock"] == "free\n"
    assert resto.json("lock", "status")["held"] is False
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["result"]) == ("unlock", f"released lock ({info})")
    assert resto("lock", "release").stdout.strip() == "no deploy lock is held; nothing changed"


# --- changes --------------------------------------------------------------------------------------------------


def test_restart_gives_a_new_start_time_a_healthy_service_and_an_audit_line(resto, stack):
    before = inspect(stack, "n8n-main")
    proc = resto("restart", "n8n-main")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    after = inspect(stack, "n8n-main")
    assert after["StartedAt"] > before["StartedAt"]
    assert (after["Status"], after["Health"]["Status"]) == ("running", "healthy")
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["by"]) == ("restart n8n-main", str(Actor.current()))
    assert last["release"].startswith("e2e-base-")
    assert last["result"] == f"ok started_at={after['StartedAt']}"
    assert resto.json("lock", "status")["held"] is False
    assert resto.json("ps")["not_healthy"] == []


def test_stop_then_start_a_service(resto, stack):
    proc = resto("stop", "nginx")
    assert proc.returncode == 0, proc.stderr
    assert inspect(stack, "nginx")["Status"] == "exited"
    assert "nginx" in resto.json("ps")["not_healthy"]
    assert resto("ps", "--check").returncode == 1
    proc = resto("start", "nginx")
    assert proc.returncode == 0, proc.stderr
    state = inspect(stack, "nginx")
    assert (state["Status"], state["Health"]["Status"]) == ("running", "healthy")
    actions = [(e["action"], e["result"].split()[0]) for e in resto.json("audit", "--tail", "2")["entries"]]
    assert actions == [("stop nginx", "ok"), ("start nginx", "ok")]
    assert resto.json("lock", "status")["held"] is False


def test_stop_all_then_start_all_brings_the_whole_stack_down_and_back(resto, stack):
    proc = resto("stop", "--all")
    assert proc.returncode == 0, proc.stderr
    try:
        states = {c["service"]: c["state"] for c in resto.json("ps")["containers"]}
        long_running = {service: state for service, state in states.items() if service != "db-migrate"}
        assert set(long_running) >= {"traefik", "nginx", "n8n-main", "n8n-worker", "postgres", "redis"}
        assert set(long_running.values()) == {"exited"}, states
    finally:
        proc = resto("start", "--all", timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert resto.json("ps")["not_healthy"] == []
    assert resto.json("smoke")["failed"] == []
    actions = [e["action"].split()[0] for e in resto.json("audit", "--tail", "2")["entries"]]
    assert actions == ["stop", "start"]


def n8n_workflow_nodes(stack, name: str) -> str:
    return sql(stack, "SELECT nodes::text FROM workflow_entity WHERE name = :'name'", name=name)


@pytest.fixture
def older_release(resto, stack):
    """A release kept on the host whose W2_INBOUND_PROCESS differs from the current one's (the current
    release copied, a note on W2's first node); removed afterwards."""
    current = resto.json("ps")["release"]
    old, note = "e2e-workflow-old", f"{MARK} rollback"
    stack.ssh("cp", "-a", LAYOUT.release_dir(current), LAYOUT.release_dir(old))
    edit = ("import json, sys; p = sys.argv[1]; d = json.load(open(p)); d['nodes'][0]['notes'] = sys.argv[2]; "
            "json.dump(d, open(p, 'w'))")
    stack.ssh("python3", "-c", edit, f"{LAYOUT.release_dir(old)}/workflows/W2_INBOUND_PROCESS.json", note)
    yield current, old, note
    stack.ssh("rm", "-rf", LAYOUT.release_dir(old))


def test_workflow_rollback_puts_one_workflow_back_then_the_releases_own(resto, stack, older_release):
    current, old, note = older_release
    history = resto.json("workflow", "history", "W2_INBOUND_PROCESS")
    versions = {v["release"]: v for v in history["versions"]}
    assert versions[current]["current"] and not versions[old]["same_as_current"], history
    assert note not in n8n_workflow_nodes(stack, "W2_INBOUND_PROCESS")

    back = resto("workflow", "rollback", "W2_INBOUND_PROCESS", "--to", old, "--json", timeout=900)
    assert back.returncode == 0, back.stderr
    assert note in n8n_workflow_nodes(stack, "W2_INBOUND_PROCESS")
    assert [c["passed"] for c in json.loads(back.stdout)["smoke"]] and all(
        c["passed"] for c in json.loads(back.stdout)["smoke"])
    entry = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (entry["action"], entry["result"].split()[:2]) == (
        "workflow rollback W2_INBOUND_PROCESS", ["ok", f"W2_INBOUND_PROCESS={old}"])

    forward = resto("workflow", "rollback", "W2_INBOUND_PROCESS", "--to", current, timeout=900)
    assert forward.returncode == 0, forward.stderr
    assert note not in n8n_workflow_nodes(stack, "W2_INBOUND_PROCESS")
    # The stamp is the release's again: a deploy of it would change nothing.
    manifest = json.loads(stack.ssh("cat", f"{LAYOUT.current}/RELEASE.json").stdout)
    assert host_file(stack, LAYOUT.workflows_stamp).strip() == manifest["workflows_sha256"]


@pytest.fixture
def replayable(stack):
    """Two whatsapp replies and one messenger reply in the DLQ, each of a conversation that wrote a minute
    ago (inside Meta's 24 h window, so the admin API replays them); their texts carry this module's
    marker. Returns {text: row id}; the rows are removed afterwards."""
    key = f"{MARK}-replay"
    sql(stack, "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload, status, "
               "status_reason, processed_at, received_at) SELECT c, :'key' || '-in-' || c, :'key' || '-' || c, "
               "'33600000098', '{}'::jsonb, 'DROPPED', 'e2e', now(), now() - interval '1 minute' "
               "FROM (VALUES ('whatsapp'), ('messenger')) AS v(c)", key=key)
    rows = sql(stack, "INSERT INTO outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
                      "retry_count, error_code, error_message) SELECT c, :'key' || '-out-' || n, :'key' || '-' || c, "
                      "'33600000098', jsonb_build_object('messaging_product', 'whatsapp', 'to', '33600000098', "
                      "'type', 'text', 'text', jsonb_build_object('body', :'key' || '-' || n)), 'DLQ', 5, '131056', "
                      "'e2e: gave up' FROM (VALUES ('whatsapp', 1), ('whatsapp', 2), ('messenger', 3)) AS v(c, n) "
                      "RETURNING payload->'text'->>'body', id", key=key)
    # psql prints the returned rows, then the command tag (INSERT 0 3).
    yield {text: int(row_id) for text, row_id in (line.split("|") for line in rows.splitlines() if "|" in line)}
    sql(stack, "DELETE FROM outbound_messages WHERE conversation_key LIKE :'key' || '-%'", key=key)
    sql(stack, "DELETE FROM inbound_messages WHERE conversation_key LIKE :'key' || '-%'", key=key)


def statuses(stack, ids) -> dict[int, str]:
    out = sql(stack, "SELECT id, status FROM outbound_messages WHERE id = ANY(string_to_array(:'ids', ',')::bigint[])",
              ids=",".join(map(str, ids)))
    return {int(i): status for i, status in (line.split("|") for line in out.splitlines())}


def graph_texts(stack) -> list[str]:
    """This module's texts the Graph API double received as messages. Its request log also holds the
    alert posts (Alertmanager's, W8's) on /alerts, whose ``text`` is a string."""
    texts = []
    for request in stack.meta.requests():
        body = request.get("body")
        text = body.get("text") if request["path"].endswith("/messages") and isinstance(body, dict) else None
        if isinstance(text, dict) and MARK in str(text.get("body", "")):
            texts.append(text["body"])
    return texts


@pytest.mark.parametrize("argv", [
    ["dlq", "replay", "--channel", "sms"], ["dlq", "replay", "--max", "-1"], ["dlq", "replay", "--max", "0"],
    ["dlq", "replay", "--max", "100000"],
], ids=lambda argv: " ".join(argv))
def test_a_bad_replay_exits_2_and_leaves_the_dlq_as_it_was(resto, stack, replayable, argv):
    before = host_snapshot(stack)
    proc = resto(*argv)
    assert proc.returncode == 2, proc.stderr
    assert host_snapshot(stack) == before
    assert set(statuses(stack, replayable.values()).values()) == {"DLQ"}
    assert graph_texts(stack) == []


def test_dlq_replay_dry_run_lists_the_replies_and_changes_nothing(resto, stack, replayable):
    whatsapp = {replayable[f"{MARK}-replay-1"], replayable[f"{MARK}-replay-2"]}
    before = host_snapshot(stack)
    data = resto.json("dlq", "replay", "--dry-run", "--channel", "whatsapp", "--max", "500")
    assert (data["dry_run"], data["channel"], data["replayed"]) == (True, "whatsapp", [])
    assert whatsapp <= set(data["would_replay"])
    assert replayable[f"{MARK}-replay-3"] not in data["would_replay"]
    assert host_snapshot(stack) == before  # no lock taken, no audit line
    assert set(statuses(stack, replayable.values()).values()) == {"DLQ"}
    assert graph_texts(stack) == []


def test_dlq_replay_moves_the_channels_rows_and_the_graph_api_receives_them(resto, stack, replayable):
    from harness.poll import poll

    whatsapp = {replayable[f"{MARK}-replay-1"], replayable[f"{MARK}-replay-2"]}
    messenger = replayable[f"{MARK}-replay-3"]
    data = resto.json("dlq", "replay", "--channel", "whatsapp", "--max", "500")
    assert (data["dry_run"], data["channel"], data["would_replay"]) == (False, "whatsapp", [])
    assert whatsapp <= set(data["replayed"]) and messenger not in data["replayed"]
    sent = poll(lambda: statuses(stack, replayable.values()), until=lambda s: all(s[i] == "SENT" for i in whatsapp),
                timeout=120, interval=2, what="the replayed replies SENT by the outbound sender")
    assert sent[messenger] == "DLQ"
    assert sorted(graph_texts(stack)) == [f"{MARK}-replay-1", f"{MARK}-replay-2"]
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["by"]) == ("dlq replay channel=whatsapp max=500", str(Actor.current()))
    assert last["result"] == f"ok replayed={len(data['replayed'])}"
    assert resto.json("lock", "status")["held"] is False


def test_smoke_passes_on_the_running_stack_and_fails_with_the_gateway_stopped(resto, stack):
    data = resto.json("smoke")
    assert [(c["name"], c["passed"]) for c in data["checks"]] == [
        ("healthz", True), ("verify-whatsapp", True), ("verify-instagram", True), ("verify-messenger", True),
        ("console", True)]
    assert data["failed"] == []
    stack.ssh("docker", "stop", container_name("nginx"))
    try:
        proc = resto("smoke", "--json")
        assert proc.returncode == 1, proc.stderr
        assert {"healthz", "verify-whatsapp", "console"} <= set(json.loads(proc.stdout)["failed"])
    finally:
        assert resto("start", "nginx").returncode == 0
    assert resto.json("smoke")["failed"] == []


def test_smoke_meta_runs_the_checklists_meta_items_against_the_stage(stack):
    # The checklist's inventory trusts the local ACME server's root, as production trusts Let's Encrypt's.
    resto = Resto(checklist_inventory(stack, "cli-smoke-meta"))
    before = int(sql(stack, "SELECT count(*) FROM security_events WHERE event_type = 'SIGNATURE_INVALID'") or 0)
    data = resto.json("smoke", "--meta")
    outcomes = {item["item"]: item["outcome"] for item in data["items"]}
    assert set(outcomes) and all(name.startswith("meta: ") for name in outcomes), outcomes
    passed = {name.split(" [")[0] for name, outcome in outcomes.items() if outcome == "pass"}
    assert {"meta: verify handshake answers the challenge", "meta: bad signature is refused and recorded",
            "meta: unsigned post is refused at the gateway"} <= passed, outcomes
    assert data["failed"] == [] and data["manual"], outcomes  # Meta's subscription: a human confirms it
    after = int(sql(stack, "SELECT count(*) FROM security_events WHERE event_type = 'SIGNATURE_INVALID'") or 0)
    assert after > before, "the checklist's badly signed post was not recorded on the host"


def test_migrations_apply_dry_run_then_apply_with_nothing_pending(resto, stack):
    files = sorted(path.name for path in (REPO_ROOT / "migrations").glob("*.sql"))
    before = host_snapshot(stack)
    dry = resto.json("migrations", "apply", "--dry-run")
    assert dry["lines"][-1] == f"Dry run: 0 pending, {len(files)} applied; nothing was changed.", dry["lines"]
    assert host_snapshot(stack) == before  # no lock, no audit line, no service touched

    done = resto.json("migrations", "apply")
    summary = f"Nothing to apply: {len(files)} migration(s) already applied (latest {files[-1]})."
    assert done["lines"][-1] == summary, done["lines"]
    assert host_file(stack, LAYOUT.migration_log(done["release"])).splitlines() == done["lines"]
    assert resto.json("migrations", "log")["lines"] == done["lines"]
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["result"]) == ("migrations apply", f"ok {summary}")
    assert resto.json("lock", "status")["held"] is False


TABLES = ("inbound_messages", "outbound_messages", "security_events", "execution_entity", "quarantine")
AGED_ROWS = {  # table -> INSERT of one row of this module aged :'age' (an interval)
    "inbound_messages": "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload, status, "
                        "status_reason, processed_at, received_at) VALUES ('whatsapp', :'mark' || '-' || :'age', "
                        ":'mark' || '-cleanup', '33600000097', '{}'::jsonb, 'DROPPED', 'e2e', now(), "
                        "now() - (:'age')::interval) RETURNING id",
    "outbound_messages": "INSERT INTO outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
                         "created_at) VALUES ('whatsapp', :'mark' || '-' || :'age', :'mark' || '-cleanup', "
                         "'33600000097', '{}'::jsonb, 'DLQ', now() - (:'age')::interval) RETURNING id",
    "security_events": "INSERT INTO security_events (event_type, channel, detail, created_at) VALUES ('RATE_LIMIT', "
                       "'whatsapp', jsonb_build_object('mark', :'mark'), now() - (:'age')::interval) RETURNING id",
    "execution_entity": 'INSERT INTO execution_entity (finished, mode, "startedAt", "stoppedAt", "workflowId", status, '
                        '"createdAt") SELECT true, \'trigger\', now() - (:\'age\')::interval, '
                        "now() - (:'age')::interval, id, 'success', now() - (:'age')::interval FROM workflow_entity "
                        "WHERE name = 'W2_INBOUND_PROCESS' RETURNING id",  # a workflow that keeps its executions
    "quarantine": "INSERT INTO quarantine (channel, sender, reason, created_by, created_at, expires_at) VALUES "
                  "('whatsapp', '3360' || extract(epoch FROM (:'age')::interval)::bigint, :'mark', 'e2e', "
                  "now() - (:'age')::interval - interval '1 day', now() - (:'age')::interval) RETURNING id",
}


def insert_aged(stack, table: str, age: str) -> int:
    return int(sql(stack, AGED_ROWS[table], mark=MARK, age=age).splitlines()[0])


def row_exists(stack, table: str, row_id: int) -> bool:
    return sql(stack, f"SELECT count(*) FROM {table} WHERE id = (:'id')::bigint", id=str(row_id)) == "1"  # nosec B608


@pytest.fixture
def aged_rows(stack, resto):
    """For each table, a row an hour past its retention and one an hour short of it (removed afterwards);
    with what a dry run counted before they were added."""
    baseline = resto.json("cleanup", "--dry-run")
    retention = baseline["retention"]
    days = {"inbound_messages": retention["inbound_messages_days"],
            "outbound_messages": retention["outbound_messages_days"],
            "security_events": retention["security_events_days"]}
    hours = {**{table: d * 24 for table, d in days.items()}, "execution_entity": retention["executions_max_age_hours"],
             "quarantine": days["security_events"] * 24}  # an expired entry: as long as the events naming it
    rows = {table: (insert_aged(stack, table, f"{hours[table] + 1} hours"),
                    insert_aged(stack, table, f"{hours[table] - 1} hours")) for table in TABLES}
    yield rows, baseline["rows"]
    for table, ids in rows.items():
        sql(stack, f"DELETE FROM {table} WHERE id = ANY(string_to_array(:'ids', ',')::bigint[])",  # nosec B608
            ids=",".join(map(str, ids)))


def test_cleanup_removes_exactly_the_rows_past_their_retention_and_dry_run_changes_nothing(resto, stack, aged_rows):
    rows, baseline = aged_rows
    before = host_snapshot(stack)
    counted = resto.json("cleanup", "--dry-run")
    assert counted["rows"] == {table: baseline[table] + 1 for table in TABLES}
    assert host_snapshot(stack) == before  # no lock, no audit line
    assert all(row_exists(stack, table, old) for table, (old, _) in rows.items())

    done = resto.json("cleanup")
    assert (done["dry_run"], done["rows"]) == (False, counted["rows"])
    for table, (old, young) in rows.items():
        assert (row_exists(stack, table, old), row_exists(stack, table, young)) == (False, True), table
    assert resto.json("cleanup", "--dry-run")["rows"] == dict.fromkeys(TABLES, 0)
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["by"]) == ("cleanup", str(Actor.current()))
    assert last["result"] == "ok deleted " + " ".join(f"{t}={counted['rows'][t]}" for t in TABLES)
    assert resto.json("lock", "status")["held"] is False


INTERRUPTED = ('INSERT INTO execution_entity (finished, mode, "startedAt", "stoppedAt", "workflowId", status, '
               "\"createdAt\") SELECT false, 'webhook', now() - make_interval(mins => (:'ended'::int + 1)), "
               "CASE WHEN :'status' = 'running' THEN NULL ELSE now() - make_interval(mins => :'ended'::int) END, "
               "id, :'status', now() - make_interval(mins => (:'ended'::int + 1)) "
               "FROM workflow_entity WHERE name = :'workflow' RETURNING id")


def test_cleanup_removes_what_an_interruption_left_of_a_workflow_that_saves_nothing(resto, stack):
    """W0 saves no execution (its data holds the verify token); one a restart interrupted is kept by n8n,
    and goes at the next cleanup however young, and so does one that ended over 10 minutes ago (a
    restart between its end and n8n's delete of it). One still running stays, one that succeeded a
    minute ago is n8n's to delete, and W2's own stay their age."""
    cases = (("W0_META_VERIFY_UNIFIED", "crashed", 1), ("W0_META_VERIFY_UNIFIED", "running", 1),
             ("W0_META_VERIFY_UNIFIED", "success", 1), ("W0_META_VERIFY_UNIFIED", "success", 11),
             ("W2_INBOUND_PROCESS", "crashed", 1), ("W2_INBOUND_PROCESS", "success", 11))
    rows = {(workflow, status, ended): int(sql(stack, INTERRUPTED, workflow=workflow, status=status,
                                               ended=str(ended)).splitlines()[0])
            for workflow, status, ended in cases}
    try:
        resto.json("cleanup")
        kept = {key: row_exists(stack, "execution_entity", row) for key, row in rows.items()}
        assert kept == {**dict.fromkeys(cases, True), ("W0_META_VERIFY_UNIFIED", "crashed", 1): False,
                        ("W0_META_VERIFY_UNIFIED", "success", 11): False}
    finally:
        sql(stack, "DELETE FROM execution_entity WHERE id = ANY(string_to_array(:'ids', ',')::bigint[])",
            ids=",".join(map(str, rows.values())))


def test_the_hosts_scheduled_cleanup_deletes_the_same_rows_and_is_audited(resto, stack, aged_rows):
    rows, baseline = aged_rows
    counted = resto.json("cleanup", "--dry-run")["rows"]
    cron = host_file(stack, "/etc/cron.d/restobot-cleanup")
    assert f"root {LAYOUT.base_dir}/bin/cleanup" in cron, cron
    ran = stack.ssh(f"{LAYOUT.base_dir}/bin/cleanup", check=False)
    assert ran.returncode == 0, ran.stderr
    for table, (old, young) in rows.items():
        assert (row_exists(stack, table, old), row_exists(stack, table, young)) == (False, True), table
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert last["action"] == "cleanup (scheduled)" and last["by"].startswith("cron@"), last
    assert last["result"] == "ok deleted " + " ".join(f"{t}={counted[t]}" for t in TABLES)
    assert resto.json("lock", "status")["held"] is False


def test_the_scheduled_cleanup_under_a_held_lock_deletes_nothing_and_says_so(resto, stack, aged_rows, held_lock):
    rows, _ = aged_rows
    ran = stack.ssh(f"{LAYOUT.base_dir}/bin/cleanup", check=False)
    assert ran.returncode == 75 and "skipped, the deploy lock is held" in ran.stderr, ran
    assert all(row_exists(stack, table, old) for table, (old, _) in rows.items())
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    assert (last["action"], last["result"]) == ("cleanup (scheduled)", "skipped: the deploy lock is held")
    assert host_file(stack, f"{LAYOUT.lock_dir}/info").strip() == held_lock


# --- backups: backup now (lock, audit), backup list, backup verify -----------------------------------------------

SCHEDULED = f"{LAYOUT.backups_dir}/scheduled"
NOT_ON_THE_HOST = f"{SCHEDULED}/resto-20000101T000000Z.dump"


@pytest.fixture(scope="module")
def backup_taken(resto, stack) -> dict:
    """``backup now`` once: what it printed, with ``backup list`` before and right after it, the audit's
    last entry and the file as the host sees it (a later backup of the same day prunes it)."""
    before = resto.json("backup", "list")
    proc = resto("backup", "now", "--json", timeout=900)
    assert proc.returncode == 0, f"backup now exited {proc.returncode}\n{proc.stderr}{proc.stdout}"
    taken = json.loads(proc.stdout)
    return {"before": before, "taken": taken, "after": resto.json("backup", "list"),
            "audit": resto.json("audit", "--tail", "1")["entries"][-1],
            "stat": stack.ssh("stat", "-c", "%a %s", taken["dump"]).stdout.split()}


def scheduled_dumps(listing: dict) -> list[dict]:
    return [dump for dump in listing["backups"] if dump["kind"] == "scheduled"]


def test_backup_now_writes_a_new_dump_that_backup_list_shows_first(backup_taken):
    dump = backup_taken["taken"]["dump"]
    assert dump.startswith(f"{SCHEDULED}/resto-") and dump.endswith(".dump")
    assert dump not in [d["path"] for d in backup_taken["before"]["backups"]]
    assert scheduled_dumps(backup_taken["after"])[0]["path"] == dump


def test_backup_list_shows_the_new_dump_0600_with_its_size_and_row_counts(backup_taken):
    taken = backup_taken["taken"]
    listed = scheduled_dumps(backup_taken["after"])[0]
    assert (listed["mode"], listed["mode_ok"], listed["complete"]) == ("0600", True, True)
    assert (listed["size"], listed["rows"]) == (taken["size"], taken["rows"])
    assert backup_taken["stat"] == ["600", str(taken["size"])]


def test_backup_now_records_the_row_counts_of_the_database(backup_taken, stack):
    assert backup_taken["taken"]["rows"]["schema_migrations"] == int(sql(stack, "SELECT count(*) FROM schema_migrations"))
    assert backup_taken["taken"]["rows"]["api_clients"] >= 1  # the deploy's admin client


def test_backup_now_is_audited_and_leaves_the_lock_free(backup_taken, resto):
    audit, taken = backup_taken["audit"], backup_taken["taken"]
    assert (audit["action"], audit["by"]) == ("backup now", str(Actor.current()))
    assert audit["result"] == f"ok dump={taken['dump']} size={taken['size']}"
    assert resto.json("lock", "status")["held"] is False


def test_backup_verify_restores_the_named_dump_with_every_count_matching(resto, stack, backup_taken):
    taken = backup_taken["taken"]
    report = resto.json("backup", "verify", taken["dump"])
    assert (report["ok"], report["dump"]) == (True, taken["dump"]), report
    assert report["tables"] == {table: [count, count] for table, count in taken["rows"].items()}
    assert sql(stack, "SELECT count(*) FROM pg_database WHERE datname = 'restore_check'") == "0"


def test_backup_verify_without_a_file_restores_the_newest(resto, backup_taken):
    report = resto.json("backup", "verify")
    assert (report["ok"], report["dump"]) == (True, scheduled_dumps(resto.json("backup", "list"))[0]["path"]), report


@pytest.mark.parametrize("named", [NOT_ON_THE_HOST, "/etc/passwd", "resto-20000101T000000Z.dump"])
def test_backup_verify_of_a_file_not_among_the_dumps_exits_2_and_changes_nothing(resto, stack, backup_taken, named):
    before = host_snapshot(stack)
    listed = [(d["path"], d["size"], d["mode"]) for d in resto.json("backup", "list")["backups"]]
    proc = resto("backup", "verify", named)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert f"FILE: {named} is not one of the host's dumps; nothing was run. " \
           "List them with: resto local backup list" in proc.stderr
    assert host_snapshot(stack) == before
    assert [(d["path"], d["size"], d["mode"]) for d in resto.json("backup", "list")["backups"]] == listed


# --- quarantine ------------------------------------------------------------------------------------------------


@pytest.fixture
def quarantined_sender(stack):
    """A WhatsApp sender of this test; its quarantine entry, messages, replies and events go afterwards."""
    sender = "3369" + str(secrets.randbelow(10**8)).zfill(8)
    yield sender
    sql(stack, "DELETE FROM quarantine WHERE sender = :'sender'; "
               "DELETE FROM outbound_messages WHERE recipient = :'sender'; "
               "DELETE FROM inbound_messages WHERE sender = :'sender'; "
               "DELETE FROM security_events WHERE detail ->> 'sender' = :'sender'", sender=sender)


def send_signed_whatsapp(stack, sender: str) -> str:
    """One WhatsApp message from ``sender``, signed with the stack's app secret; its wamid (answered 200)."""
    from harness.deploys import public_request
    from restobot.settings import read_env_file, secrets_file

    payload = meta_payloads.whatsapp_text(f"{MARK} quarantine", sender=sender)
    body = meta_payloads.encode(payload)
    secret = read_env_file(secrets_file("local"))["META_APP_SECRET"]
    response, answer = public_request(stack, "POST", "/v1/inbound/whatsapp", body=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secret)})
    assert (response.status, answer) == (200, b"EVENT_RECEIVED")
    return payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


def test_a_quarantined_senders_next_message_is_dropped_and_recorded_until_removed(resto, stack, quarantined_sender):
    from harness.poll import poll

    sender = quarantined_sender
    before = host_snapshot(stack)
    refused = resto("quarantine", "add", "whatsapp", "+" + sender, "--for", "1h")
    assert refused.returncode == 2 and "is not a whatsapp sender id" in refused.stderr
    assert host_snapshot(stack) == before

    added = resto.json("quarantine", "add", "whatsapp", sender)
    assert (added["sender"], added["reason"], added["added"], added["expires_at"]) == (sender, None, True, None)
    replaced = resto.json("quarantine", "add", "whatsapp", sender, "--for", "1h", "--reason", MARK)
    assert (replaced["reason"], replaced["added"]) == (MARK, False) and replaced["expires_at"]
    dropped = send_signed_whatsapp(stack, sender)
    # W1 records the event in the statement that would have stored the message, before answering.
    assert sql(stack, "SELECT detail ->> 'sender' FROM security_events WHERE event_type = 'QUARANTINED' "
                      "AND detail ->> 'msg_id' = :'id'", id=dropped) == sender
    assert sql(stack, "SELECT count(*) FROM inbound_messages WHERE sender = :'sender'", sender=sender) == "0"
    [entry] = [e for e in resto.json("quarantine", "list")["entries"] if e["sender"] == sender]
    assert (entry["channel"], entry["expired"], entry["dropped"], entry["reason"]) == ("whatsapp", False, 1, MARK)

    assert resto("quarantine", "remove", "whatsapp", sender).returncode == 0
    kept = send_signed_whatsapp(stack, sender)
    poll(lambda: sql(stack, "SELECT count(*) FROM inbound_messages WHERE msg_id = :'id'", id=kept),
         until=lambda count: count == "1", timeout=30, interval=1, what="the message sent after the removal stored")
    again = resto("quarantine", "remove", "whatsapp", sender)
    assert (again.returncode, "was not quarantined; nothing changed" in again.stdout) == (0, True)
    actions = [(e["action"], e["result"].split(" expires_at=")[0])
               for e in resto.json("audit", "--tail", "4")["entries"]]
    assert actions == [(f"quarantine add whatsapp {sender}", "ok added"),
                       (f"quarantine add whatsapp {sender}", "ok replaced"),
                       (f"quarantine remove whatsapp {sender}", "ok removed"),
                       (f"quarantine remove whatsapp {sender}", "ok not quarantined")]
    assert resto.json("lock", "status")["held"] is False


# --- restore: a backup back into the live database (after the backup tests: its backup prunes theirs) ----------

INBOUND_ROW = ("INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload, status, status_reason, "
               "processed_at) VALUES ('whatsapp', :'msg', :'mark' || '-restore', '33600000096', '{}'::jsonb, 'DROPPED', "
               "'e2e', now()) RETURNING id")


def inbound_ids(stack, *msg_ids: str) -> dict[str, int]:
    out = sql(stack, "SELECT msg_id, id FROM inbound_messages WHERE msg_id = ANY(string_to_array(:'ids', ','))",
              ids=",".join(msg_ids))
    return {msg_id: int(row_id) for msg_id, row_id in (line.split("|") for line in out.splitlines())}


def safety_dump_rows(stack, path: str) -> str:
    """The inbound_messages rows a safety dump holds, as pg_restore prints them (COPY text)."""
    argv = ["docker", "exec", "-i", container_name("postgres"), "pg_restore", "--data-only",
            "--table=inbound_messages", "--file=-"]
    return stack.ssh("sh", "-c", f'{shlex.join(argv)} < "$0"', path).stdout


@pytest.fixture(scope="module")
def restored(resto, stack):
    """A backup taken with a row of this module in it, then a second row written after it; then
    ``restore latest --yes --json``. Yields what it printed, the two rows' msg_ids and the host's files."""
    kept, lost = f"{MARK}-before-backup", f"{MARK}-after-backup"
    sql(stack, INBOUND_ROW, msg=kept, mark=MARK)
    safety = None
    try:
        backup = resto.json("backup", "now")
        sql(stack, INBOUND_ROW, msg=lost, mark=MARK)
        proc = resto("restore", "latest", "--yes", "--json", timeout=900)
        assert proc.returncode == 0, f"restore exited {proc.returncode}\n{proc.stderr}{proc.stdout}"
        data = json.loads(proc.stdout)
        safety = data["safety_dump"]
        yield {"backup": backup, "data": data, "kept": kept, "lost": lost, "stderr": proc.stderr,
               "stat": stack.ssh("stat", "-c", "%a", safety).stdout.strip()}
    finally:
        sql(stack, "DELETE FROM inbound_messages WHERE conversation_key = :'mark' || '-restore'", mark=MARK)
        if safety:  # the modules after this one count the host's safety dumps (tests/e2e/test_deploy.py)
            stack.ssh("rm", "-f", safety)


def test_restore_latest_brings_back_the_backup_and_loses_the_rows_written_since(resto, stack, restored):
    data = restored["data"]
    assert data["restored"] == restored["backup"]["dump"]
    assert list(inbound_ids(stack, restored["kept"], restored["lost"])) == [restored["kept"]]
    assert data["rows_after"]["inbound_messages"] == data["rows_before"]["inbound_messages"] - 1
    assert f"inbound_messages: {data['rows_before']['inbound_messages']} rows now" in restored["stderr"]


def test_restore_keeps_the_replaced_database_in_a_0600_safety_dump(stack, restored):
    safety = restored["data"]["safety_dump"]
    assert safety.startswith(f"{LAYOUT.backups_dir}/before-restore-") and safety.endswith("Z.dump")
    assert restored["stat"] == "600"
    rows = safety_dump_rows(stack, safety)
    assert restored["lost"] in rows and restored["kept"] in rows


def test_restore_leaves_the_stack_healthy_passing_its_smoke_audited_and_the_lock_free(resto, restored):
    assert [c["name"] for c in restored["data"]["smoke"] if not c["passed"]] == []
    assert resto("ps", "--check").returncode == 0
    assert resto.json("smoke")["failed"] == []
    last = resto.json("audit", "--tail", "1")["entries"][-1]
    dump, safety = restored["data"]["restored"], restored["data"]["safety_dump"]
    assert (last["action"], last["result"]) == (f"restore {dump}", f"ok restored={dump} safety={safety}")
    assert resto.json("lock", "status")["held"] is False


@pytest.mark.parametrize("named", [NOT_ON_THE_HOST, f"{LAYOUT.backups_dir}/../backups/x.dump"])
def test_restore_of_a_file_not_among_the_dumps_exits_2_and_changes_nothing(resto, stack, named):
    before = host_snapshot(stack)
    listed = [(d["path"], d["size"], d["mode"]) for d in resto.json("backup", "list")["backups"]]
    proc = resto("restore", named, "--yes")
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert f"FILE: {named} is not one of the host's dumps; nothing changed. " \
           "List them with: resto local backup list" in proc.stderr
    assert host_snapshot(stack) == before  # no lock taken, no audit line, n8n not stopped
    assert [(d["path"], d["size"], d["mode"]) for d in resto.json("backup", "list")["backups"]] == listed


# --- bad input and a changed host key: nothing changes -------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["restart", "nginxx"], ["stop"], ["logs", "--tail", "-1"], ["executions", "--limit", "100000"],
    ["dlq", "list", "--channel", "sms"], ["security", "--since", "forever"], ["lock", "steal"],
    ["backup", "now", "extra"], ["backup", "verify", "a.dump", "b.dump"],
], ids=lambda argv: " ".join(argv))
def test_bad_input_exits_2_and_changes_nothing(resto, stack, argv):
    before = host_snapshot(stack)
    proc = resto(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert host_snapshot(stack) == before


def test_an_unknown_stage_exits_2_and_changes_nothing(stack):
    before = host_snapshot(stack)
    proc = subprocess.run([sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), "prod",
                           "restart", "nginx"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2
    assert "STAGE: unknown stage 'prod'" in proc.stderr
    assert host_snapshot(stack) == before


def test_a_host_key_other_than_the_pinned_one_stops_before_login(stack, tmp_path):
    from harness.deploys import write_inventory

    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIEwTIAkrLil+gGv3t3cKkjfxOaU4E/sUqu935MZGZmc"
    settings = {**stack.settings, "ssh": {**stack.settings["ssh"], "host_key": other_key}}
    inventory = write_inventory(tmp_path / "wrong_key.py", settings, group="local", name="e2e-vps")
    before = host_snapshot(stack)
    proc = Resto(inventory)("restart", "nginx")
    assert proc.returncode == 3, proc.stderr
    assert "presented a host key that is not the one pinned for it" in proc.stderr
    assert host_snapshot(stack) == before
