"""The remote command vocabulary (restobot/commands.py), by exact value."""

from __future__ import annotations

import fnmatch
import os
import subprocess
from pathlib import Path

import pytest

from restobot.commands import (
    CREATE_DATABASE_SQL,
    DROP_DATABASE_SQL,
    POSTGRES_CONTAINER,
    PSQL_SCRIPT,
    UPSERT_API_CLIENT_SQL,
    HostLayout,
    api_client_upsert,
    append_to_file,
    bundle_file_name,
    compose,
    compose_build_migrate,
    compose_exec,
    compose_logs,
    compose_ps,
    compose_run_migrations,
    compose_stop,
    compose_up,
    container_exec,
    container_health,
    container_name,
    container_start,
    database_replaced,
    dump_contents,
    file_age_seconds,
    n8n_started_again,
    n8n_stopped,
    row_counts,
    safety_dump,
    dump_to_file,
    image_fetch,
    make_directory,
    pg_dump,
    pg_dumpall_globals,
    pg_restore,
    predeploy_backup,
    container_rename,
    project_containers,
    psql,
    read_file,
    remove_predeploy_backup,
    remove_tree,
    service_containers,
    restore_from_file,
    run_script,
    shell,
    shell_text,
    smoke_checks,
    switch_current,
    unpack_release,
    workflow_import,
    write_file,
)

LAYOUT = HostLayout("/opt/resto")
R = "/opt/resto/releases/v1-aa"
COMPOSE_R = [
    "docker", "compose", "--project-name", "resto", "--project-directory", R, "--file", f"{R}/compose.yml",
]
PG_DUMP = 'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
PG_RESTORE = 'exec pg_restore --clean --if-exists --exit-on-error --no-owner -U "$POSTGRES_USER" -d "$POSTGRES_DB"'


# --- quoting and places ------------------------------------------------------------


def test_shell_quotes_every_part():
    command = shell(["printf", "%s", "it's; rm -rf /"])
    assert command.get_raw_value() == "printf %s 'it'\"'\"'s; rm -rf /'"


def test_shell_text_is_one_quoted_line():
    assert shell_text(["cat", "/a b"]) == "cat '/a b'"


def test_layout_places_everything_under_the_base_dir():
    layout = HostLayout("/srv/resto")
    assert (layout.lock_info, layout.workflows_stamp, layout.predeploy_backup("v2-bb"), layout.release_dir("v1")) == (
        "/srv/resto/deploy.lock/info", "/srv/resto/state/workflows.sha256",
        "/srv/resto/backups/before-v2-bb.dump", "/srv/resto/releases/v1",
    )


def test_containers_are_named_as_compose_names_them():
    assert (container_name("nginx"), POSTGRES_CONTAINER) == ("resto-nginx-1", "resto-postgres-1")


# --- files -------------------------------------------------------------------------


def test_file_commands():
    assert make_directory("/opt/resto/deploy.lock") == ["mkdir", "/opt/resto/deploy.lock"]
    assert make_directory("/opt/resto", parents=True) == ["mkdir", "-p", "/opt/resto"]
    assert remove_tree("/opt/resto/deploy.lock") == ["rm", "-rf", "/opt/resto/deploy.lock"]
    assert read_file("/opt/resto/deploy.lock/info") == ["cat", "/opt/resto/deploy.lock/info"]
    assert run_script("/opt/resto/bin/backup") == ["/opt/resto/bin/backup"]


def test_write_file_is_private_and_takes_the_content_as_an_argument():
    assert write_file("/opt/resto/state/x", "a b\n") == [
        "sh", "-c", 'umask 077; printf "%s" "$1" > "$0"', "/opt/resto/state/x", "a b\n",
    ]


def test_append_to_file_appends_the_text_as_an_argument():
    assert append_to_file("/opt/resto/audit.log", "line\n") == [
        "sh", "-c", 'printf "%s" "$1" >> "$0"', "/opt/resto/audit.log", "line\n",
    ]


# --- releases ----------------------------------------------------------------------


def test_unpack_is_staged_stamped_then_renamed():
    partial = "/opt/resto/releases/v1-aa.partial"
    assert unpack_release(LAYOUT, "/opt/resto/incoming/v1-aa.tar.gz", "v1-aa", "ab" * 32, "deploy") == [
        ["rm", "-rf", partial],
        ["mkdir", "-p", partial],
        ["tar", "--no-same-owner", "-xzf", "/opt/resto/incoming/v1-aa.tar.gz", "-C", partial],
        ["chown", "-R", "deploy:deploy", partial],
        ["sh", "-c", 'printf "%s\\n" "$1" > "$0"', f"{partial}/.release.sha256", "ab" * 32],
        ["mv", "-T", partial, "/opt/resto/releases/v1-aa"],
        ["rm", "-f", "/opt/resto/incoming/v1-aa.tar.gz"],
    ]


def test_current_moves_with_one_rename():
    assert switch_current(LAYOUT, "v2-bb") == [
        ["ln", "-sfn", "releases/v2-bb", "/opt/resto/current.next"],
        ["mv", "-T", "/opt/resto/current.next", "/opt/resto/current"],
    ]


def test_workflow_import_runs_the_release_s_own_importer():
    assert workflow_import(R) == [
        "python3", f"{R}/restobot/remote/workflows.py", "import", "--dir", f"{R}/workflows",
        "--compose-dir", R, "--compose-file", f"{R}/compose.yml",
    ]


def test_smoke_checks_run_the_release_s_script():
    assert smoke_checks(R, 45) == [f"{R}/bin/smoke", "45"]


# --- compose and docker ------------------------------------------------------------


def test_compose_names_the_project_directory_and_file():
    assert compose(R, "ps") == [*COMPOSE_R, "ps"]


def test_compose_commands():
    assert compose_up(R, "postgres") == [
        *COMPOSE_R, "up", "--detach", "--wait", "--wait-timeout", "300", "--remove-orphans", "postgres",
    ]
    assert compose_stop(R, "n8n-main") == [*COMPOSE_R, "stop", "n8n-main"]
    assert compose_run_migrations(R, "apply") == [*COMPOSE_R, "run", "--rm", "--no-TTY", "db-migrate", "apply"]
    assert compose_build_migrate(R) == ["env", "COMPOSE_BAKE=false", *COMPOSE_R, "build", "--quiet", "db-migrate"]
    assert compose_ps(R) == [*COMPOSE_R, "ps", "--all", "--format", "json"]
    assert compose_logs(R, "nginx", lines=15) == [*COMPOSE_R, "logs", "--no-color", "--tail", "15", "nginx"]
    assert compose_exec(R, "postgres", ["true"]) == [*COMPOSE_R, "exec", "-T", "postgres", "true"]


def test_docker_commands():
    assert container_exec("resto-postgres-1", ["true"]) == ["docker", "exec", "resto-postgres-1", "true"]
    assert container_health("resto-nginx-1") == ["docker", "inspect", "--format", "{{json .State.Health}}",
                                                 "resto-nginx-1"]
    assert project_containers() == [
        "docker", "ps", "--all", "--filter", "label=com.docker.compose.project=resto",
        "--filter", "label=com.docker.compose.oneoff=False", "--format",
        '{{.Label "com.docker.compose.service"}}\t{{.Label "com.docker.compose.project.working_dir"}}'
        '\t{{.State}}\t{{.Status}}\t{{.Names}}\t{{.Label "com.docker.compose.container-number"}}',
    ]
    assert container_rename("3f2a1b0c9d8e_resto-nginx-1", "resto-nginx-1") == [
        "docker", "rename", "3f2a1b0c9d8e_resto-nginx-1", "resto-nginx-1"]


def test_images_are_pulled_or_loaded_from_their_bundle():
    assert image_fetch("redis:8.0-alpine", None) == ["docker", "pull", "--quiet", "redis:8.0-alpine"]
    assert image_fetch("restobot-local/redis:8", "/bundles/") == [
        "docker", "load", "--quiet", "--input", "/bundles/restobot-local_redis_8.tar",
    ]


def test_bundle_file_name_matches_the_harness():
    from harness.images import bundle_file_name as harness_name

    assert bundle_file_name("restobot-local/n8n:2.40.5") == "restobot-local_n8n_2.40.5.tar"
    assert harness_name("restobot-local/n8n:2.40.5") == bundle_file_name("restobot-local/n8n:2.40.5")


# --- psql ----------------------------------------------------------------------------


def test_psql_reads_fixed_sql_on_stdin_and_stops_at_the_first_error():
    assert PSQL_SCRIPT == (
        'printf "%s\\n" "$0" | exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"'
    )
    assert psql("ANALYZE") == ["sh", "-c", PSQL_SCRIPT, "ANALYZE"]


def test_psql_passes_values_as_variables_never_in_the_sql():
    assert psql("SELECT :'b', :\"a\"", {"b": "it's", "a": "x"}) == [
        "sh", "-c", PSQL_SCRIPT, "SELECT :'b', :\"a\"", "--set=a=x", "--set=b=it's",
    ]


def test_psql_options_override_the_container_defaults():
    assert psql("SELECT 1", database="postgres", user="resto", separator="\t")[4:] == [
        "--field-separator=\t", "--username=resto", "--dbname=postgres",
    ]


@pytest.mark.parametrize("name", ["", "1a", "a-b", "a b", "a;b"])
def test_psql_refuses_a_variable_name_psql_would_not_substitute(name):
    with pytest.raises(ValueError, match="psql variable"):
        psql("SELECT 1", {name: "x"})


def test_psql_script_feeds_the_sql_to_psql_and_hands_it_the_options(tmp_path: Path):
    """The script under a real sh, with a stand-in psql printing its arguments and its stdin."""
    fake = tmp_path / "psql"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "arg:%s\\n" "$a"; done\nsed "s/^/stdin:/"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "POSTGRES_USER": "resto", "POSTGRES_DB": "resto"}
    argv = psql("SELECT :'v' -- $(touch pwned)", {"v": "a'b; $(touch pwned)"}, database="postgres")
    output = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert output.splitlines() == [
        "arg:-X", "arg:-At", "arg:-v", "arg:ON_ERROR_STOP=1", "arg:-U", "arg:resto", "arg:-d", "arg:resto",
        "arg:--dbname=postgres", "arg:--set=v=a'b; $(touch pwned)",
        "stdin:SELECT :'v' -- $(touch pwned)",
    ]
    assert not (tmp_path / "pwned").exists()


# --- PostgreSQL dumps and restores ---------------------------------------------------


def test_dumps_and_restores_run_in_the_container_without_a_tty():
    assert pg_dump() == ["sh", "-c", PG_DUMP]
    assert pg_dumpall_globals() == ["sh", "-c", 'exec pg_dumpall --globals-only -U "$POSTGRES_USER"']
    assert pg_restore() == ["sh", "-c", PG_RESTORE]


def test_a_dump_is_written_under_a_partial_name_checked_then_renamed():
    assert dump_to_file("resto-postgres-1", pg_dump(), "/b/x.dump") == [
        "sh", "-c",
        "set -e; umask 077; docker exec resto-postgres-1 sh -c "
        """'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"' > "$0.partial"; """
        'test -s "$0.partial"; mv "$0.partial" "$0"',
        "/b/x.dump",
    ]


def test_a_restore_reads_the_dump_from_the_host_file():
    assert restore_from_file(R, "/b/x.dump") == [
        "sh", "-c", f"{shell_text([*COMPOSE_R, 'exec', '-T', 'postgres', 'sh', '-c', PG_RESTORE])} < \"$0\"",
        "/b/x.dump",
    ]


# --- the deploy's database steps ---------------------------------------------------


def test_predeploy_backup_dumps_roles_and_data_then_writes_its_metadata():
    path = "/opt/resto/backups/before-v2-bb.dump"
    assert predeploy_backup(LAYOUT, "v2-bb", '{"x": 1}\n') == [
        ["install", "-d", "-m", "700", "/opt/resto/backups"],
        dump_to_file("resto-postgres-1", pg_dumpall_globals(), f"{path}.globals.sql"),
        dump_to_file("resto-postgres-1", pg_dump(), path),
        write_file(f"{path}.json", '{"x": 1}\n'),
    ]


def test_a_predeploy_backup_is_removed_with_its_metadata_and_roles():
    assert remove_predeploy_backup("/opt/resto/backups/before-v2-bb.dump") == [
        "rm", "-f", "/opt/resto/backups/before-v2-bb.dump", "/opt/resto/backups/before-v2-bb.dump.json",
        "/opt/resto/backups/before-v2-bb.dump.globals.sql",
    ]


def test_a_services_containers_are_listed_whatever_their_name():
    assert service_containers("postgres") == [
        "docker", "ps", "--all", "--filter", "label=com.docker.compose.project=resto",
        "--filter", "label=com.docker.compose.service=postgres", "--filter", "label=com.docker.compose.oneoff=False",
        "--format", "{{.Names}} {{.State}}",
    ]


def test_api_client_upsert_sends_the_values_as_variables():
    argv = api_client_upsert(R, "admin", "ab" * 32, ("admin:dlq", "admin:read"))
    assert argv == [*COMPOSE_R, "exec", "-T", "postgres", "sh", "-c", PSQL_SCRIPT, UPSERT_API_CLIENT_SQL,
                    "--set=name=admin", "--set=scopes=admin:dlq,admin:read", f"--set=token_hash={'ab' * 32}"]
    assert UPSERT_API_CLIENT_SQL == (
        "INSERT INTO api_clients (name, token_hash, scopes, enabled, description) "
        "VALUES (:'name', :'token_hash', string_to_array(:'scopes', ','), true, 'managed by the deploy') "
        "ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash, scopes = EXCLUDED.scopes, enabled = true"
    )


def test_api_client_upsert_refuses_a_scope_with_a_comma():
    with pytest.raises(ValueError, match="may not contain ','"):
        api_client_upsert(R, "admin", "ab" * 32, ("a,b",))


def test_restore_recreates_the_database_restores_and_analyzes():
    admin = ["--username=resto", "--dbname=postgres"]
    exec_postgres = [*COMPOSE_R, "exec", "-T", "postgres", "sh", "-c", PSQL_SCRIPT]
    assert database_replaced(R, "/b/x.dump", "resto db", "resto") == [
        [*exec_postgres, 'DROP DATABASE IF EXISTS :"database" WITH (FORCE)', *admin, "--set=database=resto db"],
        [*exec_postgres, 'CREATE DATABASE :"database" OWNER :"owner"', *admin,
         "--set=database=resto db", "--set=owner=resto"],
        restore_from_file(R, "/b/x.dump"),
        [*exec_postgres, "ANALYZE"],
    ]
    assert (DROP_DATABASE_SQL, CREATE_DATABASE_SQL) == (
        'DROP DATABASE IF EXISTS :"database" WITH (FORCE)', 'CREATE DATABASE :"database" OWNER :"owner"',
    )


def test_a_restore_stops_n8n_through_the_release_and_starts_the_same_containers_again():
    assert n8n_stopped(R) == [*COMPOSE_R, "stop", "n8n-main", "n8n-worker"]
    assert n8n_started_again() == container_start("resto-n8n-main-1", "resto-n8n-worker-1") == [
        "docker", "start", "resto-n8n-main-1", "resto-n8n-worker-1"]


def test_a_dump_is_checked_by_listing_it_in_the_postgres_service():
    assert dump_contents(R, "/b/x.dump") == [
        "sh", "-c", shell_text([*COMPOSE_R, "exec", "-T", "postgres", "pg_restore", "--list"]) + ' < "$0"', "/b/x.dump"]


def test_a_files_age_is_measured_by_the_hosts_clock():
    assert file_age_seconds("/b/x.dump") == ["sh", "-c", 'echo $(( $(date +%s) - $(stat -c %Y "$0") ))', "/b/x.dump"]


def test_the_rows_at_stake_are_counted_per_table():
    argv = row_counts(R)
    assert argv[:-2] == [*COMPOSE_R, "exec", "-T", "postgres", "sh", "-c", PSQL_SCRIPT]
    assert argv[-1] == "--field-separator=\t" and "FROM inbound_messages" in argv[-2] and "FROM outbound_messages" in argv[-2]


def test_the_safety_dump_is_private():
    assert safety_dump(LAYOUT, "/opt/resto/backups/before-restore-20250102T030405Z.dump") == [
        ["install", "-d", "-m", "700", "/opt/resto/backups"],
        dump_to_file("resto-postgres-1", pg_dump(), "/opt/resto/backups/before-restore-20250102T030405Z.dump"),
    ]
    assert "umask 077" in dump_to_file("c", pg_dump(), "/p")[2]


def test_safety_dumps_are_named_by_time_and_never_match_a_predeploy_backup():
    assert LAYOUT.safety_dump("20250102T030405Z") == "/opt/resto/backups/before-restore-20250102T030405Z.dump"
    assert LAYOUT.safety_dumps == "/opt/resto/backups/before-restore-*Z.dump"
    assert not fnmatch.fnmatch(LAYOUT.predeploy_backup("restore-v1-0a1b2c3d"), LAYOUT.safety_dumps)

def test_output_kept_writes_both_streams_prints_them_and_keeps_the_exit_status(tmp_path):
    import subprocess

    from restobot.commands import output_kept

    log = tmp_path / "run.log"
    proc = subprocess.run(output_kept(str(log), ["sh", "-c", "echo applied; echo failed >&2; exit 3"]),
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (3, "applied\nfailed\n")
    assert log.read_text() == "applied\nfailed\n"


def test_latest_migration_log_prints_the_newest_file_then_its_text(tmp_path):
    import os
    import subprocess

    from restobot.commands import latest_migration_log

    layout = HostLayout(str(tmp_path))
    assert subprocess.run(latest_migration_log(layout), capture_output=True, text=True).stdout == ""
    logs = tmp_path / "logs" / "migrations"
    logs.mkdir(parents=True)
    (logs / "v1-aaa.log").write_text("old\n")
    (logs / "v2-bbb.log").write_text("new\n")
    os.utime(logs / "v1-aaa.log", (1, 1))
    out = subprocess.run(latest_migration_log(layout), capture_output=True, text=True).stdout
    assert out == f"{logs}/v2-bbb.log\nnew\n"
