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
    connections_refused(monkeypatch)


def connections_refused(monkeypatch) -> None:
    def refuse(target):
        raise AssertionError(f"connected to {target.address} although the input was bad")

    monkeypatch.setattr(cli, "connect", refuse)


@pytest.fixture
def host(monkeypatch, with_secrets):
    """The production inventory (with generated secrets) reached through a scripted host."""
    return scripted_host(monkeypatch)


def scripted_host(monkeypatch):
    """``cli.connect`` answered by a scripted host on release v7-abc.

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
        (["restore"], "Missing argument 'FILE|latest'"),
        (["restore", "latest", "other.dump"], "unexpected extra argument"),
        (["restore", "latest", "--yes=no"], "--yes"),
        (["dlq", "replay", "--channel", "sms"], "'sms' is not one of 'whatsapp', 'instagram', 'messenger'"),
        (["dlq", "replay", "--max", "0"], "'--max': 0 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "-3"], "'--max': -3 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "501"], "'--max': 501 is not in the range 1<=x<=500"),
        (["dlq", "replay", "--max", "99999999999999999999"], "'--max'"),
        (["cleanup", "--older-than", "1d"], "No such option '--older-than'"),
        (["cleanup", "now"], "unexpected extra argument"),
        (["smoke", "--attempts", "0"], "'--attempts': 0 is not in the range 1<=x<=60"),
        (["smoke", "--attempts", "61"], "'--attempts': 61 is not in the range 1<=x<=60"),
        (["backup", "now", "resto-20261201T031700Z.dump"], "unexpected extra argument"),
        (["backup", "list", "--limit", "3"], "No such option '--limit'"),
        (["backup", "verify", "a.dump", "b.dump"], "unexpected extra argument"),
        (["backup", "restore"], "No such command 'restore'"),
        (["quarantine", "add", "sms", "33612345678"], "'sms' is not one of 'whatsapp', 'instagram', 'messenger'"),
        (["quarantine", "add", "whatsapp", "+33612345678"], "SENDER: '+33612345678' is not a whatsapp sender id: "
                                                            "the international number in digits"),
        (["quarantine", "add", "whatsapp", "33 6 12"], "without '+', spaces or dashes"),
        (["quarantine", "add", "whatsapp", "3361234567812345"], "6 to 15 digits"),
        (["quarantine", "add", "messenger", "abc'; drop table quarantine; --"], "is not a messenger sender id: "
                                                                               "the sender's PSID"),
        (["quarantine", "add", "instagram", ""], "is not a instagram sender id"),
        (["quarantine", "add", "whatsapp"], "Missing argument 'SENDER'"),
        (["quarantine", "add", "whatsapp", "33612345678", "--for", "0d"], "'--for': '0d' is not a duration"),
        (["quarantine", "add", "whatsapp", "33612345678", "--for", "-7d"], "'--for'"),
        (["quarantine", "add", "whatsapp", "33612345678", "--for", "400d"], "'--for': '400d' is longer than"),
        (["quarantine", "add", "whatsapp", "33612345678", "--reason", "x" * 201], "--reason: at most 200 printable"),
        (["quarantine", "add", "whatsapp", "33612345678", "--reason", "two\nlines"], "--reason: at most 200"),
        (["quarantine", "remove", "whatsapp", "wa:33612345678"], "is not a whatsapp sender id"),
        (["quarantine", "list", "whatsapp"], "unexpected extra argument"),
        (["quarantine", "purge"], "No such command 'purge'"),
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
    groups = {"lock": {"status"}, "migrations": {"status", "log"}, "dlq": {"count", "list"}, "db": {"size"},
              "backup": {"list", "verify"}, "quarantine": {"list"}}
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
PAST = {"inbound_messages": 2, "outbound_messages": 1, "security_events": 0, "execution_entity": 7, "quarantine": 1}


def test_cleanup_dry_run_counts_with_the_retention_settings_and_changes_nothing(capsys, host):
    host.on(lambda argv: argv == commands.database_read(commands.CLEANUP_COUNT_SQL, RETENTION), out=json.dumps(PAST))
    status, out, err = run(capsys, "production", "cleanup", "--dry-run", "--json")
    assert status == cli.EXIT_OK, err
    data = json.loads(out)
    assert (data["dry_run"], data["rows"], data["total"]) == (True, PAST, 11)
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
            "outbound_messages=1 security_events=0 execution_entity=7 quarantine=1 duration=" in calls[audit][-1])


QUARANTINE_VARIABLES = {"channel": "whatsapp", "sender": "33612345678", "reason": "insults",
                        "created_by": str(Actor.current()), "seconds": "604800"}
ENTRY = {"channel": "whatsapp", "sender": "33612345678", "reason": "insults", "created_at": "2026-12-01T10:00:00+00:00",
         "created_by": "ops@laptop", "expires_at": "2026-12-08T10:00:00+00:00"}


def test_quarantine_add_writes_under_the_lock_with_psql_variables_and_audits(capsys, host):
    write = tuple(commands.database_read(commands.QUARANTINE_ADD_SQL, QUARANTINE_VARIABLES))
    host.on(lambda argv: tuple(argv) == write, out=json.dumps([{**ENTRY, "added": True}]))
    status, out, err = run(capsys, "production", "quarantine", "add", "whatsapp", "33612345678", "--for", "7d",
                           "--reason", "insults", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", **ENTRY, "added": True}
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    assert mkdir < calls.index(write) < audit < calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert (" quarantine add whatsapp 33612345678 release=v7-abc by=" in calls[audit][-1]
            and "result=ok added expires_at=2026-12-08T10:00:00+00:00" in calls[audit][-1])
    # Values travel as psql variables, never inside the SQL text.
    assert "33612345678" not in commands.QUARANTINE_ADD_SQL and "--set=sender=33612345678" in write


def test_quarantine_add_without_for_is_until_removed_and_says_when_it_replaced_an_entry(capsys, host):
    variables = {**QUARANTINE_VARIABLES, "sender": "6543210987654321", "channel": "messenger", "reason": "",
                 "seconds": ""}
    write = tuple(commands.database_read(commands.QUARANTINE_ADD_SQL, variables))
    host.on(lambda argv: tuple(argv) == write,
            out=json.dumps([{**ENTRY, "channel": "messenger", "sender": "6543210987654321", "reason": None,
                             "expires_at": None, "added": False}]))
    status, out, err = run(capsys, "production", "quarantine", "add", "messenger", "6543210987654321")
    assert status == cli.EXIT_OK, err
    assert "messenger 6543210987654321: quarantined until removed (entry replaced;" in out
    assert "result=ok replaced expires_at=None" in [argv for argv in host.remote.calls if LAYOUT.audit_log in argv][0][-1]


def test_quarantine_add_under_a_held_lock_refuses_with_exit_4_and_writes_nothing(capsys, host):
    host.on(lambda argv: list(argv) == commands.make_directory(LAYOUT.lock_dir), status=1, err="File exists")
    status, _, err = run(capsys, "production", "quarantine", "add", "whatsapp", "33612345678")
    assert status == cli.EXIT_LOCKED, err
    assert not [argv for argv in host.remote.calls if "psql" in " ".join(argv)]


def test_quarantine_list_json_takes_no_lock(capsys, host):
    rows = [{**ENTRY, "expired": False, "dropped": 3}, {**ENTRY, "sender": "33600000001", "expired": True, "dropped": 0}]
    host.on(lambda argv: argv == commands.database_read(commands.QUARANTINE_LIST_SQL), out=json.dumps(rows))
    status, out, err = run(capsys, "production", "quarantine", "list", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", "entries": rows}
    assert [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv] == []
    status, out, _ = run(capsys, "production", "quarantine", "list")
    assert "33612345678" in out and "insults" in out and "yes" in out


@pytest.mark.parametrize(("deleted", "said", "result"), [
    ([ENTRY], "whatsapp 33612345678: no longer quarantined", "result=ok removed"),
    ([], "whatsapp 33612345678: was not quarantined; nothing changed", "result=ok not quarantined"),
])
def test_quarantine_remove_deletes_under_the_lock_and_an_absent_entry_is_exit_0(capsys, host, deleted, said, result):
    delete = tuple(commands.database_read(commands.QUARANTINE_REMOVE_SQL,
                                          {"channel": "whatsapp", "sender": "33612345678"}))
    host.on(lambda argv: tuple(argv) == delete, out=json.dumps(deleted))
    status, out, err = run(capsys, "production", "quarantine", "remove", "whatsapp", "33612345678")
    assert status == cli.EXIT_OK, err
    assert said in out
    calls = host.remote.calls
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    assert calls.index(tuple(commands.make_directory(LAYOUT.lock_dir))) < calls.index(delete) < audit
    assert " quarantine remove whatsapp 33612345678 release=v7-abc" in calls[audit][-1] and result in calls[audit][-1]


def test_cleanup_sql_deletes_only_past_the_retention_variables():
    assert commands.CLEANUP_SQL.count("DELETE FROM") == 5
    for table, rows in commands.PAST_RETENTION.items():
        assert f"gone_{table} AS (DELETE {rows} RETURNING 1)" in commands.CLEANUP_SQL
        assert f"'{table}', (SELECT count(*) {rows})" in commands.CLEANUP_COUNT_SQL
    assert '"stoppedAt" < now() - make_interval(hours => (:\'executions_hours\')::int)' in commands.CLEANUP_SQL
    assert "FROM quarantine WHERE expires_at < now() - make_interval(days => (:'security_days')::int)" \
        in commands.CLEANUP_SQL  # never an entry without expiry, never one still in force


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
    with pytest.raises(ValueError, match="name the services"):
        commands.compose_service_action("/opt/resto/current", "stop")


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
               ["db", "size"], ["backup", "list"]]


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


# --- backups: backup list (read), backup verify (read, a scratch database), backup now (lock, audit) -------

BACKUPS = "/opt/resto/backups"
SCHEDULED = f"{BACKUPS}/scheduled"
NOW = 1_796_169_600  # 2026-12-02T00:00:00Z
ROWS = {"inbound_messages": 12, "outbound_messages": 9, "security_events": 3, "api_clients": 1,
        "schema_migrations": 7}
LISTING = f"""now {NOW}
dump {NOW - 7200} 2048 600 {BACKUPS}/before-restore-20261201T220000Z.dump
dump {NOW - 86_400} 1048576 600 {BACKUPS}/before-e2e-base-1a2b3c4d.dump
meta {{"applied_migrations": ["0001_init.sql"], "before_release": "e2e-base-1a2b3c4d"}}
dump {NOW - 600} 4096 600 {SCHEDULED}/resto-20261201T235000Z.dump
meta {{"container": "resto-postgres-1", "size": 4096, "tables": {json.dumps(ROWS)}}}
dump {NOW - 30} 100 600 {SCHEDULED}/resto-20261201T235930Z.partial.dump
dump {NOW - 172_800} 3000 644 {SCHEDULED}/resto-20261130T031700Z.dump
"""


def backups_on_the_host(host, listing: str = LISTING) -> None:
    host.on(lambda argv: argv == commands.backups_listed(BACKUPS, SCHEDULED), out=listing)


def test_backups_listed_reads_both_directories_in_one_command():
    assert commands.backups_listed(BACKUPS, SCHEDULED) == ["sh", "-c", commands.BACKUPS_LISTED_SCRIPT, BACKUPS,
                                                           SCHEDULED]
    assert 'for f in "$0"/*.dump "$1"/*.dump' in commands.BACKUPS_LISTED_SCRIPT
    assert 'for m in "${f%.dump}.json" "$f.json"' in commands.BACKUPS_LISTED_SCRIPT


def test_backup_verified_runs_the_installed_script_with_the_dump_if_any():
    assert commands.backup_verified("/opt/resto/bin/backup-verify") == ["/opt/resto/bin/backup-verify"]
    assert commands.backup_verified("/opt/resto/bin/backup-verify", f"{SCHEDULED}/resto-x.dump") == [
        "/opt/resto/bin/backup-verify", f"{SCHEDULED}/resto-x.dump"]


def test_parse_backups_names_each_kind_newest_first_with_age_mode_and_rows():
    dumps = cli.parse_backups(LISTING.splitlines(), BACKUPS, SCHEDULED)

    assert [(d["kind"], d["path"].rsplit("/", 1)[-1], d["age_seconds"]) for d in dumps] == [
        ("partial", "resto-20261201T235930Z.partial.dump", 30),
        ("scheduled", "resto-20261201T235000Z.dump", 600),
        ("safety", "before-restore-20261201T220000Z.dump", 7200),
        ("pre-deploy", "before-e2e-base-1a2b3c4d.dump", 86_400),
        ("scheduled", "resto-20261130T031700Z.dump", 172_800),
    ]
    assert dumps[1] == {"kind": "scheduled", "release": None, "path": f"{SCHEDULED}/resto-20261201T235000Z.dump",
                        "size": 4096, "created_at": "2026-12-01T23:50:00Z", "mode": "0600", "mode_ok": True,
                        "complete": True, "rows": ROWS, "age_seconds": 600}
    assert (dumps[3]["release"], dumps[3]["complete"], dumps[3]["rows"]) == ("e2e-base-1a2b3c4d", None, None)
    assert (dumps[4]["mode"], dumps[4]["mode_ok"], dumps[4]["complete"]) == ("0644", False, False)


def test_parse_backups_of_an_empty_host():
    assert cli.parse_backups([f"now {NOW}"], BACKUPS, SCHEDULED) == []


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                            (1_572_864, "1.5 MiB"), (3 * 1024**3, "3.0 GiB")])
def test_human_size(size, text):
    assert cli.human_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (59, "59 s"), (60, "1 min"), (7199, "1 h"),
                                               (86_400, "1 d")])
def test_human_age(seconds, text):
    assert cli.human_age(seconds) == text


def no_change(host) -> list[tuple[str, ...]]:
    return [argv for argv in host.remote.calls if argv[0] in ("mkdir", "rm") or LAYOUT.audit_log in argv]


def test_backup_list_json_lists_every_dump_and_takes_no_lock(capsys, host):
    backups_on_the_host(host)
    status, out, err = run(capsys, "production", "backup", "list", "--json")
    assert status == cli.EXIT_OK, err
    data = json.loads(out)
    assert data["stage"] == "production"
    assert data["backups"] == cli.parse_backups(LISTING.splitlines(), BACKUPS, SCHEDULED)
    assert no_change(host) == []


def test_backup_list_for_a_human_flags_a_mode_other_than_0600_and_an_incomplete_backup(capsys, host):
    backups_on_the_host(host)
    status, out, _ = run(capsys, "production", "backup", "list")
    assert status == cli.EXIT_OK
    assert "0644 (not 0600)" in out and "scheduled (incomplete)" in out and "pre-deploy e2e-base-1a2b3c4d" in out
    assert "inbound_messages=12" in out


def test_backup_list_of_a_host_without_dumps_says_how_to_take_one(capsys, host):
    backups_on_the_host(host, f"now {NOW}\n")
    status, out, _ = run(capsys, "production", "backup", "list")
    assert status == cli.EXIT_OK
    assert "no dump in /opt/resto/backups: take one with resto production backup now" in out


VERIFY = "/opt/resto/bin/backup-verify"
REPORT = {"ok": True, "dump": f"{SCHEDULED}/resto-20261201T235000Z.dump", "age_seconds": 600,
          "restore_seconds": 1.5, "tables": {table: [count, count] for table, count in ROWS.items()}}


def verify_answers(host, report: dict, status: int = 0) -> None:
    host.on(lambda argv: argv[0] == VERIFY, status=status, out=json.dumps(report) + "\n")


def test_backup_verify_runs_the_hosts_script_on_the_newest_and_reports_its_counts(capsys, host):
    verify_answers(host, REPORT)
    status, out, err = run(capsys, "production", "backup", "verify", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", **REPORT}
    assert [argv for argv in host.remote.calls if argv[0] == VERIFY] == [(VERIFY,)]
    assert no_change(host) == []


@pytest.mark.parametrize("named", [f"{SCHEDULED}/resto-20261201T235000Z.dump", "resto-20261201T235000Z.dump"])
def test_backup_verify_of_a_listed_scheduled_dump_hands_its_path_to_the_script(capsys, host, named):
    backups_on_the_host(host)
    verify_answers(host, REPORT)
    status, out, err = run(capsys, "production", "backup", "verify", named)
    assert status == cli.EXIT_OK, err
    assert [argv for argv in host.remote.calls if argv[0] == VERIFY] == [(VERIFY, REPORT["dump"])]
    assert "ok: restored in 1.5 s, every count matches (the backup is 10 min old)" in out


def test_backup_verify_exits_1_with_the_reports_error(capsys, host):
    failed = {**REPORT, "ok": False, "error": "pg_restore of x failed: bad archive",
              "tables": {"api_clients": [1, None]}}
    verify_answers(host, failed, status=1)
    status, out, _ = run(capsys, "production", "backup", "verify")
    assert status == cli.EXIT_FAILED
    assert "FAILED: pg_restore of x failed: bad archive" in out


def test_backup_verify_without_a_report_exits_1_with_the_scripts_error(capsys, host):
    host.on(lambda argv: argv[0] == VERIFY, status=127, err="sh: 1: /opt/resto/bin/backup-verify: not found")
    status, out, err = run(capsys, "production", "backup", "verify")
    assert (status, out) == (cli.EXIT_FAILED, "")
    assert "backup-verify failed on the host (exit 127):\nsh: 1: /opt/resto/bin/backup-verify: not found" in err


@pytest.mark.parametrize(("named", "message"), [
    ("/tmp/evil.dump", "FILE: /tmp/evil.dump is not one of the host's dumps; nothing was run. "
                       "List them with: resto production backup list"),
    ("resto-20991231T000000Z.dump", "FILE: resto-20991231T000000Z.dump is not one of the host's dumps"),
    ("before-e2e-base-1a2b3c4d.dump", f"FILE: {BACKUPS}/before-e2e-base-1a2b3c4d.dump is a pre-deploy dump: verify "
                                      "compares the row counts recorded with the complete scheduled backups only"),
    ("before-restore-20261201T220000Z.dump", "is a safety dump: verify compares"),
    ("resto-20261130T031700Z.dump", "is an incomplete scheduled dump (no metadata)"),
    ("resto-20261201T235930Z.partial.dump", "is a partial dump"),
])
def test_backup_verify_refuses_a_file_it_cannot_check_before_anything_runs(capsys, host, named, message):
    backups_on_the_host(host)
    status, out, err = run(capsys, "production", "backup", "verify", named)
    assert (status, out) == (cli.EXIT_USAGE, "")
    assert message in err
    assert [argv for argv in host.remote.calls if argv[0] == VERIFY] == []
    assert no_change(host) == []


SCRIPT = "/opt/resto/bin/backup"
TAKEN = f"{SCHEDULED}/resto-20261202T000000Z.dump"
METADATA = {"container": "resto-postgres-1", "created_at": "2026-12-02T00:00:00Z", "dump": TAKEN,
            "format": "pg_dump -Fc + pg_dumpall --globals-only", "globals": TAKEN.replace(".dump", ".globals.sql"),
            "sha256": "ab" * 32, "size": 4096, "tables": ROWS}


def test_backup_now_runs_the_script_under_the_lock_audits_and_prints_the_dump(capsys, host):
    host.on(lambda argv: argv == [SCRIPT], out=f"{TAKEN}\n")
    host.on(lambda argv: argv == commands.read_file(TAKEN.replace(".dump", ".json")), out=json.dumps(METADATA))
    status, out, err = run(capsys, "production", "backup", "now", "--json")
    assert status == cli.EXIT_OK, err
    assert json.loads(out) == {"stage": "production", "dump": TAKEN, "size": 4096,
                               "created_at": "2026-12-02T00:00:00Z", "sha256": "ab" * 32, "rows": ROWS}
    calls = host.remote.calls
    mkdir = calls.index(tuple(commands.make_directory(LAYOUT.lock_dir)))
    audit = next(i for i, argv in enumerate(calls) if argv[-2:-1] == (LAYOUT.audit_log,))
    assert mkdir < calls.index((SCRIPT,)) < audit < calls.index(tuple(commands.remove_tree(LAYOUT.lock_dir)))
    assert " backup now release=v7-abc by=" in calls[audit][-1]
    assert f"result=ok dump={TAKEN} size=4096 duration=" in calls[audit][-1]


def test_backup_now_for_a_human_names_the_dump_its_size_and_rows(capsys, host):
    host.on(lambda argv: argv == [SCRIPT], out=f"{TAKEN}\n")
    host.on(lambda argv: argv == commands.read_file(TAKEN.replace(".dump", ".json")), out=json.dumps(METADATA))
    status, out, _ = run(capsys, "production", "backup", "now")
    assert status == cli.EXIT_OK
    assert out.splitlines() == [f"wrote {TAKEN} (4.0 KiB, 4096 bytes)",
                                "rows: " + " ".join(f"{table}={count}" for table, count in ROWS.items()),
                                f"recorded in {LAYOUT.audit_log}"]


def test_a_failing_backup_exits_1_with_the_scripts_error_audited_and_the_lock_released(capsys, host):
    host.on(lambda argv: argv == [SCRIPT], status=1,
            err="backup: another backup is running (lock /opt/resto/backups/scheduled/.lock held); wait for it to finish\n")
    status, out, err = run(capsys, "production", "backup", "now")
    assert (status, out) == (cli.EXIT_FAILED, "")
    assert "the backup failed on the host (exit 1):\nbackup: another backup is running" in err
    [audit] = [argv for argv in host.remote.calls if LAYOUT.audit_log in argv]
    assert "backup now release=v7-abc" in audit[-1] and "result=failed: the backup failed on the host (exit 1):" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))


def test_backup_now_under_a_held_lock_refuses_with_exit_4_and_runs_nothing(capsys, host):
    host.on(lambda argv: list(argv) == commands.make_directory(LAYOUT.lock_dir), status=1, err="File exists")
    status, _, err = run(capsys, "production", "backup", "now")
    assert status == cli.EXIT_LOCKED
    assert (SCRIPT,) not in host.remote.calls
    assert [argv for argv in host.remote.calls if LAYOUT.audit_log in argv] == []


# --- smoke --meta: the checklist's Meta items ------------------------------------------------


def meta_rows(*outcomes: str) -> list:
    from restobot.golive import Row
    names = ("meta: verify handshake answers the challenge [whatsapp]", "meta: bad signature is refused and recorded",
             "meta: meta webhook subscription is confirmed [instagram]")
    return [Row(name, outcome, "why") for name, outcome in zip(names, outcomes)]


@pytest.fixture
def checklist(monkeypatch, with_secrets):
    """golive.run_checklist replaced: records what it was asked and returns ``checklist.rows``."""
    from restobot import golive

    class Checklist:
        rows: list = []
        asked: list = []

    def run_checklist(inventory, **options):
        Checklist.asked.append((inventory, options))
        if isinstance(Checklist.rows, Exception):
            raise Checklist.rows
        return Checklist.rows

    monkeypatch.setattr(golive, "run_checklist", run_checklist)
    Checklist.asked = []
    return Checklist


def test_smoke_meta_runs_only_the_checklists_meta_module_of_the_stage(capsys, checklist, no_connection):
    checklist.rows = meta_rows("pass", "pass", "manual")
    status, out, _ = run(capsys, "production", "smoke", "--meta", "--json")
    assert status == cli.EXIT_OK
    (inventory, options), = checklist.asked
    assert inventory.name == "production.py" and options["modules"] == ["test_meta.py"]
    data = json.loads(out)
    assert data["failed"] == [] and data["manual"] == ["meta: meta webhook subscription is confirmed [instagram]"]
    assert data["items"][0]["outcome"] == "pass"


@pytest.mark.parametrize("outcome", ["FAIL", "ERROR", "skip"])
def test_smoke_meta_exits_1_when_an_item_does_not_pass(capsys, checklist, no_connection, outcome):
    checklist.rows = meta_rows("pass", outcome)
    status, out, _ = run(capsys, "production", "smoke", "--meta")
    assert status == cli.EXIT_FAILED
    assert "meta: bad signature is refused and recorded" in out and outcome in out


def test_smoke_meta_says_why_when_the_checklist_did_not_run(capsys, checklist, no_connection):
    from restobot.golive import ChecklistNotRun
    checklist.rows = ChecklistNotRun("the checks did not run (pytest exited 4): python -m pytest ...")
    status, _, err = run(capsys, "production", "smoke", "--meta")
    assert status == cli.EXIT_FAILED and "the checks did not run (pytest exited 4)" in err


# --- stop --all / start --all: the runbook's down and up -d -----------------------------------------


def stack_containers(*services: str, state: str = "running") -> str:
    return "".join(json.dumps({**CONTAINER, "service": service, "name": f"/resto-{service}-1", "state": state,
                               "health": "healthy" if state == "running" else None}) + "\n"
                   for service in services)


@pytest.mark.parametrize("argv", [["stop"], ["start"], ["stop", "nginx", "--all"], ["start", "redis", "--all"]])
def test_stop_or_start_needs_one_service_or_all_and_connects_nowhere(capsys, no_connection, argv):
    status, _, err = run(capsys, "production", *argv)
    assert status == cli.EXIT_USAGE
    assert "give one SERVICE or --all" in err


def test_stop_all_stops_every_service_the_release_runs_but_the_one_shot_migrations(capsys, host):
    host.on(lambda argv: argv == commands.project_containers_inspected(),
            out=stack_containers("db-migrate", "nginx", "postgres", "prometheus", "traefik", state="exited"))
    status, out, err = run(capsys, "production", "stop", "--all")
    assert status == cli.EXIT_OK, err
    stop = tuple(commands.compose_service_action(LAYOUT.current, "stop", "postgres", "nginx", "traefik", "prometheus"))
    assert stop in host.remote.calls
    audit = next(argv for argv in host.remote.calls if LAYOUT.audit_log in argv)
    assert " stop postgres nginx traefik prometheus release=v7-abc" in audit[-1] and "result=ok" in audit[-1]
    assert "postgres nginx traefik prometheus: stopped" in out


def test_start_all_waits_until_every_service_is_healthy_and_audits_their_start_times(capsys, host):
    host.on(lambda argv: argv == commands.project_containers_inspected(), out=stack_containers("postgres", "redis"))
    status, out, err = run(capsys, "production", "start", "--all")
    assert status == cli.EXIT_OK, err
    calls = host.remote.calls
    start = calls.index(tuple(commands.compose_service_action(LAYOUT.current, "start", "postgres", "redis")))
    audit = next(i for i, argv in enumerate(calls) if LAYOUT.audit_log in argv)
    assert start < audit
    assert "result=ok postgres.started_at=2026-12-01T10:00:00.1Z redis.started_at=" in calls[audit][-1]
    assert "postgres redis: running healthy" in out


# --- workflow history / rollback ---------------------------------------------------------------------

W2 = "W2_INBOUND_PROCESS"
VERSIONS = (f"1764633600 {'a' * 64} v6-old\n"
            f"1764720000 {'b' * 64} v7-abc\n"
            f"1764680000 {'b' * 64} v6-fix\n")
ROLLBACK_SCRATCH = f"{LAYOUT.state_dir}/workflow-rollback"


def with_versions(host, out=VERSIONS):
    host.on(lambda argv: argv == commands.workflow_versions(LAYOUT.releases_dir, W2), out=out)


def test_workflow_history_lists_each_releases_version_newest_first(capsys, host):
    with_versions(host)
    status, out, _ = run(capsys, "production", "workflow", "history", W2, "--json")
    assert status == cli.EXIT_OK
    data = json.loads(out)
    assert data["current"] == "v7-abc"
    assert [(v["release"], v["current"], v["same_as_current"]) for v in data["versions"]] == [
        ("v7-abc", True, True), ("v6-fix", False, True), ("v6-old", False, False)]
    assert data["versions"][0]["created_at"] == "2025-12-03T00:00:00Z"
    assert not [argv for argv in host.remote.calls if argv[0] == "mkdir"]  # a read: no lock


@pytest.mark.parametrize(("argv", "named"), [
    (["workflow", "history", "W2; rm -rf /"], "NAME: 'W2; rm -rf /' is not a workflow file name"),
    (["workflow", "history", "W7_NOPE"], "NAME: the current release v7-abc has no workflows/W7_NOPE.json"),
    (["workflow", "rollback", W2, "--to", "v5"], "--to: no release 'v5' on the host holds workflows/W2_INBOUND_PROCESS.json"),
])
def test_a_bad_workflow_or_release_exits_2_and_changes_nothing(capsys, host, argv, named):
    with_versions(host)
    status, _, err = run(capsys, "production", *argv)
    assert status == cli.EXIT_USAGE and named in err, err
    calls = host.remote.calls if host.remote else []  # a malformed NAME is refused before connecting
    assert not [c for c in calls if c[0] in ("mkdir", "python3") or LAYOUT.audit_log in c]


def test_a_rollback_to_the_current_releases_file_puts_its_stamp_back(capsys, host):
    from restobot.release_archive import MANIFEST
    with_versions(host)
    host.on(lambda argv: argv == commands.read_file(f"{LAYOUT.current}/{MANIFEST}"),
            out=json.dumps({"name": "v7-abc", "stage": "production", "commit": None, "migrate_image": "m:1",
                            "images": {}, "workflows_sha256": "c" * 64, "config_sha256": "d", "migrations": []}))
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 3), out="PASS healthz answered ok\n")
    status, out, err = run(capsys, "production", "workflow", "rollback", W2, "--to", "v7-abc")
    assert status == cli.EXIT_OK, err
    assert tuple(commands.write_file(LAYOUT.workflows_stamp, "c" * 64 + "\n")) in host.remote.calls
    assert "the release's workflows are all live again" in out


def test_a_rollback_imports_that_one_file_under_the_lock_then_smoke_checks_and_audits(capsys, host):
    with_versions(host)
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 3), out="PASS healthz answered ok\n")
    status, out, err = run(capsys, "production", "workflow", "rollback", W2, "--to", "v6-old", "--json")
    assert status == cli.EXIT_OK, err
    calls = host.remote.calls
    steps = [calls.index(tuple(argv)) for argv in (
        commands.make_directory(LAYOUT.lock_dir),
        commands.workflows_with_one_from(ROLLBACK_SCRATCH, f"{LAYOUT.current}/workflows",
                                         f"{LAYOUT.releases_dir}/v6-old/workflows/{W2}.json"),
        commands.workflow_import(LAYOUT.current, ROLLBACK_SCRATCH),
        commands.write_file(LAYOUT.workflows_stamp, f"{W2} rolled back to v6-old\n"),
        commands.smoke_checks(LAYOUT.current, 3),
        commands.remove_tree(LAYOUT.lock_dir))]
    assert steps == sorted(steps)
    audit = next(argv for argv in calls if LAYOUT.audit_log in argv)
    assert f"workflow rollback {W2} release=v7-abc" in audit[-1] and f"result=ok {W2}=v6-old sha256=aaaaaaaaaaaa" in audit[-1]
    data = json.loads(out)
    assert (data["back_to_the_release"], data["to"], data["smoke"][0]["passed"]) == (False, "v6-old", True)


def test_a_rollback_whose_smoke_checks_fail_exits_1_and_says_how_to_go_back(capsys, host):
    with_versions(host)
    host.on(lambda argv: argv == commands.smoke_checks(LAYOUT.current, 3), out="FAIL healthz answered 502\n")
    status, _, err = run(capsys, "production", "workflow", "rollback", W2, "--to", "v6-old")
    assert status == cli.EXIT_FAILED
    assert f"resto production workflow rollback {W2} --to v7-abc" in err
    audit = next(argv for argv in host.remote.calls if LAYOUT.audit_log in argv)
    assert "result=failed:" in audit[-1]
    assert host.remote.calls[-1] == tuple(commands.remove_tree(LAYOUT.lock_dir))

# --- restore FILE|latest: resolved and checked before anything changes, then lock, safety dump, restore ------

NEWEST_SCHEDULED = f"{SCHEDULED}/resto-20261201T235000Z.dump"
SAFETY_LISTED = f"{BACKUPS}/before-restore-20261201T220000Z.dump"
PREDEPLOY = f"{BACKUPS}/before-e2e-base-1a2b3c4d.dump"
DUMPS = cli.parse_backups(LISTING.splitlines(), BACKUPS, SCHEDULED)
ARCHIVE_HEADER = ";\n; Archive created at 2026-12-01 23:50:00 UTC\n;     dbname: n8n\n217; 1259 16385 TABLE public x n8n\n"
ROWS_NOW = "inbound_messages\t14\noutbound_messages\t9\n"
ROWS_AFTER = "inbound_messages\t12\noutbound_messages\t9\n"
SMOKE_PASSED = "PASS healthz 200\nPASS verify-whatsapp 200\nPASS console 200\n"
DATABASE = ("n8n", "n8n")


@pytest.mark.parametrize(("file", "path"), [
    ("latest", NEWEST_SCHEDULED),
    ("resto-20261201T235000Z.dump", NEWEST_SCHEDULED),
    (NEWEST_SCHEDULED, NEWEST_SCHEDULED),
    ("before-e2e-base-1a2b3c4d.dump", PREDEPLOY),
    (SAFETY_LISTED, SAFETY_LISTED),
])
def test_restore_resolves_latest_and_any_listed_dump_by_name_or_path(file, path):
    assert cli.restorable_dump(DUMPS, file, "production")["path"] == path


@pytest.mark.parametrize(("file", "message"), [
    ("/tmp/evil.dump", "FILE: /tmp/evil.dump is not one of the host's dumps; nothing changed. "
                       "List them with: resto production backup list"),
    (f"{BACKUPS}/scheduled/../before-e2e-base-1a2b3c4d.dump", "is not one of the host's dumps; nothing changed"),
    ("/etc/passwd", "FILE: /etc/passwd is not one of the host's dumps"),
    ("resto-20991231T000000Z.dump", "FILE: resto-20991231T000000Z.dump is not one of the host's dumps"),
    ("resto-20261201T235930Z.partial.dump", f"FILE: {SCHEDULED}/resto-20261201T235930Z.partial.dump is a partial "
                                            "dump: restore takes a complete scheduled backup, a before-RELEASE dump "
                                            "or a before-restore safety dump; nothing changed. Choose one in: "
                                            "resto production backup list"),
    ("resto-20261130T031700Z.dump", "is an incomplete scheduled dump (no metadata: bin/backup did not finish it)"),
    ("LATEST", "FILE: LATEST is not one of the host's dumps"),
])
def test_restore_refuses_a_file_that_is_not_a_restorable_dump(file, message):
    with pytest.raises(cli.UsageProblem) as refused:
        cli.restorable_dump(DUMPS, file, "production")
    assert message in refused.value.format_message()


def test_restore_latest_without_a_complete_scheduled_backup_says_how_to_take_one():
    only_partial = [d for d in DUMPS if d["kind"] != "scheduled" or not d["complete"]]
    with pytest.raises(cli.UsageProblem) as refused:
        cli.restorable_dump(only_partial, "latest", "production")
    assert refused.value.format_message() == (
        "FILE: latest: the host holds no complete scheduled backup; nothing changed. Take one with: "
        "resto production backup now, or name a dump of: resto production backup list")


@pytest.mark.parametrize(("created", "age"), [("2026-12-01 23:50:00 UTC", 600), ("2026-12-01 23:50:00 GMT", 600),
                                              ("2026-12-02 00:00:05 UTC", 0), ("2026-12-01 23:50:00 CET", None),
                                              ("at an unknown time", None)])
def test_archive_age_reads_pg_restores_header_in_utc(created, age):
    assert cli.archive_age(created, cli.datetime(2026, 12, 2, tzinfo=cli.timezone.utc)) == age


def test_parse_row_counts():
    assert cli.parse_row_counts(["inbound_messages\t14", "outbound_messages\t9", "", "noise"]) == {
        "inbound_messages": 14, "outbound_messages": 9}


def test_what_is_lost_names_the_dump_its_age_and_the_rows_now_against_those_recorded():
    scheduled = next(d for d in DUMPS if d["path"] == NEWEST_SCHEDULED)
    assert cli.what_is_lost(scheduled, "2026-12-01 23:50:00 UTC", 3720,
                            {"inbound_messages": 14, "outbound_messages": 9}) == [
        f"restore {NEWEST_SCHEDULED} (scheduled) into the live database:",
        "  made 2026-12-01 23:50:00 UTC, 1 h 2 min ago",
        "  inbound_messages: 14 rows now (the dump holds 12)",
        "  outbound_messages: 9 rows now (the dump holds 9)",
        "  every row written since the dump was made is lost (kept only in the safety dump taken first)",
    ]
    predeploy = next(d for d in DUMPS if d["path"] == PREDEPLOY)
    assert cli.what_is_lost(predeploy, "x", 40, {"inbound_messages": 14})[2] == "  inbound_messages: 14 rows now"


def test_old_safety_dumps_keeps_the_newest_two_and_the_restored_one():
    dumps = [{"kind": "safety", "path": f"s{i}"} for i in range(5)] + [{"kind": "scheduled", "path": "x"}]
    assert cli.old_safety_dumps(dumps, keep="s3") == ["s2", "s4"]
    assert cli.old_safety_dumps(dumps[:2], keep="x") == []


@pytest.fixture
def restorable(host, monkeypatch):
    """The host of LISTING: its dumps readable by pg_restore, n8n healthy after its start, smoke passing.
    The safety dump's stamp is fixed; the rows counted are ROWS_NOW before the restore, ROWS_AFTER after."""
    monkeypatch.setattr("restobot.operations.database.safety_stamp", lambda: "20261202T000000Z")
    backups_on_the_host(host)
    host.on(lambda argv: argv[:2] == ["sh", "-c"] and "pg_restore --list" in argv[2], out=ARCHIVE_HEADER)
    counts = iter([ROWS_NOW, ROWS_AFTER])
    original = host.answer

    def counted(argv):
        return (0, next(counts), "") if commands.ROW_COUNTS_SQL in argv else original(argv)

    host.answer = counted
    healthy = [{**CONTAINER, "service": s, "name": f"/resto-{s}-1"} for s in commands.N8N_SERVICES]
    host.on(lambda argv: argv == commands.project_containers_inspected(),
            out="\n".join(json.dumps(c) for c in healthy))
    host.on(lambda argv: argv[0] == f"{LAYOUT.current}/bin/smoke", out=SMOKE_PASSED)
    return host


SAFETY = f"{BACKUPS}/before-restore-20261202T000000Z.dump"


def steps(calls) -> list[str]:
    """The changes of a restore, in order, by what each command is."""
    named = {tuple(commands.make_directory(LAYOUT.lock_dir)): "lock",
             tuple(commands.n8n_stopped(LAYOUT.current)): "stop n8n",
             tuple(commands.n8n_started_again()): "start n8n",
             tuple(commands.remove_tree(LAYOUT.lock_dir)): "unlock"}
    for dump, name in ((NEWEST_SCHEDULED, "restore"), (SAFETY, "put back"), (PREDEPLOY, "restore")):
        drop, create, fed, analyze = map(tuple, commands.database_replaced(LAYOUT.current, dump, *DATABASE))
        named |= {drop: "drop database", fed: f"{name}: {dump.rsplit('/', 1)[-1]}"}
    named[tuple(commands.dump_to_file(commands.POSTGRES_CONTAINER, commands.pg_dump(), SAFETY))] = "safety dump"
    named[tuple(commands.output_kept(LAYOUT.migration_log("v7-abc"),
                                     commands.compose_run_migrations(LAYOUT.current, "apply")))] = "migrations"
    named[tuple(commands.smoke_checks(LAYOUT.current, cli.RESTORE_SMOKE_ATTEMPTS))] = "smoke"
    named[tuple(commands.remove_file(SAFETY_LISTED))] = "prune"
    out = []
    for argv in calls:
        if argv in named:
            out.append(named[argv])
        elif LAYOUT.audit_log in argv:
            out.append("audit")
    return out


def test_restore_latest_takes_a_safety_dump_restores_migrates_starts_n8n_and_smokes_in_order(capsys, restorable):
    status, out, err = run(capsys, "production", "restore", "latest", "--yes", "--json")
    assert status == cli.EXIT_OK, err
    assert steps(restorable.remote.calls) == [
        "lock", "stop n8n", "safety dump", "drop database", "restore: resto-20261201T235000Z.dump", "migrations",
        "start n8n", "smoke", "audit", "unlock"]
    data = json.loads(out)
    assert {k: data[k] for k in ("restored", "kind", "dump_created", "safety_dump", "rows_before", "rows_after",
                                 "pruned_safety_dumps")} == {
        "restored": NEWEST_SCHEDULED, "kind": "scheduled", "dump_created": "2026-12-01 23:50:00 UTC",
        "safety_dump": SAFETY, "rows_before": {"inbound_messages": 14, "outbound_messages": 9},
        "rows_after": {"inbound_messages": 12, "outbound_messages": 9}, "pruned_safety_dumps": []}
    assert [c["name"] for c in data["smoke"] if c["passed"]] == ["healthz", "verify-whatsapp", "console"]
    assert "inbound_messages: 14 rows now (the dump holds 12)" in err  # the preview, on stderr under --json
    [audit] = [argv for argv in restorable.remote.calls if LAYOUT.audit_log in argv]
    assert f" restore {NEWEST_SCHEDULED} release=v7-abc by=" in audit[-1]
    assert f"result=ok restored={NEWEST_SCHEDULED} safety={SAFETY} duration=" in audit[-1]


def test_restore_prunes_the_safety_dumps_past_the_newest_three(capsys, restorable):
    older = "".join(f"dump {NOW - 9000 - i} 10 600 {BACKUPS}/before-restore-2026112{9 - i}T000000Z.dump\n"
                    for i in range(2))
    backups_on_the_host(restorable, LISTING + older)
    status, _, err = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_OK, err
    removed = [argv for argv in restorable.remote.calls if argv[0] == "rm" and argv[-1].endswith(".dump")]
    assert removed == [tuple(commands.remove_file(f"{BACKUPS}/before-restore-20261128T000000Z.dump"))]


def test_restore_for_a_human_shows_what_is_lost_then_the_outcome(capsys, restorable):
    status, out, err = run(capsys, "production", "restore", "resto-20261201T235000Z.dump", "--yes")
    assert status == cli.EXIT_OK, err
    lines = out.splitlines()
    assert lines[:5] == [f"restore {NEWEST_SCHEDULED} (scheduled) into the live database:",
                         lines[1], "  inbound_messages: 14 rows now (the dump holds 12)",
                         "  outbound_messages: 9 rows now (the dump holds 9)",
                         "  every row written since the dump was made is lost (kept only in the safety dump taken first)"]
    assert lines[1].startswith("  made 2026-12-01 23:50:00 UTC, ")
    assert f"restored {NEWEST_SCHEDULED}; the database as it was is in {SAFETY}" in lines
    assert "rows: inbound_messages 14 -> 12, outbound_messages 9 -> 9" in lines


def nothing_changed(host) -> None:
    assert no_change(host) == []
    assert [argv for argv in host.remote.calls if argv[:2] == ("docker", "compose") and "stop" in argv] == []


@pytest.mark.parametrize("file", ["/tmp/evil.dump", "resto-20261201T235930Z.partial.dump", "nope.dump"])
def test_restore_of_a_bad_file_exits_2_before_reading_the_dump_and_changes_nothing(capsys, restorable, file):
    status, out, err = run(capsys, "production", "restore", file, "--yes")
    assert (status, out) == (cli.EXIT_USAGE, "")
    assert "FILE: " in err and "resto production backup list" in err
    assert not any("pg_restore --list" in " ".join(argv) for argv in restorable.remote.calls)
    nothing_changed(restorable)


def test_restore_of_a_dump_pg_restore_cannot_read_exits_2_and_changes_nothing(capsys, restorable):
    restorable.on(lambda argv: argv[:2] == ["sh", "-c"] and "pg_restore --list" in argv[2], status=1,
                  err="pg_restore: error: input file does not appear to be a valid archive")
    status, out, err = run(capsys, "production", "restore", "latest", "--yes")
    assert (status, out) == (cli.EXIT_USAGE, "")
    assert (f"FILE: {NEWEST_SCHEDULED} is not a dump pg_restore can read (pg_restore --list: pg_restore: error: "
            "input file does not appear to be a valid archive); nothing changed.") in err
    nothing_changed(restorable)


def test_restore_without_a_terminal_and_without_yes_refuses_with_exit_2_and_changes_nothing(capsys, restorable,
                                                                                             monkeypatch):
    monkeypatch.setattr(cli, "stdin_is_tty", lambda: False)
    status, out, err = run(capsys, "production", "restore", "latest")
    assert status == cli.EXIT_USAGE
    assert "there is no terminal to ask on; nothing changed. Run it in a terminal, or add --yes: " \
           f"resto production restore {NEWEST_SCHEDULED} --yes" in err
    assert "inbound_messages: 14 rows now" in out  # what would be lost was shown first
    nothing_changed(restorable)


@pytest.mark.parametrize(("answer", "status"), [("n\n", cli.EXIT_FAILED), ("\n", cli.EXIT_FAILED),
                                                ("y\n", cli.EXIT_OK)])
def test_restore_on_a_terminal_asks_and_only_a_yes_changes_the_database(capsys, restorable, monkeypatch, answer,
                                                                         status):
    import io

    monkeypatch.setattr(cli, "stdin_is_tty", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    code, _, err = run(capsys, "production", "restore", "latest")
    assert code == status, err
    assert "replace the live database with this dump? [y/N]" in err
    if status == cli.EXIT_OK:
        assert "restore: resto-20261201T235000Z.dump" in steps(restorable.remote.calls)
    else:
        assert "not confirmed; nothing changed" in err
        nothing_changed(restorable)


def failing(host, step: Sequence[str], err: str) -> None:
    host.on(lambda argv: list(argv) == list(step), status=1, err=err)


def test_a_failed_restore_puts_the_safety_dump_back_starts_n8n_and_names_the_state(capsys, restorable):
    failing(restorable, commands.restore_from_file(LAYOUT.current, NEWEST_SCHEDULED), "pg_restore: error: bad block")
    status, out, err = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_FAILED
    assert steps(restorable.remote.calls) == [
        "lock", "stop n8n", "safety dump", "drop database", "restore: resto-20261201T235000Z.dump",
        "drop database", f"put back: {SAFETY.rsplit('/', 1)[-1]}", "start n8n", "audit", "unlock"]
    assert f"the restore of {NEWEST_SCHEDULED} failed on the host (exit 1):\npg_restore: error: bad block" in err
    assert (f"the database was put back from the safety dump {SAFETY} and n8n started again: the data is as it "
            f"was before the restore of {NEWEST_SCHEDULED}") in err
    [audit] = [argv for argv in restorable.remote.calls if LAYOUT.audit_log in argv]
    assert f"result=failed: the restore of {NEWEST_SCHEDULED} failed on the host (exit 1):" in audit[-1]


def test_failed_migrations_after_the_restore_put_the_safety_dump_back_too(capsys, restorable):
    failing(restorable, commands.output_kept(LAYOUT.migration_log("v7-abc"),
                                             commands.compose_run_migrations(LAYOUT.current, "apply")),
            "0009_x.sql: syntax error")
    status, _, err = run(capsys, "production", "restore", "before-e2e-base-1a2b3c4d.dump", "--yes")
    assert status == cli.EXIT_FAILED
    assert steps(restorable.remote.calls) == [
        "lock", "stop n8n", "safety dump", "drop database", "restore: before-e2e-base-1a2b3c4d.dump", "migrations",
        "drop database", f"put back: {SAFETY.rsplit('/', 1)[-1]}", "start n8n", "audit", "unlock"]
    assert "the migrations after the restore failed on the host (exit 1):\n0009_x.sql: syntax error" in err
    assert f"the database was put back from the safety dump {SAFETY}" in err


def test_a_restore_whose_safety_dump_cannot_be_put_back_leaves_n8n_stopped_and_says_how_to_recover(capsys,
                                                                                                  restorable):
    failing(restorable, commands.restore_from_file(LAYOUT.current, NEWEST_SCHEDULED), "pg_restore: error: bad block")
    failing(restorable, commands.restore_from_file(LAYOUT.current, SAFETY), "pg_restore: error: disk full")
    status, _, err = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_FAILED
    assert "start n8n" not in steps(restorable.remote.calls)
    assert f"pg_restore: error: bad block\nputting back the safety dump {SAFETY} failed on the host (exit 1):\n" \
           "pg_restore: error: disk full\n" in err
    assert "n8n is left stopped (on an empty database it would create a new schema). Recreate the database n8n, " \
           f"restore {SAFETY} by hand (" in err
    assert "docker start resto-n8n-main-1 resto-n8n-worker-1" in err


def test_a_failed_safety_dump_drops_nothing_and_starts_n8n_again(capsys, restorable):
    failing(restorable, commands.dump_to_file(commands.POSTGRES_CONTAINER, commands.pg_dump(), SAFETY),
            "No space left on device")
    status, _, err = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_FAILED
    assert steps(restorable.remote.calls) == ["lock", "stop n8n", "safety dump", "start n8n", "audit", "unlock"]
    assert f"the safety dump {SAFETY} failed on the host (exit 1):\nNo space left on device" in err
    assert "nothing was dropped; n8n was started again" in err


def test_a_restore_whose_smoke_checks_fail_exits_1_naming_the_safety_dump(capsys, restorable):
    restorable.on(lambda argv: argv[0] == f"{LAYOUT.current}/bin/smoke", out="PASS healthz 200\nFAIL console 502\n")
    status, _, err = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_FAILED
    assert (f"{NEWEST_SCHEDULED} is restored and n8n runs healthy, but smoke checks failed: console; the database "
            f"as it was is in {SAFETY}") in err


def test_restore_under_a_held_lock_refuses_with_exit_4_and_changes_nothing(capsys, restorable):
    restorable.on(lambda argv: list(argv) == commands.make_directory(LAYOUT.lock_dir), status=1, err="File exists")
    status, _, _ = run(capsys, "production", "restore", "latest", "--yes")
    assert status == cli.EXIT_LOCKED
    assert steps(restorable.remote.calls) == ["lock"]
