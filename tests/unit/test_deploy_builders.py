"""Pure builders of the deploy: argv lists, archives, fact parsers, decisions."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from restobot.commands import (
    HostLayout,
    bundle_file_name,
    compose,
    compose_run_migrations,
    compose_up,
    shell,
)
from restobot.facts.deploy import (
    DeployState,
    HostState,
    LedgerRow,
    SmokeResults,
    parse_deploy_state,
)
from restobot.operations.database import backup_argvs, pending_migrations
from restobot.operations.lock import Actor, audit_line, lock_info
from restobot.operations.release import (
    release_id,
    releases_to_prune,
    switch_current_argv,
    unpack_argv,
)
from restobot.operations.stack import smoke_failures
from restobot.release import (
    ReleaseError,
    build_release,
    check_release_name,
    deterministic_tar,
)
from tests.conftest import settings_for_stage

LAYOUT = HostLayout("/opt/resto")


def test_compose_names_the_project_directory_and_file():
    assert compose("/opt/resto/releases/v1-abcd1234", "ps") == [
        "docker", "compose", "--project-name", "resto",
        "--project-directory", "/opt/resto/releases/v1-abcd1234",
        "--file", "/opt/resto/releases/v1-abcd1234/compose.yml", "ps",
    ]


def test_compose_up_waits_with_a_bounded_timeout():
    assert compose_up("/r", "postgres")[-7:] == ["up", "--detach", "--wait", "--wait-timeout", "300", "--remove-orphans", "postgres"]


def test_migrations_run_once_without_a_tty():
    assert compose_run_migrations("/r", "apply")[-5:] == ["run", "--rm", "--no-TTY", "db-migrate", "apply"]


def test_shell_quotes_every_part():
    command = shell(["printf", "%s", "it's; rm -rf /"])
    assert command.get_raw_value() == "printf %s 'it'\"'\"'s; rm -rf /'"


def test_bundle_file_name_matches_the_harness():
    from restobot.harness.images import bundle_file_name as harness_name

    assert bundle_file_name("restobot-local/n8n:2.40.5") == "restobot-local_n8n_2.40.5.tar"
    assert harness_name("restobot-local/n8n:2.40.5") == bundle_file_name("restobot-local/n8n:2.40.5")


def test_unpack_is_staged_then_renamed():
    steps = unpack_argv(LAYOUT, "/opt/resto/incoming/v1-aa.tar.gz", "v1-aa", "aa" * 32, "deploy")
    assert steps[0] == ["rm", "-rf", "/opt/resto/releases/v1-aa.partial"]
    assert steps[-2] == ["mv", "-T", "/opt/resto/releases/v1-aa.partial", "/opt/resto/releases/v1-aa"]
    assert steps[-1] == ["rm", "-f", "/opt/resto/incoming/v1-aa.tar.gz"]


def test_current_moves_with_one_rename():
    assert switch_current_argv(LAYOUT, "v2-bb") == [
        ["ln", "-sfn", "releases/v2-bb", "/opt/resto/current.next"],
        ["mv", "-T", "/opt/resto/current.next", "/opt/resto/current"],
    ]


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


def test_pending_migrations_are_those_missing_from_the_ledger():
    release = [{"filename": "0001_a.sql"}, {"filename": "0002_b.sql"}]
    assert pending_migrations(release, (LedgerRow("0001_a.sql", "x"),)) == ["0002_b.sql"]
    assert pending_migrations(release, None) == ["0001_a.sql", "0002_b.sql"]


def test_backup_writes_a_partial_file_then_renames_it():
    steps = backup_argvs(LAYOUT, "v2-bb", (LedgerRow("0001_a.sql", "x"),))
    dump = steps[2]
    assert dump[:2] == ["sh", "-c"] and dump[3] == "/opt/resto/backups/before-v2-bb.dump"
    assert 'mv "$0.partial" "$0"' in dump[2] and "pg_dump -Fc" in dump[2] and " -t " not in dump[2]
    assert json.loads(steps[3][-1])["applied_migrations"] == ["0001_a.sql"]


def test_deploy_state_parses_every_record():
    lines = [
        "current\treleases/v2-bb",
        "release\tv2-bb\t" + "b" * 64,
        "release\tv1-aa\t" + "a" * 64,
        "lock\tholder=ops@laptop action=deploy release=v3-cc since=2026-11-28T04:00:00Z ",
        "workflows\t" + "c" * 64,
        "container\tnginx\t/opt/resto/releases/v2-bb\trunning\tUp 3 minutes (healthy)",
        "container\tdb-migrate\t/opt/resto/releases/v2-bb\texited\tExited (0) 3 minutes ago",
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
        parse_deploy_state([f"container\t{s}\t/x\trunning\tUp 1 minute (healthy)"], LAYOUT).containers[0]
        for s in ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik")
    )
    assert HostState(current="v1-aa", containers=healthy).serving("v1-aa")
    assert not HostState(current="v1-aa", containers=healthy).serving("v2-bb")
    assert HostState(current="v1-aa", containers=healthy[:-1]).unhealthy_services() == ["traefik"]


def test_smoke_results_parse_pass_and_fail():
    results = SmokeResults().process(["PASS healthz answered ok", "FAIL verify-whatsapp expected 'x', got ''"])
    assert results == {"healthz": (True, "answered ok"), "verify-whatsapp": (False, "expected 'x', got ''")}


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
    assert {"RELEASE.json", "docker/migrate/Dockerfile", "restobot/migrate.py"} <= set(members)
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())


def test_changed_settings_change_the_archive(secret_env):
    one = build_release(settings_for_stage("production", secret_env), "v1.0.0")
    secret_env["META_APP_SECRET"] = secret_env["META_APP_SECRET"][::-1]
    other = build_release(settings_for_stage("production", secret_env), "v1.0.0")
    assert one.sha256 != other.sha256
    assert one.migrate_image == other.migrate_image  # the migrate image depends on its inputs only


def test_manifest_lists_migrations_with_checksums(secret_env):
    manifest = build_release(settings_for_stage("production", secret_env), "v1.0.0").manifest
    assert [m["filename"] for m in manifest["migrations"]] == sorted(m["filename"] for m in manifest["migrations"])
    assert all(len(m["sha256"]) == 64 for m in manifest["migrations"])


def test_deterministic_tar_ignores_insertion_order():
    a = deterministic_tar({"b": (b"2", 0o644), "a": (b"1", 0o600)})
    b = deterministic_tar({"a": (b"1", 0o600), "b": (b"2", 0o644)})
    assert a == b
