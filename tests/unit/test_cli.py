"""The operator's tool (restobot/cli.py): bad input exits 2 without connecting, JSON shapes,
the lock and audit sequence of a change, its parsers and command builders by value.

The host is a scripted double of ``Remote`` (argv in, canned output out); the real SSH
connection, the real stack and the real lock are exercised in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable, Sequence

import pytest

from restobot import cli, commands
from restobot.commands import HostLayout
from restobot.operations.lock import Actor, audit_line, lock_info
from restobot.settings import SECRET_ENV, Stage

LAYOUT = HostLayout()


class ScriptedRemote(cli.Remote):
    """Answers each command with ``answer(argv)`` -> (exit status, stdout, stderr); records every argv."""

    def __init__(self, answer: Callable[[Sequence[str]], tuple[int, str, str]]):
        super().__init__(client=None)
        self.answer = answer
        self.followed: list[str] = []
        self.calls: list[tuple[str, ...]] = []
        self.stdins: dict[tuple[str, ...], str] = {}

    def run(self, argv, timeout: float = 120, stdin: str | None = None) -> cli.Result:
        self.calls.append(tuple(argv))
        if stdin is not None:
            self.stdins[tuple(argv)] = stdin
        status, out, err = self.answer(argv)
        return cli.Result(tuple(argv), status, out, err)

    def follow(self, argv, on_line) -> int:
        self.calls.append(tuple(argv))
        for line in self.followed:
            on_line(line)
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def no_connection(monkeypatch):
    """Any attempt to connect fails the test."""

    def refuse(target):
        raise AssertionError(f"connected to {target.address} although the input was bad")

    monkeypatch.setattr(cli, "connect", refuse)


@pytest.fixture
def host(monkeypatch, with_secrets):
    """The production inventory (with generated secrets) reached through a scripted host.

    ``host.answers`` maps a predicate on argv to its answer; unmatched commands succeed silently."""

    class Host:
        answers: list[tuple[Callable[[Sequence[str]], bool], tuple[int, str, str]]] = []
        remote: ScriptedRemote | None = None
        followed: list[str] = []

        def on(self, predicate, status=0, out="", err=""):
            self.answers.insert(0, (predicate, (status, out, err)))

        def answer(self, argv):
            for predicate, result in self.answers:
                if predicate(argv):
                    return result
            return 0, "", ""

    scripted = Host()
    scripted.answers = []

    def connect(target):
        scripted.remote = ScriptedRemote(scripted.answer)
        scripted.remote.followed = scripted.followed
        return scripted.remote

    monkeypatch.setattr(cli, "connect", connect)
    scripted.on(lambda argv: argv[:2] == ["sh", "-c"] and argv[2].startswith("readlink"), out="releases/v7-abc\n")
    return scripted


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- bad input: exit 2, nothing connected ----------------------------------------------------


def test_unknown_stage_names_the_stages_and_connects_nowhere(capsys, no_connection):
    status, out, err = run(capsys, "prod", "ps")
    assert status == cli.EXIT_USAGE
    assert "STAGE: unknown stage 'prod'; the stages are local, staging, production" in err
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["logs", "nginxx"], "'nginxx' is not one of 'postgres', 'redis', 'n8n-main', 'n8n-worker', 'nginx', 'traefik'"),
        (["logs", "--tail", "0"], "'--tail': 0 is not in the range 1<=x<=10000"),
        (["logs", "--tail", "-5"], "'--tail': -5 is not in the range 1<=x<=10000"),
        (["logs", "--tail", "10001"], "'--tail': 10001 is not in the range 1<=x<=10000"),
        (["logs", "--tail", "many"], "'--tail': 'many' is not a valid integer"),
        (["audit", "--tail", "99999999999999999999"], "'--tail'"),
        (["executions", "--failed", "--limit", "0"], "'--limit': 0 is not in the range 1<=x<=1000"),
        (["executions", "--limit", "5000"], "'--limit': 5000 is not in the range 1<=x<=1000"),
        (["messages", "--limit", "-1"], "'--limit': -1 is not in the range 1<=x<=1000"),
        (["dlq", "list", "--channel", "sms"], "'sms' is not one of 'whatsapp', 'instagram', 'messenger'"),
        (["dlq", "list", "--limit", "1001"], "'--limit': 1001 is not in the range 1<=x<=1000"),
        (["db", "size", "--limit", "0"], "'--limit': 0 is not in the range 1<=x<=1000"),
        (["security", "--since", "5x"], "'--since': '5x' is not a duration such as 30s, 5m, 1h or 7d"),
        (["security", "--since", "0m"], "'--since': '0m' is not a duration"),
        (["security", "--since", "-1h"], "'--since'"),
        (["security", "--since", "400d"], "'--since': '400d' is longer than the longest window, 366d"),
        (["flooding", "--more-than", "-1"], "'--more-than': -1 is not in the range"),
        (["restart", "n8n"], "'n8n' is not one of"),
        (["restart"], "Missing argument 'SERVICE'"),
        (["stop", "db-migrate"], "'db-migrate' is not one of"),
        (["start", "postgres", "redis"], "unexpected extra argument"),
        (["reboot"], "No such command 'reboot'"),
        (["lock", "steal"], "No such command 'steal'"),
        (["dlq", "replay", "--channel", "sms"], "'sms' is not one of 'whatsapp', 'instagram', 'messenger'"),
        (["dlq", "replay", "--max", "0"], "'--max': 0 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "-3"], "'--max': -3 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "501"], "'--max': 501 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "99999999999999999999"], "'--max'"),
        (["cleanup", "--older-than", "1d"], "No such option '--older-than'"),
        (["cleanup", "now"], "unexpected extra argument"),
        (["smoke", "--attempts", "0"], "'--attempts': 0 is not in the range 1<=x<=60"),
        (["smoke", "--attempts", "61"], "'--attempts': 61 is not in the range 1<=x<=60"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_connects_nowhere(capsys, no_connection, with_secrets, argv, named):
    status, out, err = run(capsys, "production", *argv)
    assert status == cli.EXIT_USAGE, err
    assert named in err
    assert out == ""


def test_missing_secret_names_the_variable_and_connects_nowhere(capsys, no_connection, monkeypatch, tmp_path):
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path)  # no secrets/production.env either
    status, out, err = run(capsys, "production", "ps")
    assert status == cli.EXIT_USAGE
    assert "invalid settings for stage 'production'" in err
    assert "database.password: required (set POSTGRES_PASSWORD in the environment or in secrets/<stage>.env)" in err
    assert "nothing was connected to" in err


def test_an_inventory_of_another_stage_is_refused(capsys, no_connection, with_secrets):
    status, _, err = run(capsys, "--inventory", str(cli.REPO_ROOT / "inventory" / "production.py"), "staging", "ps")
    assert status == cli.EXIT_USAGE
    assert "is the inventory of stage 'production'; name the stage the inventory deploys" in err


def test_a_missing_inventory_file_is_refused(capsys, no_connection, tmp_path):
    status, _, err = run(capsys, "--inventory", str(tmp_path / "nope.py"), "local", "ps")
    assert status == cli.EXIT_USAGE
    assert f"--inventory: {tmp_path / 'nope.py'} is not a file" in err


def test_help_needs_no_inventory_and_no_connection(capsys, no_connection):
    status, out, _ = run(capsys, "local", "restart", "--help")
    assert status == cli.EXIT_OK
    assert "Restart SERVICE and wait until it is healthy again" in out


def test_every_read_command_takes_json():
    reads = {"ps", "logs", "stats", "audit", "executions", "messages", "security", "flooding", "smoke"}
    groups = {"lock": {"status"}, "migrations": {"status", "log"}, "dlq": {"count", "list"}, "db": {"size"}}
    for name in reads:
        assert "as_json" in {p.name for p in cli.cli.commands[name].params}, name
    for group, subcommands in groups.items():
        for name in subcommands:
            assert "as_json" in {p.name for p in cli.cli.commands[group].commands[name].params}, (group, name)


# --- reads: JSON shapes and the commands sent -----------------------------------------------------

CONTAINER = {"service": "nginx", "name": "/resto-nginx-1", "state": "running", "health": "healthy",
             "started_at": "2026-12-01T10:00:00.1Z", "restart_count": 0, "image": "nginx:1.28-alpine"}


def test_ps_json_lists_containers_and_what_is_not_healthy(capsys, host):
    host.on(lambda argv: argv == commands.project_containers_inspected(), out=json.dumps(CONTAINER) + "\n")
    status, out, _ = run(capsys, "production", "ps", "--json")
    assert status == cli.EXIT_OK
    data = json.loads(out)
    assert data["stage"] == "production" and data["release"] == "v7-abc"
    assert data["containers"] == [{**CONTAINER, "name": "resto-nginx-1"}]
    assert data["not_healthy"] == ["postgres", "redis", "n8n-main", "n8n-worker", "traefik"]


def test_ps_check_exits_1_when_a_service_is_not_healthy(capsys, host):
    host.on(lambda argv: argv == commands.project_containers_inspected(), out=json.dumps(CONTAINER) + "\n")
    status, out, _ = run(capsys, "production", "ps", "--check")
    assert status == cli.EXIT_FAILED
    assert "not running healthy: postgres, redis, n8n-main, n8n-worker, traefik" in out


def test_lock_status_json_when_held(capsys, host):
    info = lock_info(Actor("ops", "laptop"), "deploy", "v8", "2026-12-01T10:00:00Z")
    host.on(lambda argv: argv == commands.lock_status(LAYOUT), out=f"held\n{info}")
    status, out, _ = run(capsys, "production", "lock", "status", "--json")
    assert status == cli.EXIT_OK
    assert json.loads(out) == {"stage": "production", "held": True, "holder": "ops@laptop", "action": "deploy",
                               "release": "v8", "since": "2026-12-01T10:00:00Z", "info": info.strip()}


def test_lock_status_json_when_free(capsys, host):
    status, out, _ = run(capsys, "production", "lock", "status", "--json")
    assert (status, json.loads(out)) == (cli.EXIT_OK, {"stage": "production", "held": False})
    assert all(argv[0] != "mkdir" for argv in host.remote.calls)


def test_executions_failed_sends_its_values_as_psql_variables(capsys, host):
    row = {"id": 41, "workflow_id": "W1_IN_WA", "workflow_name": "W1 inbound WhatsApp", "status": "error",
           "mode": "webhook", "started_at": "2026-12-01T10:00:00", "stopped_at": "2026-12-01T10:00:01"}
    expected = commands.database_read(commands.EXECUTIONS_SQL, {"failed": "yes", "limit": "5"})
    host.on(lambda argv: argv == expected, out=json.dumps([row]) + "\n")
    status, out, _ = run(capsys, "production", "executions", "--failed", "--limit", "5", "--json")
    assert status == cli.EXIT_OK
    assert json.loads(out) == {"stage": "production", "failed_only": True, "executions": [row]}
    assert tuple(expected) in host.remote.calls


def test_dlq_count_json_names_every_channel(capsys, host):
    host.on(lambda argv: argv == commands.database_read(commands.DLQ_COUNT_SQL),
            out=json.dumps([{"channel": "whatsapp", "count": 3}]))
    status, out, _ = run(capsys, "production", "dlq", "count", "--json")
    assert status == cli.EXIT_OK
    assert json.loads(out) == {"stage": "production", "count": 3,
                               "by_channel": {"whatsapp": 3, "instagram": 0, "messenger": 0}}


def test_dlq_list_passes_the_channel_and_limit(capsys, host):
    expected = commands.database_read(commands.DLQ_LIST_SQL, {"channel": "messenger", "limit": "3"})
    host.on(lambda argv: argv == expected, out="[]")
    status, out, _ = run(capsys, "production", "dlq", "list", "--channel", "messenger", "--limit", "3", "--json")
    assert (status, json.loads(out)) == (cli.EXIT_OK, {"stage": "production", "channel": "messenger", "messages": []})


def test_security_window_travels_in_seconds(capsys, host):
    expected = commands.database_read(commands.SECURITY_EVENTS_SQL, {"seconds": "7200"})
    host.on(lambda argv: argv == expected, out='[{"event_type": "SIGNATURE_INVALID", "count": 2, "last_at": "t"}]')
    status, out, _ = run(capsys, "production", "security", "--since", "2h", "--json")
    assert status == cli.EXIT_OK
    assert json.loads(out)["events"] == [{"event_type": "SIGNATURE_INVALID", "count": 2, "last_at": "t"}]


def test_flooding_defaults_to_the_rate_limit_over_the_window(capsys, host):
    expected = commands.database_read(commands.FLOODING_SQL, {"seconds": "60", "more_than": "20"})
    host.on(lambda argv: argv == expected, out="[]")
    status, out, _ = run(capsys, "production", "flooding", "--json")
    assert (status, json.loads(out)["more_than"]) == (cli.EXIT_OK, 20)


def test_a_failing_database_read_exits_1_with_psqls_error(capsys, host):
    host.on(lambda argv: argv[:3] == ["docker", "exec", commands.POSTGRES_CONTAINER], status=1,
            err="Error response from daemon: container resto-postgres-1 is not running")
    status, out, err = run(capsys, "production", "messages")
    assert status == cli.EXIT_FAILED
    assert "reading outbound_messages failed on the host (exit 1):" in err
    assert "container resto-postgres-1 is not running" in err


def test_audit_json_parses_the_lock_modules_lines(capsys, host):
    line = audit_line(Actor("ops", "laptop"), "restart n8n-main", "v7-abc", "ok started_at=x", 3.25)
    host.on(lambda argv: argv == commands.audit_tail(LAYOUT, 5), out=line)
    status, out, _ = run(capsys, "production", "audit", "--tail", "5", "--json")
    [entry] = json.loads(out)["entries"]
    assert status == cli.EXIT_OK
    assert entry == {"time": line.split()[0], "action": "restart n8n-main", "release": "v7-abc", "by": "ops@laptop",
                     "result": "ok started_at=x", "duration_s": 3.2}


def test_logs_json_splits_container_time_and_text(capsys, host):
    host.on(lambda argv: argv == commands.compose_logs_tail(LAYOUT.current, ["nginx"], 2),
            out="nginx-1  | 2026-12-01T10:00:00.000000000Z GET /healthz 200\n")
    status, out, _ = run(capsys, "production", "logs", "nginx", "--tail", "2", "--json")
    assert status == cli.EXIT_OK
    assert json.loads(out) == {"stage": "production", "service": "nginx", "lines": [
        {"service": "nginx", "replica": 1, "time": "2026-12-01T10:00:00.000000000Z", "text": "GET /healthz 200"}]}


# --- changes: the lock first, the audit line, the lock released --------------------------------------


def healthy_after_restart(host):
    restarted = {**CONTAINER, "service": "n8n-worker", "name": "/resto-n8n-worker-1", "started_at": "new"}
    host.on(lambda argv: argv == commands.project_containers_inspected(), out=json.dumps(restarted))


def test_restart_takes_the_lock_restarts_audits_and_releases(capsys, host):
    healthy_after_restart(host)
    status, out, err = run(capsys, "production", "restart", "n8n-worker")
    assert status == cli.EXIT_OK, err
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    restart = calls.index(tuple(commands.compose_service_action(LAYOUT.current, "restart", "n8n-worker")))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    release = calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert mkdir < restart < audit < release
    assert " restart n8n-worker release=v7-abc by=" in calls[audit][-1]
    assert "result=ok started_at=new" in calls[audit][-1]
    assert "n8n-worker: running healthy" in out


def test_a_held_lock_refuses_with_exit_4_and_changes_nothing(capsys, host):
    host.on(lambda argv: list(argv) == commands.make_directory(LAYOUT.lock_dir), status=1, err="File exists")
    held = lock_info(Actor("ci", "runner"), "deploy", "v8", "2026-12-01T10:00:00Z")
    host.on(lambda argv: argv == commands.lock_status(LAYOUT), out=f"held\n{held}")
    status, _, err = run(capsys, "production", "stop", "nginx")
    assert status == cli.EXIT_LOCKED
    assert "the deploy lock is held (holder=ci@runner action=deploy release=v8" in err
    assert "resto production lock release" in err
    touched = [argv for argv in host.remote.calls if argv[0] in ("docker", "rm") or LAYOUT.audit_log in argv]
    assert touched == []


def test_a_failed_change_is_audited_and_the_lock_released(capsys, host):
    host.on(lambda argv: argv == commands.compose_service_action(LAYOUT.current, "start", "redis"), status=1,
            err="no such service")
    status, _, err = run(capsys, "production", "start", "redis")
    assert status == cli.EXIT_FAILED
    assert "start redis failed on the host (exit 1):\nno such service" in err
    audit = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert len(audit) == 1 and "result=failed: start redis failed on the host (exit 1):" in audit[0][-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


REPLAY_URL = "https://api.resto.example.com/v1/admin/dlq/replay"


def admin_api_answers(host, status: int, body: dict) -> None:
    host.on(lambda argv: argv[0] == "curl", out=json.dumps(body) + f"\n{status}")


def curl_calls(host) -> list[tuple[str, ...]]:
    return [argv for argv in host.remote.calls if argv[0] == "curl"]


def test_dlq_replay_posts_to_the_admin_api_under_the_lock_with_the_token_on_stdin(capsys, host, with_secrets):
    admin_api_answers(host, 200, {"dry_run": False, "channel": "whatsapp", "max_messages": 5, "replayed": 2,
                                  "ids": [4, 7], "skipped_outside_24h_window": [9]})
    status, out, err = run(capsys, "production", "dlq", "replay", "--channel", "whatsapp", "--max", "5", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", "dry_run": False, "channel": "whatsapp", "max": 5,
                               "replayed": [4, 7], "would_replay": [], "skipped_outside_24h_window": [9]}
    [post] = curl_calls(host)
    assert post == tuple(commands.admin_api_post("api.resto.example.com", "/v1/admin/dlq/replay",
                                                 '{"dry_run": false, "channel": "whatsapp", "max_messages": 5}'))
    assert post[-1] == REPLAY_URL
    token = with_secrets["ADMIN_API_TOKEN"]
    assert host.remote.stdins[post] == f'header = "x-api-token: {token}"\n'
    assert not any(token in part for argv in host.remote.calls for part in argv)
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    release = calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert mkdir < calls.index(post) < audit < release
    assert " dlq replay channel=whatsapp max=5 release=v7-abc by=" in calls[audit][-1]
    assert "result=ok replayed=2 duration=" in calls[audit][-1]


def test_dlq_replay_dry_run_takes_no_lock_and_writes_no_audit(capsys, host):
    admin_api_answers(host, 200, {"dry_run": True, "would_replay": 1, "ids": [4], "skipped_outside_24h_window": []})
    status, out, err = run(capsys, "production", "dlq", "replay", "--dry-run")
    assert status == cli.EXIT_OK, err
    assert out.strip() == "would replay 1 from the DLQ (ids 4)"
    [post] = curl_calls(host)
    assert '{"dry_run": true, "channel": null, "max_messages": 10}' in post
    assert [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv] == []


@pytest.mark.parametrize(("answer", "named"), [
    (401, "the admin API answered 401 (invalid token); the admin API does not know ADMIN_API_TOKEN"),
    (403, "the admin API answered 403 (scope admin:dlq required); the admin client lacks the scope admin:dlq"),
    (503, "the admin API answered 503 (unavailable); see: resto production logs nginx n8n-main"),
])
def test_a_refused_replay_exits_1_is_audited_failed_and_releases_the_lock(capsys, host, answer, named):
    error = {401: "invalid token", 403: "scope admin:dlq required", 503: "unavailable"}[answer]
    admin_api_answers(host, answer, {"error": error})
    status, _, err = run(capsys, "production", "dlq", "replay")
    assert status == cli.EXIT_FAILED
    assert f"error: the DLQ replay: {named}" in err
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert f"result=failed: the DLQ replay: the admin API answered {answer}" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


RETENTION = {"inbound_days": "90", "outbound_days": "90", "security_days": "90", "executions_hours": "168"}
PAST = {"inbound_messages": 2, "outbound_messages": 1, "security_events": 0, "execution_entity": 7}


def test_cleanup_dry_run_counts_with_the_retention_settings_and_changes_nothing(capsys, host):
    host.on(lambda argv: argv == commands.database_read(commands.CLEANUP_COUNT_SQL, RETENTION), out=json.dumps(PAST))
    status, out, err = run(capsys, "production", "cleanup", "--dry-run", "--json")
    assert status == cli.EXIT_OK, err
    data = json.loads(out)
    assert (data["dry_run"], data["rows"], data["total"]) == (True, PAST, 10)
    assert data["retention"] == {"inbound_messages_days": 90, "outbound_messages_days": 90,
                                 "security_events_days": 90, "executions_max_age_hours": 168}
    assert [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv] == []
    assert tuple(commands.database_read(commands.CLEANUP_SQL, RETENTION)) not in host.remote.calls


def test_cleanup_deletes_under_the_lock_and_audits_what_went(capsys, host):
    delete = tuple(commands.database_read(commands.CLEANUP_SQL, RETENTION))
    host.on(lambda argv: tuple(argv) == delete, out=json.dumps(PAST))
    status, out, err = run(capsys, "production", "cleanup", "--json")
    assert status == cli.EXIT_OK, err
    assert (json.loads(out)["dry_run"], json.loads(out)["rows"]) == (False, PAST)
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    assert mkdir < calls.index(delete) < audit < calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert (" cleanup release=v7-abc by=" in calls[audit][-1] and "result=ok deleted inbound_messages=2 "
            "outbound_messages=1 security_events=0 execution_entity=7 duration=" in calls[audit][-1])


def test_cleanup_sql_deletes_only_past_the_retention_variables():
    assert commands.CLEANUP_SQL.count("DELETE FROM") == 4
    for table, rows in commands.PAST_RETENTION.items():
        assert f"gone_{table} AS (DELETE {rows} RETURNING 1)" in commands.CLEANUP_SQL
        assert f"'{table}', (SELECT count(*) {rows})" in commands.CLEANUP_COUNT_SQL
    assert '"stoppedAt" < now() - make_interval(hours => (:\'executions_hours\')::int)' in commands.CLEANUP_SQL


def test_migrations_log_shows_the_newest_log_and_its_release(capsys, host):
    path = f"{LAYOUT.migration_logs_dir}/v7-abc.log"
    host.on(lambda argv: argv == commands.latest_migration_log(LAYOUT), out=f"{path}\napplied 0001_init.sql\ndone\n")
    status, out, err = run(capsys, "production", "migrations", "log", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", "release": "v7-abc", "file": path,
                               "lines": ["applied 0001_init.sql", "done"]}


def test_migrations_log_without_any_log_says_so(capsys, host):
    status, out, _ = run(capsys, "production", "migrations", "log")
    assert status == cli.EXIT_OK
    assert out.startswith("no migration log in /opt/resto/logs/migrations: no deploy has migrated the database")


def test_migrations_apply_dry_run_runs_the_runners_dry_run_without_the_lock(capsys, host):
    dry = tuple(commands.compose_run_migrations(LAYOUT.current, "apply", "--dry-run"))
    host.on(lambda argv: tuple(argv) == dry, out="Would apply 0007_x.sql\nDry run: 1 pending, 6 applied; nothing was changed.\n")
    status, out, err = run(capsys, "production", "migrations", "apply", "--dry-run", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", "release": "v7-abc", "dry_run": True, "lines": [
        "Would apply 0007_x.sql", "Dry run: 1 pending, 6 applied; nothing was changed."]}
    assert [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv] == []


def test_migrations_apply_runs_under_the_lock_keeps_the_output_and_audits_its_last_line(capsys, host):
    apply = tuple(commands.output_kept(LAYOUT.migration_log("v7-abc"),
                                       commands.compose_run_migrations(LAYOUT.current, "apply")))
    host.on(lambda argv: tuple(argv) == apply, out="Applied 0007_x.sql\nApplied 1 migration(s) in 12 ms; the schema is up to date.\n")
    status, out, err = run(capsys, "production", "migrations", "apply")
    assert status == cli.EXIT_OK, err
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    assert mkdir < calls.index(apply) < audit < calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert " migrations apply release=v7-abc by=" in calls[audit][-1]
    assert "result=ok Applied 1 migration(s) in 12 ms; the schema is up to date. duration=" in calls[audit][-1]
    assert out.startswith("Applied 0007_x.sql\n")


def test_a_failing_migration_exits_1_with_the_runners_output_and_is_audited(capsys, host):
    host.on(lambda argv: argv[0] == "sh" and LAYOUT.migration_log("v7-abc") in argv, status=1,
            out="migrate: error: 0007_x.sql failed: relation exists\n")
    status, _, err = run(capsys, "production", "migrations", "apply")
    assert status == cli.EXIT_FAILED
    assert "applying the migrations failed on the host (exit 1):\nmigrate: error: 0007_x.sql failed" in err
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert "result=failed: applying the migrations failed on the host (exit 1): duration=" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


SMOKE_OUT = ("PASS healthz answered ok\nPASS verify-whatsapp answered smoke-1\n"
             "FAIL console n8n editor does not answer at http://n8n-main:5678/\n")


def test_smoke_runs_the_releases_script_and_exits_1_on_a_failed_check(capsys, host):
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 3), out=SMOKE_OUT)
    status, out, _ = run(capsys, "production", "smoke", "--attempts", "3", "--json")
    assert status == cli.EXIT_FAILED
    data = json.loads(out)
    assert (data["release"], data["failed"]) == ("v7-abc", ["console"])
    assert data["checks"][0] == {"name": "healthz", "passed": True, "detail": "answered ok"}
    assert [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv] == []


def test_smoke_passes_when_every_check_passes_and_fails_without_any_result(capsys, host):
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 1), out="PASS healthz answered ok\n")
    assert run(capsys, "production", "smoke")[0] == cli.EXIT_OK
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 1), out="")
    status, out, _ = run(capsys, "production", "smoke")
    assert status == cli.EXIT_FAILED and "failed: (no result)" in out


def test_parse_http_answer():
    assert cli.parse_http_answer('{"ids": []}\n200') == (200, '{"ids": []}')
    assert cli.parse_http_answer("\n401\n") == (401, "")
    with pytest.raises(ValueError, match="no HTTP status"):
        cli.parse_http_answer("curl: (7) Failed to connect")


def test_lock_release_audits_who_held_it(capsys, host):
    held = lock_info(Actor("ci", "runner"), "deploy", "v8", "2026-12-01T10:00:00Z")
    host.on(lambda argv: argv == commands.lock_status(LAYOUT), out=f"held\n{held}")
    status, out, _ = run(capsys, "production", "lock", "release")
    assert status == cli.EXIT_OK
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert f" unlock release=- by={Actor.current()} result=released lock ({held.strip()})" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


def test_lock_release_of_a_free_lock_changes_nothing(capsys, host):
    status, out, _ = run(capsys, "production", "lock", "release")
    assert (status, out.strip()) == (cli.EXIT_OK, "no deploy lock is held; nothing changed")
    assert [argv for argv in host.remote.calls if argv[0] == "rm" or LAYOUT.audit_log in argv] == []


# --- pure parts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604_800),
                                               ("366d", 31_622_400)])
def test_parse_duration(text, seconds):
    assert cli.parse_duration(text) == seconds


def test_lock_without_info_is_held_by_an_unknown_holder():
    assert cli.parse_lock_status(["held"]) == {"held": True, "holder": None, "action": None, "release": None,
                                               "since": None, "info": None}


def test_audit_lines_of_other_shapes_are_kept_as_text():
    unlock = audit_line(Actor("a", "b"), "unlock", "-", "released lock (holder=x action=deploy release=v1 since=t)")
    records = cli.parse_audit([unlock, "garbage line"])
    assert records[0]["result"] == "released lock (holder=x action=deploy release=v1 since=t)"
    assert records[0]["duration_s"] is None
    assert records[1] == {"line": "garbage line"}


def test_parse_df():
    lines = ["Filesystem 1024-blocks Used Available Capacity Mounted on",
             "overlay 41152736 20576368 18463184 53% /"]
    assert cli.parse_df(lines) == {"filesystem": "overlay", "mount": "/", "total_kib": 41152736,
                                   "used_kib": 20576368, "available_kib": 18463184, "used_percent": 53.0}


def test_stats_alerts_use_the_monitoring_thresholds(with_secrets):
    from tests.conftest import settings_for_stage

    settings = settings_for_stage("production", with_secrets)
    rows = cli.parse_stats(['{"Name": "resto-n8n-main-1", "CPUPerc": "91.5%", "MemPerc": "10.0%"}'])
    alerts = cli.stats_alerts(rows, {"mount": "/", "used_percent": 95.0}, settings)
    assert alerts == ["resto-n8n-main-1: CPU 91.5% > 80% (monitoring.cpu_percent)",
                      "disk /: 95.0% > 90% (monitoring.disk_percent)"]


@pytest.mark.parametrize(("window", "threshold"), [(1, 10), (30, 10), (31, 20), (60, 20), (3600, 1200)])
def test_flooding_threshold(window, threshold):
    assert cli.flooding_threshold(10, window) == threshold


def test_migration_status_marks_applied_pending_changed_and_unknown():
    manifest = {"name": "v2", "stage": Stage.PRODUCTION.value, "commit": None, "migrate_image": "m:1", "images": {},
                "workflows_sha256": "w" * 64, "config_sha256": "c" * 64,
                "migrations": [{"filename": "0001_a.sql", "sha256": "a" * 64, "backward_compatible": False},
                               {"filename": "0002_b.sql", "sha256": "b" * 64, "backward_compatible": False},
                               {"filename": "0003_c.sql", "sha256": "c" * 64, "backward_compatible": True}]}
    ledger = [{"filename": "0001_a.sql", "checksum": "a" * 64, "applied_at": "2026-11-01T10:00:00.5+00:00",
               "duration_ms": 4, "backward_compatible": False},
              {"filename": "0002_b.sql", "checksum": "f" * 64, "applied_at": "2026-11-02T10:00:00+00:00",
               "duration_ms": 5, "backward_compatible": False},
              {"filename": "0009_z.sql", "checksum": "z" * 64, "applied_at": "2026-11-09T10:00:00+00:00",
               "duration_ms": 1, "backward_compatible": False}]
    status = cli.migration_status(json.dumps(manifest), ledger)
    assert [(m["filename"], m["state"]) for m in status["migrations"]] == [
        ("0001_a.sql", "applied"), ("0002_b.sql", "changed"), ("0003_c.sql", "pending")]
    assert status["pending"] == ["0003_c.sql"] and status["unknown"] == ["0009_z.sql"]
    assert status["migrations"][0]["applied_at"] == "2026-11-01T10:00:00.500000+00:00"
    assert len(status["problems"]) == 3  # unknown, changed, out of order
    assert status["problems"][0].startswith("the database has migrations this release does not know: 0009_z.sql "
                                            "(applied 2026-11-09 10:00:00 UTC)")


# --- command builders, by value ------------------------------------------------------------------------------


def test_database_read_passes_values_as_psql_variables_never_in_the_sql():
    argv = commands.database_read(commands.DLQ_LIST_SQL, {"channel": "whatsapp'; DROP TABLE x; --", "limit": "3"})
    assert argv[:3] == ["docker", "exec", commands.POSTGRES_CONTAINER]
    assert argv[-2:] == ["--set=channel=whatsapp'; DROP TABLE x; --", "--set=limit=3"]
    assert "DROP TABLE" not in argv[6]


def test_every_tool_query_is_one_json_document():
    for sql in (commands.EXECUTIONS_SQL, commands.OUTBOUND_TROUBLE_SQL, commands.SECURITY_EVENTS_SQL,
                commands.FLOODING_SQL, commands.DLQ_COUNT_SQL, commands.DLQ_LIST_SQL, commands.TABLE_SIZES_SQL,
                commands.DATABASE_SIZE_SQL, commands.LEDGER_ROWS_SQL):
        assert sql.startswith("SELECT coalesce(json_agg(row_to_json(r)), '[]'::json) FROM (SELECT ")


def test_executions_join_the_workflow_name():
    assert 'LEFT JOIN workflow_entity w ON w.id = e."workflowId"' in commands.EXECUTIONS_SQL
    assert "w.name AS workflow_name" in commands.EXECUTIONS_SQL


def test_compose_service_action():
    assert commands.compose_service_action("/opt/resto/current", "restart", "nginx") == [
        "docker", "compose", "--project-name", "resto", "--project-directory", "/opt/resto/current",
        "--file", "/opt/resto/current/compose.yml", "restart", "nginx"]
    with pytest.raises(ValueError, match="must be start, stop or restart"):
        commands.compose_service_action("/opt/resto/current", "rm", "nginx")


def test_lock_and_audit_readers():
    assert commands.lock_status(LAYOUT) == [
        "sh", "-c", 'if [ -d "$0" ]; then echo held; cat "$0/info" 2>/dev/null; fi; exit 0', "/opt/resto/deploy.lock"]
    assert commands.audit_tail(LAYOUT, 7) == ["sh", "-c", '[ ! -f "$0" ] || exec tail -n "$1" "$0"',
                                              "/opt/resto/audit.log", "7"]


def test_project_containers_inspected_filters_the_project_and_leaves_out_one_offs():
    argv = commands.project_containers_inspected()
    assert argv[3:5] == ["label=com.docker.compose.project=resto", "label=com.docker.compose.oneoff=False"]
    assert '"started_at":{{json .State.StartedAt}}' in argv[5]


def test_logs_follow_streams_each_line_as_json(capsys, host):
    host.followed = ["nginx-1  | 2026-12-01T10:00:00Z GET /healthz 200",
                     "n8n-worker-1  | 2026-12-01T10:00:01Z Worker finished execution 32 (job 29)"]
    status, out, _ = run(capsys, "production", "logs", "nginx", "-f", "--tail", "1", "--json")
    assert status == cli.EXIT_OK
    assert [(json.loads(line)["service"], json.loads(line)["text"]) for line in out.splitlines()] == [
        ("nginx", "GET /healthz 200"), ("n8n-worker", "Worker finished execution 32 (job 29)")]
    assert tuple(commands.compose_logs_tail(LAYOUT.current, ["nginx"], 1, follow=True)) in host.remote.calls


HUMAN_READS = [["ps"], ["logs"], ["stats"], ["lock", "status"], ["audit"], ["migrations", "status"],
               ["executions", "--failed"], ["messages"], ["security"], ["flooding"], ["dlq", "count"], ["dlq", "list"],
               ["db", "size"]]


@pytest.mark.parametrize("argv", HUMAN_READS, ids=[" ".join(argv) for argv in HUMAN_READS])
def test_every_read_prints_for_a_human_without_json(capsys, host, argv):
    manifest = {"name": "v7", "stage": "production", "commit": None, "migrate_image": "m:1", "images": {},
                "workflows_sha256": "w", "config_sha256": "c", "migrations": [
                    {"filename": "0001_a.sql", "sha256": "a" * 64, "backward_compatible": False}]}
    rows = {commands.DATABASE_SIZE_SQL: '[{"database": "n8n", "bytes": 8, "size": "8 bytes"}]',
            commands.LEDGER_ROWS_SQL: json.dumps([{"filename": "0001_a.sql", "checksum": "a" * 64, "duration_ms": 3,
                                                  "applied_at": "2026-11-01T10:00:00+00:00",
                                                  "backward_compatible": False}]),
            commands.EXECUTIONS_SQL: json.dumps([{"id": 1, "workflow_id": "W1", "workflow_name": "W1 inbound",
                                                 "status": "error", "mode": "webhook", "started_at": "t",
                                                 "stopped_at": "t"}])}
    host.on(lambda argv: argv[:3] == ["docker", "exec", commands.POSTGRES_CONTAINER],
            out="[]")
    for sql, answer in rows.items():
        host.on(lambda argv, sql=sql: sql in argv, out=answer)
    host.on(lambda argv: argv == commands.project_containers_inspected(), out=json.dumps(CONTAINER))
    host.on(lambda argv: argv == commands.project_container_stats(),
            out='{"Name": "resto-nginx-1", "CPUPerc": "0.5%", "MemPerc": "1.0%", "MemUsage": "4MiB / 1GiB"}')
    host.on(lambda argv: argv == commands.disk_usage(LAYOUT.base_dir),
            out="Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 50 50 50% /\n")
    host.on(lambda argv: argv == commands.read_file(f"{LAYOUT.current}/RELEASE.json"), out=json.dumps(manifest))
    host.on(lambda argv: argv == commands.compose_logs_tail(LAYOUT.current, [], 100), out="nginx-1  | t GET /\n")
    status, out, err = run(capsys, "production", *argv)
    assert status == cli.EXIT_OK, err
    assert out.strip() and not out.lstrip().startswith("{")


def test_an_interrupted_change_is_audited_and_the_lock_released(capsys, host, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "wait_until_healthy", interrupted)
    status, _, err = run(capsys, "production", "restart", "redis")
    assert status == cli.EXIT_FAILED and "aborted" in err
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert "restart redis release=v7-abc" in audit[-1] and "result=interrupted (KeyboardInterrupt)" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


def test_an_inventory_imports_its_own_checkout_from_any_working_directory(tmp_path, monkeypatch):
    """The ``resto`` console script has no checkout on sys.path; the local inventory imports ``harness``."""
    (tmp_path / "inventory").mkdir()
    (tmp_path / "checkout_module_for_resto_test.py").write_text("VALUE = 'from the checkout'\n")
    inventory = tmp_path / "inventory" / "local.py"
    inventory.write_text("import checkout_module_for_resto_test as m\nSEEN = m.VALUE\n")
    monkeypatch.chdir("/")
    path_before = list(sys.path)
    with cli.project_importable(inventory):
        assert runpy.run_path(str(inventory))["SEEN"] == "from the checkout"
    assert sys.path == path_before
