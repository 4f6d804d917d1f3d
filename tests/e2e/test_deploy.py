"""The product's main job, end to end on a fresh VPS container over real SSH:
deploy, redeploy (nothing changes), upgrade, roll back, refuse what must be
refused, survive a failed migration, a concurrent deploy and a killed one.

Releases v1..v4 are real git checkouts made here from the repository's files,
each tagged, so release names come from git as in production:

+ v1: the repository's files as they are;
+ v2: a backward-compatible migration (a nullable column) and a changed workflow
  (W0 answers with ``X-Release: v2``);
+ v3: v2 plus a migration that fails half-way;
+ v4: v2 plus an incompatible migration (it renames v2's column);
+ v5: v4 whose smoke checks always fail.

Each step of an operator's day is a module-scoped fixture (the stack is
expensive: each step runs once per module), built on the stage it needs:

    deployed_stack                  conftest: a fresh VPS, deploy.py run once (release e2e-base)
    └─ deployed_v1                  v1 deployed and serving
       ├─ redeployed_v1             v1 deployed again: nothing changes
       ├─ upgraded_v2               v2 deployed over v1
       │  ├─ stopped_database_refused   v4 deployed over v2 with postgres stopped: refused; v2 serves
       │  ├─ upgraded_v4            v4 deployed over v2
       │  │  └─ incompatible_rollback_refused    rollback to v2 refused (v4's migration); v4 serves
       │  │     └─ unlistable_dump_refused       the same with restore_backup, the dump garbage: refused
       │  │        └─ failed_restore_put_back    a dump whose restore fails: the safety dump
       │  │           │                          is put back, n8n started again; v4 serves
       │  │           └─ restored_to_v2          rollback to v2 with restore_backup: v2 serves
       │  ├─ revert_refused         v5 deployed over v2: migrated, fails its smoke checks, v2 not brought
       │  │                         back onto that schema (v5's containers stay); then the named way
       │  │                         out, rollback to v2 with restore_backup: v2 serves
       │  ├─ rolled_back            rollback to v1 done (from v2)
       │  ├─ failed_migration       v3 deployed over v2: refused half-way; v2 serves
       │  └─ concurrent_deploys     two deploys of v1 at once over v2: the second refused; v1 serves
       └─ killed_deploy            a deploy of v2 over v1 killed mid-way: its lock stays
          └─ deploy_after_kill     the next deploy refused by that lock
             └─ unlocked_after_kill             unlock.py releases it
                └─ converged_after_kill         the next deploy converges: v2 serves
                   └─ temporary_name_repaired   nginx left under compose's temporary name: the next
                                                deploy gives it back its name
    unknown_rollback_refused        (any deployed stack) rollback to a release not on the host: refused
    bad_inventory_run               (no stack) an invalid setting refused before any connection

A stage that needs a release serving makes sure of it first (:func:`serving`
deploys it only when another one is current), so any test runs alone
(``pytest tests/e2e/test_deploy.py -k rollback``). Later stages change the live
stack, so a stage records its pyinfra run and what it saw right after it
(:class:`Stage`), and each test asserts one claim on that record. The file's
order is the cheapest order of the stages (rolled_back finds v2 serving after
restored_to_v2; concurrent_deploys finds v2 after failed_migration; killed_deploy
finds v1 after concurrent_deploys) and the stack ends serving v2.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.deploys import (
    PyinfraRun,
    changed_operations,
    git,
    local_settings,
    make_checkout,
    verify_handshake as verify,
    public_request,
    run_pyinfra,
    sql,
    write_inventory,
)
from harness.poll import poll
from restobot import meta_payloads as meta
from restobot.settings import REPO_ROOT, read_env_file, secrets_file

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
N8N_CONTAINERS = ("resto-n8n-main-1", "resto-n8n-worker-1")
LOCK = "/opt/resto/deploy.lock"
# A process on the VPS bringing v2 up: its compose up, its workflow import or its smoke checks.
BRINGING_UP_V2 = r"releases/v2-[^ /]*/(compose\.yml up|restobot/[^ ]*workflows\.py import|bin/smoke)"


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkouts")
    note = {"0090_e2e_note.sql": NOTE_MIGRATION}
    return {
        "v1": make_checkout(root, "v1", {}, None),
        "v2": make_checkout(root, "v2", note, "v2"),
        "v3": make_checkout(root, "v3", {**note, "0091_e2e_broken.sql": BROKEN_MIGRATION}, "v3"),
        "v4": make_checkout(root, "v4", {**note, "0092_e2e_rename.sql": INCOMPATIBLE_MIGRATION}, "v2"),
        "v5": with_failing_smoke(
            make_checkout(root, "v5", {**note, "0092_e2e_rename.sql": INCOMPATIBLE_MIGRATION}, "v5"), "v5"),
    }


def with_failing_smoke(checkout: Path, tag: str) -> Path:
    """The checkout's smoke script ends with a failing check: its release never passes them."""
    smoke = checkout / "templates" / "smoke.sh"
    smoke.write_text(smoke.read_text() + 'echo "FAIL e2e-forced this release fails its smoke checks on purpose"\n')
    git(checkout, "-c", "user.email=e2e@localhost", "-c", "user.name=e2e", "commit", "-qam", f"{tag}: failing smoke")
    git(checkout, "tag", "-f", tag)
    return checkout


# --- talking to the stack ------------------------------------------------------------------


def secret(name: str) -> str:
    return read_env_file(secrets_file("local"))[name]


def send_whatsapp(stack, text: str) -> int:
    body = meta.encode(meta.whatsapp_text(text))
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, secret("META_APP_SECRET"))}
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body, headers)
    return response.status


def stored(stack, text: str) -> str:
    """How many inbound_messages rows hold ``text``, once the one sent is there (bounded wait)."""
    return poll(lambda: sql(stack, f"SELECT count(*) FROM inbound_messages WHERE text = '{text}'"),
                until=lambda count: count != "0", timeout=60, what=f"the message {text!r} in inbound_messages")


def container_ids(stack) -> dict[str, str]:
    """Each compose service's container id."""
    lines = stack.ssh("docker", "ps", "--all", "--filter", "label=com.docker.compose.project=resto", "--format",
                      '{{.Label "com.docker.compose.service"}} {{.ID}}').stdout.splitlines()
    return dict(line.split() for line in lines if line.strip())


def current_release(stack) -> str:
    return stack.ssh("readlink", "/opt/resto/current").stdout.strip().rsplit("/", 1)[-1]


def started_at(stack, container: str) -> str:
    return stack.ssh("docker", "inspect", "--format", "{{.State.StartedAt}}", container).stdout.strip()


def stack_container_id(stack, name: str) -> str:
    return stack.ssh("docker", "inspect", "--format", "{{.Id}}", name, check=False).stdout.strip()


def audit_lines(stack) -> list[str]:
    return stack.ssh("cat", "/opt/resto/audit.log").stdout.splitlines()


def lock_held(stack) -> bool:
    return stack.ssh("test", "-d", LOCK, check=False).returncode == 0


def ledger(stack) -> str:
    return sql(stack, "SELECT filename FROM schema_migrations")


def attempt(probe: Callable[[], Any]) -> Any:
    """``probe()``, or the error it raised as text: a broken stack fails the test that looks, with the reason."""
    try:
        return probe()
    except Exception as error:  # noqa: BLE001 - recorded for the assertion that reads it
        return f"{type(error).__name__}: {error}"


# --- stages --------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    """One step on the stack: its pyinfra run and what was seen right after it (``seen``)."""

    run: PyinfraRun
    seen: dict[str, Any] = dataclasses.field(default_factory=dict)

    def require(self, step: str) -> Stage:
        """A stage built on this one needs it to have succeeded; else it fails, naming the step."""
        if self.run.returncode != 0:
            pytest.fail(f"this stage builds on {step}, which failed (exit {self.run.returncode})\n"
                        f"{self.run.output_tail(3000)}", pytrace=False)
        return self


def serving(stack, checkouts: dict[str, Path], name: str) -> None:
    """Make release ``name`` the current one (deployed only when another is): a stage's precondition."""
    if current_release(stack).startswith(f"{name}-"):
        return
    run = stack.deploy(source=checkouts[name])
    if run.returncode != 0:
        pytest.fail(f"precondition: deploying {name} (to build on it) failed\n{run.output_tail(3000)}",
                    pytrace=False)


def finished(process, output: str, started: float) -> PyinfraRun:
    """A background pyinfra run (``DeployedStack.start_deploy``) as a PyinfraRun, once it ended."""
    return PyinfraRun(list(process.args), process.returncode, output, "", time.monotonic() - started, None)


# --- an invalid setting is refused before any connection ----------------------------------------


@pytest.fixture(scope="module")
def bad_inventory_run(tmp_path_factory) -> tuple[PyinfraRun, int]:
    """deploy.py with an invalid domain, the SSH port a listener of ours: the run, and the connections it opened.

    The absence of a connection is proven with a sentinel: once the run ended, one connection
    of our own; the listener's queue is first come, first served, so every connection
    accepted before ours was the run's.
    """
    directory = tmp_path_factory.mktemp("bad-inventory")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        tree = local_settings(ssh={"port": port}, domains={"domain": "not a domain"})
        inventory = write_inventory(directory / "bad.py", tree, group="bad", name="bad-vps")
        run = run_pyinfra(inventory, REPO_ROOT / "deploy.py")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sentinel:
            ours, before = sentinel.getsockname(), 0
            while True:
                connection, peer = listener.accept()
                connection.close()
                if peer == ours:
                    break
                before += 1
    return run, before


def test_bad_inventory_is_refused(bad_inventory_run):
    run, _ = bad_inventory_run
    assert run.returncode != 0, run.output_tail()


def test_bad_inventory_names_the_wrong_setting(bad_inventory_run):
    run, _ = bad_inventory_run
    assert "domains.domain: must be a lower-case DNS name such as resto.example.com" in run.output, run.output_tail()


def test_bad_inventory_fails_before_any_connection(bad_inventory_run):
    _, connections = bad_inventory_run
    assert connections == 0, "pyinfra connected before refusing the settings"


# --- v1 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_v1(deployed_stack, checkouts) -> Stage:
    """v1 deployed over the first deploy (e2e-base); leaves v1 serving."""
    run = deployed_stack.deploy(source=checkouts["v1"])
    return Stage(run, {"current": current_release(deployed_stack),
                       "verify": attempt(lambda: verify(deployed_stack, "hello-v1"))})


def test_v1_deploy_succeeds(deployed_v1):
    assert deployed_v1.run.returncode == 0, deployed_v1.run.output_tail()


def test_v1_is_current_after_its_deploy(deployed_v1):
    assert deployed_v1.seen["current"].startswith("v1-")


def test_v1_serves_its_workflows(deployed_v1):
    assert deployed_v1.seen["verify"] == (200, "hello-v1", None)


def test_v1_deploy_passes_its_smoke_checks(deployed_v1):
    assert "smoke PASS verify-instagram" in deployed_v1.run.output, deployed_v1.run.output_tail()


@pytest.fixture(scope="module")
def redeployed_v1(deployed_stack, deployed_v1, checkouts) -> Stage:
    """v1 deployed again with v1 serving and nothing changed; leaves v1 serving."""
    deployed_v1.require("the v1 deploy")
    serving(deployed_stack, checkouts, "v1")
    return Stage(deployed_stack.deploy(source=checkouts["v1"]))


def test_redeploy_with_nothing_changed_succeeds(redeployed_v1):
    assert redeployed_v1.run.returncode == 0, redeployed_v1.run.output_tail()


def test_redeploy_with_nothing_changed_reports_no_error(redeployed_v1):
    assert redeployed_v1.run.results["totals"]["error"] == 0


def test_redeploy_with_nothing_changed_changes_nothing(redeployed_v1):
    assert changed_operations(redeployed_v1.run) == []


# --- v2: a migration and a workflow ------------------------------------------------------------


@pytest.fixture(scope="module")
def upgraded_v2(deployed_stack, deployed_v1, checkouts) -> Stage:
    """v2 deployed with v1 serving (a signed message sent through v1 first); leaves v2 serving."""
    deployed_v1.require("the v1 deploy")
    serving(deployed_stack, checkouts, "v1")
    message = send_whatsapp(deployed_stack, "before v2")
    containers_of_v1 = container_ids(deployed_stack)
    run = deployed_stack.deploy(source=checkouts["v2"])
    return Stage(run, {
        "message_through_v1": message,
        "containers_of_v1": containers_of_v1,
        "containers_of_v2": container_ids(deployed_stack),
        "current": current_release(deployed_stack),
        "note_column": sql(deployed_stack, "SELECT count(*) FROM information_schema.columns "
                                           "WHERE table_name = 'inbound_messages' AND column_name = 'e2e_note'"),
        "verify": attempt(lambda: verify(deployed_stack, "hello-v2")),
        "backups": deployed_stack.ssh("ls", "/opt/resto/backups").stdout.split(),
    })


def test_v1_accepts_a_signed_message(upgraded_v2):
    assert upgraded_v2.seen["message_through_v1"] == 200


def test_v2_deploy_succeeds(upgraded_v2):
    assert upgraded_v2.run.returncode == 0, upgraded_v2.run.output_tail()


def test_v2_is_current_after_its_deploy(upgraded_v2):
    assert upgraded_v2.seen["current"].startswith("v2-")


def test_v2_deploy_applies_its_migration(upgraded_v2):
    assert upgraded_v2.seen["note_column"] == "1"


def test_v2_deploy_recreates_no_container_whose_configuration_it_did_not_change(upgraded_v2):
    """v2 changes a migration and a workflow: n8n main is restarted to register the webhooks, nothing is
    recreated (the configs containers mount are copies named by content, not paths inside the release)."""
    before, after = upgraded_v2.seen["containers_of_v1"], upgraded_v2.seen["containers_of_v2"]
    long_running = {"traefik", "nginx", "n8n-main", "n8n-worker", "postgres", "redis", "prometheus", "alertmanager"}
    assert long_running <= set(before)
    assert {service for service in long_running if after.get(service) != before[service]} == set()


def test_v2_serves_its_changed_workflow(upgraded_v2):
    assert upgraded_v2.seen["verify"] == (200, "hello-v2", "v2")


def test_v2_deploy_keeps_a_backup_taken_before_it(upgraded_v2):
    backups = upgraded_v2.seen["backups"]
    assert any(re.fullmatch(r"before-v2-[0-9a-f]{8}\.dump", name) for name in backups), backups


# --- a database that exists but does not answer: the deploy refuses before any migration ----------


def postgres_healthy(stack) -> str:
    return stack.ssh("docker", "inspect", "--format", "{{.State.Health.Status}}", "resto-postgres-1").stdout.strip()


def backups(stack) -> list[str]:
    return sorted(stack.ssh("ls", "/opt/resto/backups").stdout.split())


@pytest.fixture(scope="module")
def stopped_database_refused(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """v4 (a pending migration) deployed with v2 serving and its postgres container stopped: refused.
    Leaves v2 serving (postgres started again and healthy)."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    before = backups(deployed_stack)
    deployed_stack.ssh("docker", "stop", "resto-postgres-1")
    try:
        run = deployed_stack.deploy(source=checkouts["v4"])
    finally:
        deployed_stack.ssh("docker", "start", "resto-postgres-1")
        poll(lambda: postgres_healthy(deployed_stack), until=lambda health: health == "healthy", timeout=120,
             what="resto-postgres-1 healthy again")
    return Stage(run, {
        "current": current_release(deployed_stack),
        "ledger": ledger(deployed_stack),
        "backups": (before, backups(deployed_stack)),
        "lock_held": lock_held(deployed_stack),
    })


def test_deploy_over_a_stopped_database_is_refused(stopped_database_refused):
    assert stopped_database_refused.run.returncode != 0, stopped_database_refused.run.output_tail()


def test_deploy_over_a_stopped_database_says_what_it_saw(stopped_database_refused):
    run = stopped_database_refused.run
    assert "the database exists but could not be read" in run.output, run.output_tail()
    assert "not running as resto-postgres-1: resto-postgres-1 exited" in run.output, run.output_tail()


def test_deploy_over_a_stopped_database_applies_no_migration(stopped_database_refused):
    assert "0092_e2e_rename.sql" not in stopped_database_refused.seen["ledger"]


def test_deploy_over_a_stopped_database_writes_no_backup(stopped_database_refused):
    before, after = stopped_database_refused.seen["backups"]
    assert after == before


def test_deploy_over_a_stopped_database_keeps_v2_current(stopped_database_refused):
    assert stopped_database_refused.seen["current"].startswith("v2-")


def test_deploy_over_a_stopped_database_leaves_no_lock(stopped_database_refused):
    assert stopped_database_refused.seen["lock_held"] is False


# --- v4: an incompatible migration; rolling back over it ------------------------------------------


@pytest.fixture(scope="module")
def upgraded_v4(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """v4 deployed with v2 serving, after a message stored through v2; leaves v4 serving."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    message = send_whatsapp(deployed_stack, "before v4")
    rows = stored(deployed_stack, "before v4")
    run = deployed_stack.deploy(source=checkouts["v4"])
    return Stage(run, {"message_through_v2": message, "rows_before_v4": rows,
                       "current": current_release(deployed_stack)})


def test_v2_accepts_a_signed_message(upgraded_v4):
    assert upgraded_v4.seen["message_through_v2"] == 200


def test_v4_deploy_succeeds(upgraded_v4):
    assert upgraded_v4.run.returncode == 0, upgraded_v4.run.output_tail()


def test_v4_is_current_after_its_deploy(upgraded_v4):
    assert upgraded_v4.seen["current"].startswith("v4-")


@pytest.fixture(scope="module")
def incompatible_rollback_refused(deployed_stack, upgraded_v4) -> Stage:
    """Rollback to v2 with v4 serving, without restore_backup: refused; leaves v4 serving."""
    upgraded_v4.require("the v4 deploy")
    run = deployed_stack.rollback("v2")
    return Stage(run, {"current": current_release(deployed_stack)})


def test_rollback_over_an_incompatible_migration_is_refused(incompatible_rollback_refused):
    assert incompatible_rollback_refused.run.returncode != 0, incompatible_rollback_refused.run.output_tail()


def test_rollback_over_an_incompatible_migration_names_it(incompatible_rollback_refused):
    run = incompatible_rollback_refused.run
    assert "not marked backward-compatible: 0092_e2e_rename.sql" in run.output, run.output_tail()


def test_rollback_over_an_incompatible_migration_offers_the_backup(incompatible_rollback_refused):
    run = incompatible_rollback_refused.run
    assert "restore_backup=true" in run.output, run.output_tail()


def test_refused_rollback_over_an_incompatible_migration_keeps_v4_current(incompatible_rollback_refused):
    assert incompatible_rollback_refused.seen["current"].startswith("v4-")


def chosen_dump(stack) -> str:
    """The dump a rollback to v2 with restore_backup picks: the one taken before v4 migrated."""
    return stack.ssh("sh", "-c", "ls /opt/resto/backups/before-v4-*.dump").stdout.strip()


def safety_dumps(stack) -> list[str]:
    """``mode path`` of each safety dump, newest first."""
    listing = stack.ssh("sh", "-c", "ls -1t /opt/resto/backups/before-restore-*Z.dump 2>/dev/null; exit 0").stdout
    return [stack.ssh("stat", "-c", "%a %n", path).stdout.strip() for path in listing.split()]


@pytest.fixture(scope="module")
def unlistable_dump_refused(deployed_stack, upgraded_v4, incompatible_rollback_refused) -> Stage:
    """Rollback to v2 with restore_backup, the chosen dump replaced by garbage: refused before anything
    is dropped. The dump is put back after; leaves v4 serving."""
    upgraded_v4.require("the v4 deploy")
    dump = chosen_dump(deployed_stack)
    deployed_stack.ssh("cp", "-p", dump, f"{dump}.kept")
    deployed_stack.ssh("sh", "-c", 'echo "not a dump" > "$0"', dump)
    try:
        run = deployed_stack.rollback("v2", "--data", "restore_backup=true")
    finally:
        deployed_stack.ssh("mv", "-f", f"{dump}.kept", dump)
    return Stage(run, {"dump": dump, "current": current_release(deployed_stack), "ledger": ledger(deployed_stack),
                       "safety_dumps": safety_dumps(deployed_stack)})


def test_restore_of_a_dump_pg_restore_cannot_list_is_refused(unlistable_dump_refused):
    run = unlistable_dump_refused.run
    assert run.returncode != 0, run.output_tail()
    assert f"{unlistable_dump_refused.seen['dump']} cannot be restored (nothing was changed)" in run.output, (
        run.output_tail())


def test_restore_of_a_dump_pg_restore_cannot_list_drops_nothing(unlistable_dump_refused):
    assert "0092_e2e_rename.sql" in unlistable_dump_refused.seen["ledger"]
    assert unlistable_dump_refused.seen["current"].startswith("v4-")


def test_restore_of_a_dump_pg_restore_cannot_list_takes_no_safety_dump(unlistable_dump_refused):
    assert unlistable_dump_refused.seen["safety_dumps"] == []


# A dump pg_restore lists but cannot restore: a table granted to a role dropped since (a cut dump
# would not do: a dump written to a pipe has no offsets, so --list reads it to its end).
DUMP_WITH_A_GRANT_TO_A_DROPPED_ROLE = """set -e
q() { docker exec resto-postgres-1 psql -X -q -v ON_ERROR_STOP=1 -U n8n -d "$1" -c "$2"; }
q n8n 'CREATE DATABASE e2e_scratch'
q n8n 'CREATE ROLE e2e_ghost'
q e2e_scratch 'CREATE TABLE e2e_granted (x int); GRANT SELECT ON e2e_granted TO e2e_ghost'
docker exec resto-postgres-1 pg_dump -Fc -U n8n -d e2e_scratch > "$0"
q n8n 'DROP DATABASE e2e_scratch'
q n8n 'DROP ROLE e2e_ghost'
"""


@pytest.fixture(scope="module")
def failed_restore_put_back(deployed_stack, upgraded_v4, unlistable_dump_refused) -> Stage:
    """Rollback to v2 with restore_backup, the chosen dump one that lists but whose restore fails after
    the drop (a grant to a dropped role): the safety dump is put back and n8n started again. The dump
    is put back after; leaves v4 serving, with a message sent through v4."""
    upgraded_v4.require("the v4 deploy")
    message = send_whatsapp(deployed_stack, "during v4")
    stored(deployed_stack, "during v4")
    dump = chosen_dump(deployed_stack)
    deployed_stack.ssh("cp", "-p", dump, f"{dump}.kept")
    deployed_stack.ssh("sh", "-c", DUMP_WITH_A_GRANT_TO_A_DROPPED_ROLE, dump)
    lists = deployed_stack.ssh("sh", "-c", 'docker exec -i resto-postgres-1 pg_restore --list < "$0"', dump,
                               check=False)
    try:
        if lists.returncode != 0:
            pytest.fail(f"precondition: the failing dump lists ({lists.stderr.strip()})", pytrace=False)
        run = deployed_stack.rollback("v2", "--data", "restore_backup=true")
    finally:
        deployed_stack.ssh("mv", "-f", f"{dump}.kept", dump)
    return Stage(run, {
        "message_through_v4": message,
        "current": current_release(deployed_stack),
        "ledger": ledger(deployed_stack),
        "rows_during_v4": sql(deployed_stack, "SELECT count(*) FROM inbound_messages WHERE text = 'during v4'"),
        "n8n": [deployed_stack.ssh("docker", "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                for name in N8N_CONTAINERS],
        "verify": attempt(lambda: poll(lambda: verify(deployed_stack, "put-back"), until=lambda seen: seen[0] == 200,
                                       timeout=300, what="v4 answering after the failed restore",
                                       tolerate=(OSError,))),
        "safety_dumps": safety_dumps(deployed_stack),
    })


def test_v4_accepts_a_signed_message(failed_restore_put_back):
    assert failed_restore_put_back.seen["message_through_v4"] == 200


def test_failed_restore_fails_the_rollback(failed_restore_put_back):
    assert failed_restore_put_back.run.returncode != 0, failed_restore_put_back.run.output_tail()


def test_failed_restore_names_the_safety_dump_it_put_back(failed_restore_put_back):
    run = failed_restore_put_back.run
    assert re.search(r"the database was put back from the safety dump /opt/resto/backups/before-restore-\d{8}T\d{6}Z"
                     r"\.dump and n8n started again", run.output), run.output_tail()


def test_failed_restore_keeps_the_schema_it_replaced(failed_restore_put_back):
    assert "0092_e2e_rename.sql" in failed_restore_put_back.seen["ledger"]


def test_failed_restore_keeps_the_rows_written_since_the_dump(failed_restore_put_back):
    assert failed_restore_put_back.seen["rows_during_v4"] == "1"


def test_failed_restore_starts_n8n_again(failed_restore_put_back):
    assert failed_restore_put_back.seen["n8n"] == ["running", "running"]


def test_failed_restore_leaves_v4_serving(failed_restore_put_back):
    assert failed_restore_put_back.seen["current"].startswith("v4-")
    assert failed_restore_put_back.seen["verify"] == (200, "put-back", "v2")


def test_failed_restore_leaves_its_safety_dump_private(failed_restore_put_back):
    assert [line.split()[0] for line in failed_restore_put_back.seen["safety_dumps"]] == ["600"]


@pytest.fixture(scope="module")
def restored_to_v2(deployed_stack, upgraded_v4, incompatible_rollback_refused, failed_restore_put_back) -> Stage:
    """Then rollback to v2 with restore_backup=true (the backup taken before v4); leaves v2 serving."""
    upgraded_v4.require("the v4 deploy")
    if not incompatible_rollback_refused.seen["current"].startswith("v4-"):
        pytest.fail("precondition: v4 serving after the refused rollback", pytrace=False)
    # Older safety dumps beyond the 3 kept (the failed restore left one more).
    for day in ("01", "02", "03"):
        deployed_stack.ssh("sh", "-c", 'touch -d "2020-01-$1" "$0"',
                           f"/opt/resto/backups/before-restore-202001{day}T000000Z.dump", day)
    run = deployed_stack.rollback("v2", "--data", "restore_backup=true")
    return Stage(run, {
        "safety_dumps": safety_dumps(deployed_stack),
        "current": current_release(deployed_stack),
        "ledger": ledger(deployed_stack),
        "rows_before_v4": sql(deployed_stack, "SELECT count(*) FROM inbound_messages WHERE text = 'before v4'"),
        "verify": attempt(lambda: verify(deployed_stack, "restored")),
    })


def test_rollback_with_restore_backup_succeeds(restored_to_v2):
    assert restored_to_v2.run.returncode == 0, restored_to_v2.run.output_tail()


def test_rollback_with_restore_backup_makes_v2_current(restored_to_v2):
    assert restored_to_v2.seen["current"].startswith("v2-")


def test_rollback_with_restore_backup_takes_the_incompatible_migration_out_of_the_ledger(restored_to_v2):
    assert "0092_e2e_rename.sql" not in restored_to_v2.seen["ledger"]


def test_rollback_with_restore_backup_keeps_the_older_migration_in_the_ledger(restored_to_v2):
    assert "0090_e2e_note.sql" in restored_to_v2.seen["ledger"]


def test_rollback_with_restore_backup_keeps_the_rows_written_before_it(upgraded_v4, restored_to_v2):
    assert (upgraded_v4.seen["rows_before_v4"], restored_to_v2.seen["rows_before_v4"]) == ("1", "1")


def test_rollback_with_restore_backup_serves_v2(restored_to_v2):
    assert restored_to_v2.seen["verify"] == (200, "restored", "v2")


def test_rollback_with_restore_backup_says_the_dumps_age_and_the_rows_at_stake(restored_to_v2):
    run = restored_to_v2.run
    assert re.search(r"restoring /opt/resto/backups/before-v4-[0-9a-f]{8}\.dump: made \d{4}-\d\d-\d\d [0-9:]+ UTC, "
                     r"[0-9a-z ]+ ago\. The database holds now: inbound_messages \d+, outbound_messages \d+",
                     run.output), run.output_tail()


def test_rollback_with_restore_backup_keeps_the_replaced_database_in_a_private_safety_dump(restored_to_v2):
    newest = restored_to_v2.seen["safety_dumps"][0]
    assert re.fullmatch(r"600 /opt/resto/backups/before-restore-\d{8}T\d{6}Z\.dump", newest), newest
    assert f"The database as it was is in {newest.split()[1]}" in restored_to_v2.run.output


def test_rollback_with_restore_backup_keeps_the_newest_3_safety_dumps(restored_to_v2):
    # Before it: the failed restore's and three from 2020; it adds one and removes the two oldest.
    kept = [line.split()[1] for line in restored_to_v2.seen["safety_dumps"]]
    assert len(kept) == 3 and kept[2] == "/opt/resto/backups/before-restore-20200103T000000Z.dump", kept


# --- a failed activation over an incompatible migration: no revert onto a schema it cannot run ----


@pytest.fixture(scope="module")
def revert_refused(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """v5 deployed with v2 serving: its incompatible migration applies, its smoke checks fail, and v2
    is not brought back onto that schema. Then the way out the error names (rollback to v2 with
    restore_backup) is taken; leaves v2 serving."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    run = deployed_stack.deploy(source=checkouts["v5"])
    seen = {"current": current_release(deployed_stack), "ledger": ledger(deployed_stack),
            "verify": attempt(lambda: verify(deployed_stack, "left-up"))}
    way_out = deployed_stack.rollback("v2", "--data", "restore_backup=true")
    return Stage(run, {**seen, "way_out": way_out, "current_after_way_out": current_release(deployed_stack),
                       "ledger_after_way_out": ledger(deployed_stack),
                       "verify_after_way_out": attempt(lambda: verify(deployed_stack, "way-out"))})


def test_failed_smoke_over_an_incompatible_migration_fails_the_deploy(revert_refused):
    run = revert_refused.run
    assert run.returncode != 0 and "FAIL e2e-forced" in run.output, run.output_tail()


def test_failed_smoke_over_an_incompatible_migration_keeps_v2_down_naming_the_migration(revert_refused):
    run = revert_refused.run
    assert re.search(r"not going back to v2-[0-9a-f]{8}: the database holds migrations it does not know, not marked "
                     r"backward-compatible: 0092_e2e_rename\.sql", run.output), run.output_tail()
    assert "going back to the previous release" not in run.output, run.output_tail()


def test_failed_smoke_over_an_incompatible_migration_names_the_backup_to_restore(revert_refused):
    run = revert_refused.run
    assert re.search(r"/opt/resto/backups/before-v5-[0-9a-f]{8}\.dump; rows written since are lost\): pyinfra "
                     r"INVENTORY rollback\.py --data release=v2-[0-9a-f]{8} --data restore_backup=true",
                     run.output), run.output_tail()


def test_failed_smoke_over_an_incompatible_migration_leaves_v5_up_not_a_mixed_stack(revert_refused):
    # v5's workflows still answer (X-Release: v5): nothing of v2 was brought back over them.
    assert revert_refused.seen["verify"] == (200, "left-up", "v5")


def test_failed_smoke_over_an_incompatible_migration_keeps_its_migration(revert_refused):
    assert "0092_e2e_rename.sql" in revert_refused.seen["ledger"]


def test_failed_smoke_over_an_incompatible_migration_leaves_current_on_v2(revert_refused):
    assert revert_refused.seen["current"].startswith("v2-")


def test_the_way_out_a_refused_revert_names_succeeds(revert_refused):
    way_out = revert_refused.seen["way_out"]
    assert way_out.returncode == 0, way_out.output_tail()


def test_the_way_out_a_refused_revert_names_serves_v2_on_its_schema(revert_refused):
    assert "0092_e2e_rename.sql" not in revert_refused.seen["ledger_after_way_out"]
    assert revert_refused.seen["current_after_way_out"].startswith("v2-")
    assert revert_refused.seen["verify_after_way_out"] == (200, "way-out", "v2")


# --- rolling back over a backward-compatible migration --------------------------------------------


@pytest.fixture(scope="module")
def rolled_back(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """Rollback to v1 with v2 serving (a message stored through v2 first); leaves v1 serving, v2's column kept."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    message = send_whatsapp(deployed_stack, "during v2")
    stored(deployed_stack, "during v2")
    rows = sql(deployed_stack, "SELECT count(*) FROM inbound_messages")
    run = deployed_stack.rollback("v1")
    return Stage(run, {
        "message_through_v2": message,
        "rows_before": rows,
        "rows_after": sql(deployed_stack, "SELECT count(*) FROM inbound_messages"),
        "current": current_release(deployed_stack),
        "verify": attempt(lambda: verify(deployed_stack, "back-to-v1")),
        "ledger": ledger(deployed_stack),
        "audit": audit_lines(deployed_stack),
    })


def test_v2_accepts_a_signed_message_before_the_rollback(rolled_back):
    assert rolled_back.seen["message_through_v2"] == 200


def test_rollback_to_v1_succeeds(rolled_back):
    assert rolled_back.run.returncode == 0, rolled_back.run.output_tail()


def test_rollback_to_v1_makes_v1_current(rolled_back):
    assert rolled_back.seen["current"].startswith("v1-")


def test_rollback_to_v1_serves_v1_workflows(rolled_back):
    assert rolled_back.seen["verify"] == (200, "back-to-v1", None)


def test_rollback_to_v1_keeps_every_row(rolled_back):
    assert rolled_back.seen["rows_after"] == rolled_back.seen["rows_before"]


def test_rollback_to_v1_keeps_the_backward_compatible_migration(rolled_back):
    assert "0090_e2e_note.sql" in rolled_back.seen["ledger"]


def test_rollback_to_v1_is_audited(rolled_back):
    audit = rolled_back.seen["audit"]
    assert any(" rollback release=v1-" in line and "result=success" in line for line in audit), audit[-5:]


@pytest.fixture(scope="module")
def unknown_rollback_refused(deployed_stack) -> Stage:
    """Rollback to v9, never deployed, on whatever the stack serves; changes nothing."""
    before = (current_release(deployed_stack), audit_lines(deployed_stack))
    run = deployed_stack.rollback("v9")
    return Stage(run, {"before": before, "after": (current_release(deployed_stack), audit_lines(deployed_stack))})


def test_rollback_to_a_release_not_on_the_host_is_refused(unknown_rollback_refused):
    assert unknown_rollback_refused.run.returncode != 0, unknown_rollback_refused.run.output_tail()


def test_rollback_to_a_release_not_on_the_host_says_so(unknown_rollback_refused):
    run = unknown_rollback_refused.run
    assert "release v9 is not on the host" in run.output, run.output_tail()


def test_rollback_to_a_release_not_on_the_host_changes_nothing(unknown_rollback_refused):
    assert unknown_rollback_refused.seen["after"] == unknown_rollback_refused.seen["before"]


# --- a migration that fails half-way -----------------------------------------------------------------


@pytest.fixture(scope="module")
def failed_migration(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """v3 (its migration fails half-way) deployed with v2 serving: refused; leaves v2 serving."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    started_before = {name: started_at(deployed_stack, name) for name in N8N_CONTAINERS}
    run = deployed_stack.deploy(source=checkouts["v3"])
    return Stage(run, {
        "current": current_release(deployed_stack),
        "verify": attempt(lambda: verify(deployed_stack, "still-v2")),
        "half_applied_absent": sql(deployed_stack, "SELECT to_regclass('e2e_half_applied') IS NULL"),
        "ledger": ledger(deployed_stack),
        "started_before": started_before,
        "started_after": {name: started_at(deployed_stack, name) for name in N8N_CONTAINERS},
        "lock_held": lock_held(deployed_stack),
        "audit": audit_lines(deployed_stack),
    })


def test_failed_migration_fails_the_deploy(failed_migration):
    assert failed_migration.run.returncode != 0, failed_migration.run.output_tail()


def test_failed_migration_is_named_with_its_error(failed_migration):
    output = failed_migration.run.output
    assert "0091_e2e_broken.sql" in output and 'relation "no_such_table" does not exist' in output, (
        failed_migration.run.output_tail())


def test_failed_migration_leaves_v2_current(failed_migration):
    assert failed_migration.seen["current"].startswith("v2-")


def test_failed_migration_leaves_v2_serving(failed_migration):
    assert failed_migration.seen["verify"] == (200, "still-v2", "v2")


def test_failed_migration_leaves_nothing_half_applied(failed_migration):
    assert failed_migration.seen["half_applied_absent"] == "t"


def test_failed_migration_is_not_recorded_as_applied(failed_migration):
    assert "0091_e2e_broken.sql" not in failed_migration.seen["ledger"]


@pytest.mark.parametrize("container", N8N_CONTAINERS)
def test_failed_migration_never_restarts_n8n(failed_migration, container):
    """n8n was never restarted, so it never ran on the half-migrated schema."""
    assert failed_migration.seen["started_after"][container] == failed_migration.seen["started_before"][container]


def test_failed_migration_releases_the_deploy_lock(failed_migration):
    assert not failed_migration.seen["lock_held"]


def test_failed_migration_is_audited_as_failed(failed_migration):
    audit = failed_migration.seen["audit"]
    assert any("result=failed at 'Ensure every migration is applied'" in line for line in audit), audit[-5:]


# --- two deploys at once -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concurrent_deploys(deployed_stack, upgraded_v2, checkouts) -> Stage:
    """Two deploys of v1 with v2 serving: the second starts once the first holds the lock
    (switching back to v1 keeps it a while). ``run`` is the second; ``seen["first"]`` the first. Leaves v1 serving."""
    upgraded_v2.require("the v2 deploy")
    serving(deployed_stack, checkouts, "v2")
    started = time.monotonic()
    first = deployed_stack.start_deploy(checkouts["v1"])
    try:
        state = poll(lambda: "held" if lock_held(deployed_stack) else "ended" if first.poll() is not None else "",
                     timeout=600, interval=0.25, what="the first deploy's lock on the host")
        second = deployed_stack.deploy(source=checkouts["v1"]) if state == "held" else None
    finally:
        output, _ = first.communicate(timeout=900)
    first_run = finished(first, output, started)
    if second is None:
        pytest.fail(f"the first deploy ended before its lock was seen\n{first_run.output_tail(3000)}", pytrace=False)
    return Stage(second, {"first": first_run, "current": current_release(deployed_stack)})


def test_concurrent_deploy_is_refused(concurrent_deploys):
    assert concurrent_deploys.run.returncode != 0, concurrent_deploys.run.output_tail()


def test_concurrent_deploy_is_refused_naming_the_holder(concurrent_deploys):
    run = concurrent_deploys.run
    assert re.search(r"Deploy lock found \(holder=\S+ action=deploy release=v1-", run.output), run.output_tail()


def test_concurrent_deploy_lets_the_first_one_finish(concurrent_deploys):
    first = concurrent_deploys.seen["first"]
    assert first.returncode == 0, first.output_tail()


def test_concurrent_deploy_leaves_the_first_ones_release_current(concurrent_deploys):
    assert concurrent_deploys.seen["current"].startswith("v1-")


# --- a deploy killed half-way ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_deploy(deployed_stack, deployed_v1, checkouts) -> Stage:
    """A deploy of v2 with v1 serving, SIGKILLed once a process on the VPS is bringing v2 up
    (``seen["bringing_up"]``: that process); leaves its lock on the host."""
    deployed_v1.require("the v1 deploy")
    serving(deployed_stack, checkouts, "v1")
    started = time.monotonic()
    deploy = deployed_stack.start_deploy(checkouts["v2"])
    seen, bringing_up = [], ""
    try:
        for line in deploy.stdout:
            seen.append(line)
            if "Starting operation: Ensure v2-" in line and "serves" in line:
                bringing_up = poll(
                    lambda: deployed_stack.ssh("pgrep", "-af", BRINGING_UP_V2, check=False).stdout.strip(),
                    timeout=300, interval=0.25, what="a process on the VPS bringing v2 up")
                break
    finally:
        deploy.send_signal(signal.SIGKILL)
        deploy.wait(timeout=60)
    return Stage(finished(deploy, "".join(seen), started),
                 {"bringing_up": bringing_up, "lock_held": lock_held(deployed_stack)})


def test_killed_deploy_was_killed_while_bringing_its_release_up(killed_deploy):
    assert killed_deploy.seen["bringing_up"], killed_deploy.run.output_tail()


def test_killed_deploy_leaves_its_lock(killed_deploy):
    assert killed_deploy.seen["lock_held"]


@pytest.fixture(scope="module")
def deploy_after_kill(deployed_stack, killed_deploy, checkouts) -> Stage:
    """The next deploy of v2, the killed one's lock still there: refused; leaves the lock."""
    if not killed_deploy.seen["lock_held"]:
        pytest.fail("precondition: the killed deploy's lock on the host", pytrace=False)
    return Stage(deployed_stack.deploy(source=checkouts["v2"]))


def test_deploy_after_a_killed_one_is_refused(deploy_after_kill):
    assert deploy_after_kill.run.returncode != 0, deploy_after_kill.run.output_tail()


def test_deploy_after_a_killed_one_names_the_lock(deploy_after_kill):
    assert "Deploy lock found" in deploy_after_kill.run.output, deploy_after_kill.run.output_tail()


@pytest.fixture(scope="module")
def unlocked_after_kill(deployed_stack, deploy_after_kill) -> Stage:
    """unlock.py after the refused deploy; leaves no lock."""
    run = deployed_stack.unlock()
    return Stage(run, {"lock_held": lock_held(deployed_stack), "audit": audit_lines(deployed_stack)})


def test_unlock_succeeds(unlocked_after_kill):
    assert unlocked_after_kill.run.returncode == 0, unlocked_after_kill.run.output_tail()


def test_unlock_removes_the_lock(unlocked_after_kill):
    assert not unlocked_after_kill.seen["lock_held"]


def test_unlock_is_audited(unlocked_after_kill):
    audit = unlocked_after_kill.seen["audit"]
    assert any(" unlock release=- " in line for line in audit), audit[-5:]


@pytest.fixture(scope="module")
def converged_after_kill(deployed_stack, unlocked_after_kill, checkouts) -> Stage:
    """The deploy of v2 once unlocked: it converges; leaves v2 serving."""
    unlocked_after_kill.require("unlock.py")
    run = deployed_stack.deploy(source=checkouts["v2"])
    return Stage(run, {"current": current_release(deployed_stack),
                       "verify": attempt(lambda: verify(deployed_stack, "converged"))})


def test_deploy_after_unlock_succeeds(converged_after_kill):
    assert converged_after_kill.run.returncode == 0, converged_after_kill.run.output_tail()


def test_deploy_after_unlock_makes_v2_current(converged_after_kill):
    assert converged_after_kill.seen["current"].startswith("v2-")


def test_deploy_after_unlock_serves_v2(converged_after_kill):
    assert converged_after_kill.seen["verify"] == (200, "converged", "v2")


# --- a container left under compose's temporary name --------------------------------------------


@pytest.fixture(scope="module")
def temporary_name_repaired(deployed_stack, converged_after_kill, checkouts) -> Stage:
    """v2 serving, its nginx renamed ``<id>_resto-nginx-1``: what compose leaves when a deploy is killed
    between removing the old container and renaming the new one (it names the new one so while both
    exist). Compose's next ``up`` keeps that name; the deploy of v2 again gives it back."""
    converged_after_kill.require("the deploy after unlock")
    nginx = stack_container_id(deployed_stack, "resto-nginx-1")
    deployed_stack.ssh("docker", "rename", "resto-nginx-1", f"{nginx[:12]}_resto-nginx-1")
    run = deployed_stack.deploy(source=checkouts["v2"])
    return Stage(run, {"nginx": stack_container_id(deployed_stack, "resto-nginx-1"), "was": nginx,
                       "verify": attempt(lambda: verify(deployed_stack, "renamed"))})


def test_temporary_name_deploy_succeeds(temporary_name_repaired):
    assert temporary_name_repaired.run.returncode == 0, temporary_name_repaired.run.output_tail()


def test_temporary_name_is_given_back_to_the_same_container(temporary_name_repaired):
    assert temporary_name_repaired.seen["nginx"] == temporary_name_repaired.seen["was"]


def test_temporary_name_repair_is_logged(temporary_name_repaired):
    assert re.search(r"container \w{12}_resto-nginx-1 renamed resto-nginx-1", temporary_name_repaired.run.output), \
        temporary_name_repaired.run.output_tail()


def test_temporary_name_repaired_stack_serves_v2(temporary_name_repaired):
    assert temporary_name_repaired.seen["verify"] == (200, "renamed", "v2")
