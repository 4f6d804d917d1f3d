"""Pure parts of the deploy: archives, fact parsers, decisions (argv lists: test_commands.py)."""

from __future__ import annotations

import io
import tarfile

import pytest

from restobot.commands import HostLayout, project_containers, shell
from restobot.facts.deploy import (
    API_CLIENT_SQL,
    ApiClient,
    ApiClientRow,
    AppliedMigrations,
    DeployState,
    HostState,
    LedgerRow,
    PreDeployDump,
    SmokeCheck,
    SmokeResults,
    parse_deploy_state,
)
from restobot.operations.database import backup_metadata, check_api_client, pending_migrations
from restobot.operations.lock import Actor, audit_line, lock_info
from restobot.operations.release import backups_to_prune, release_id, releases_to_prune
from restobot.operations.stack import restore_container_names, smoke_failures
from restobot.release_archive import (
    MigrationInfo,
    ReleaseError,
    build_release,
    check_release_name,
    deterministic_tar,
)
from tests.conftest import settings_for_stage
from tests.unit.scripted import ScriptedHost

LAYOUT = HostLayout("/opt/resto")


def test_release_id_carries_the_archive_hash():
    assert release_id("v1.2.0", "0123456789abcdef" * 4) == "v1.2.0-01234567"


@pytest.mark.parametrize("name", ["v1.2.0", "g1a2b3c4d5e6f", "g1a2b3c4d5e6f-dirty", "2026.11.28"])
def test_release_names_accepted(name):
    assert check_release_name(name) == name


@pytest.mark.parametrize("name", ["", "../etc", "v1 2", "-v1", "a/b"])
def test_release_names_refused(name):
    with pytest.raises(ReleaseError, match="must be letters, digits"):
        check_release_name(name)


def test_prune_keeps_the_newest_and_the_protected():
    newest_first = ["v5", "v4", "v3", "v2", "v1"]
    assert releases_to_prune(newest_first, keep=2, protected={"v1"}) == ["v3", "v2"]


def test_predeploy_backups_go_with_the_releases_they_precede():
    dumps = [PreDeployDump(LAYOUT.predeploy_backup(name), name, ()) for name in ("v5", "v3", "v1")]
    assert backups_to_prune(LAYOUT, dumps, kept={"v5", "v4"}) == [
        "/opt/resto/backups/before-v3.dump", "/opt/resto/backups/before-v1.dump"]


def test_a_backup_not_at_its_releases_path_is_never_pruned():
    dumps = [PreDeployDump("/opt/resto/backups/copy.dump", "v1", ()),
             PreDeployDump("/opt/resto/backups/before-v2.dump", "?", ())]  # metadata without its release
    assert backups_to_prune(LAYOUT, dumps, kept={"v5"}) == []


def test_pending_migrations_are_those_missing_from_the_ledger():
    release = (MigrationInfo("0001_a.sql", "a" * 64, False), MigrationInfo("0002_b.sql", "b" * 64, False))
    assert pending_migrations(release, (LedgerRow("0001_a.sql", "x"),)) == ["0002_b.sql"]
    assert pending_migrations(release, None) == ["0001_a.sql", "0002_b.sql"]


def test_backup_metadata_names_the_release_and_the_applied_migrations():
    assert backup_metadata("v2-bb", (LedgerRow("0001_a.sql", "x"),)) == (
        '{"applied_migrations": ["0001_a.sql"], "before_release": "v2-bb", '
        '"format": "pg_dump custom (-Fc) + pg_dumpall --globals-only"}\n'
    )


def test_api_client_fact_queries_by_a_variable_and_reads_one_row():
    command = ApiClient().command("o'brien")
    assert "--set=name=o'\"'\"'brien" in command and "o''brien" not in command
    assert API_CLIENT_SQL.endswith("WHERE name = :'name'")
    assert ApiClient().process(["rows", "ab\tadmin:read,admin:dlq\tt"]) == ApiClientRow(
        "ab", ("admin:dlq", "admin:read"), True
    )
    assert ApiClient().process(["rows"]) is None and ApiClient().process(["none"]) is None


def test_applied_migrations_are_none_without_a_database():
    assert AppliedMigrations().process(["none"]) is None
    assert AppliedMigrations().process(["rows", "0001_a.sql\tx\tt"]) == (LedgerRow("0001_a.sql", "x", True),)


@pytest.mark.parametrize("client, token_hash, scopes, rule", [
    ("Admin", "ab" * 32, ("admin:read",), "lowercase name"),
    ("admin", "AB" * 32, ("admin:read",), "sha256 hex digest"),
    ("admin", "ab" * 32, ("admin:read,admin:dlq",), "scope 'admin:read,admin:dlq'"),
])
def test_api_client_refuses_what_the_admin_api_would_not_recognise(client, token_hash, scopes, rule):
    with pytest.raises(ValueError, match=rule):
        check_api_client(client, token_hash, scopes)


def test_deploy_state_parses_every_record():
    lines = [
        "current\treleases/v2-bb",
        "release\tv2-bb\t" + "b" * 64,
        "release\tv1-aa\t" + "a" * 64,
        "lock\tholder=ops@laptop action=deploy release=v3-cc since=2026-11-28T04:00:00Z ",
        "workflows\t" + "c" * 64,
        "container\tnginx\t/opt/resto/releases/v2-bb\trunning\tUp 3 minutes (healthy)\tresto-nginx-1\t1",
        "container\tdb-migrate\t/opt/resto/releases/v2-bb\texited\tExited (0) 3 minutes ago\tresto-db-migrate-1\t1",
    ]
    state = parse_deploy_state(lines, LAYOUT)
    assert state.current == "v2-bb"
    assert list(state.releases) == ["v2-bb", "v1-aa"]
    assert state.lock.startswith("holder=ops@laptop")
    assert state.workflows_sha256 == "c" * 64
    assert state.containers[0].healthy and state.containers[1].exited_cleanly


def test_nothing_deployed_reads_as_an_empty_state():
    assert parse_deploy_state([], LAYOUT) == HostState()
    assert DeployState().default() == HostState()


def test_serving_needs_current_and_every_service_healthy():
    healthy = tuple(
        parse_deploy_state([f"container\t{s}\t/x\trunning\tUp 1 minute (healthy)\tresto-{s}-1\t1"],
                           LAYOUT).containers[0]
        for s in ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik")
    )
    assert HostState(current="v1-aa", containers=healthy).serving("v1-aa")
    assert not HostState(current="v1-aa", containers=healthy).serving("v2-bb")
    assert HostState(current="v1-aa", containers=healthy[:-1]).unhealthy_services() == ["traefik"]


def test_a_container_left_under_composes_temporary_name_is_not_serving():
    """A deploy killed while compose recreated nginx leaves ``<id>_resto-nginx-1`` running: healthy,
    but ``docker exec resto-nginx-1`` (the smoke checks, the runbook) finds nothing."""
    names = {s: f"resto-{s}-1" for s in ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik")}
    names["nginx"] = "3f2a1b0c9d8e_resto-nginx-1"
    state = parse_deploy_state(
        [f"container\t{s}\t/x\trunning\tUp 1 minute (healthy)\t{name}\t1" for s, name in names.items()], LAYOUT)
    assert not state.serving("v1-aa") and not state.unhealthy_services()
    assert [(c.name, c.canonical_name) for c in state.misnamed_containers()] == [
        ("3f2a1b0c9d8e_resto-nginx-1", "resto-nginx-1")]


def test_a_second_replica_keeps_its_number():
    state = parse_deploy_state(["container\tn8n-worker\t/x\trunning\tUp\tresto-n8n-worker-2\t2"], LAYOUT)
    assert not state.misnamed_containers()


def test_smoke_results_parse_pass_and_fail():
    results = SmokeResults().process(["PASS healthz answered ok", "FAIL verify-whatsapp expected 'x', got ''"])
    assert results == (
        SmokeCheck("healthz", True, "answered ok"), SmokeCheck("verify-whatsapp", False, "expected 'x', got ''"),
    )
    assert SmokeResults().default() == ()


def test_smoke_without_any_result_is_a_failure():
    assert smoke_failures([]) == ["FAIL smoke the smoke script printed no result"]
    assert smoke_failures(["PASS healthz ok"]) == []


def test_lock_and_audit_lines_say_who_what_when():
    actor = Actor("ops", "laptop")
    assert lock_info(actor, "deploy", "v1-aa", "2026-11-28T04:00:00Z") == (
        "holder=ops@laptop action=deploy release=v1-aa since=2026-11-28T04:00:00Z\n"
    )
    line = audit_line(actor, "rollback", "v1-aa", "success", 12.34)
    assert line.endswith(" rollback release=v1-aa by=ops@laptop result=success duration=12.3s\n")


def test_archive_is_reproducible_and_keeps_modes(secret_env):
    settings = settings_for_stage("production", secret_env)
    first, second = build_release(settings, "v1.0.0"), build_release(settings, "v1.0.0")
    assert first.sha256 == second.sha256
    with tarfile.open(fileobj=io.BytesIO(first.archive)) as archive:
        members = {member.name: member for member in archive.getmembers()}
    assert members["env/n8n.env"].mode == 0o600
    assert members["compose.yml"].mode == 0o644
    assert members["bin/smoke"].mode == 0o755
    assert {"RELEASE.json", "docker/migrate/Dockerfile", "docker/n8n/drain-hooks.js", "restobot/remote/migrate/runner.py"} <= set(members)
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())


def test_changed_settings_change_the_archive(secret_env):
    one = build_release(settings_for_stage("production", secret_env), "v1.0.0")
    secret_env["META_APP_SECRET"] = secret_env["META_APP_SECRET"][::-1]
    other = build_release(settings_for_stage("production", secret_env), "v1.0.0")
    assert one.sha256 != other.sha256
    assert one.migrate_image == other.migrate_image  # the migrate image depends on its inputs only


def test_manifest_lists_migrations_with_checksums(secret_env):
    manifest = build_release(settings_for_stage("production", secret_env), "v1.0.0").manifest
    assert [m.filename for m in manifest.migrations] == sorted(m.filename for m in manifest.migrations)
    assert all(len(m.sha256) == 64 for m in manifest.migrations)


def test_deterministic_tar_ignores_insertion_order():
    a = deterministic_tar({"b": (b"2", 0o644), "a": (b"1", 0o600)})
    b = deterministic_tar({"a": (b"1", 0o600), "b": (b"2", 0o644)})
    assert a == b


def test_a_deploy_renames_only_the_containers_left_under_a_temporary_name():
    listing = shell(project_containers()).get_raw_value()
    host = ScriptedHost({listing: [
        "nginx\t/x\trunning\tUp 1 minute (healthy)\t3f2a1b0c9d8e_resto-nginx-1\t1",
        "redis\t/x\trunning\tUp 1 minute (healthy)\tresto-redis-1\t1",
        "not a container line",
    ]})
    restore_container_names(host)
    assert host.ran == [listing, "docker rename 3f2a1b0c9d8e_resto-nginx-1 resto-nginx-1"]
    assert host.logged == ["container 3f2a1b0c9d8e_resto-nginx-1 renamed resto-nginx-1"]
