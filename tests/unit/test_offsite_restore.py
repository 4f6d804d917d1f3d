"""``resto STAGE backup offsite restore``: what is decided before anything changes, and the host commands.

The restore itself (pgBackRest, PostgreSQL's recovery, n8n started again) runs in
tests/e2e/test_offsite_backup.py against the deployed local stack.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from restobot import cli, commands
from restobot.offsite_restore import (
    Target,
    TargetRefused,
    WRONG_PASSPHRASE,
    check_reachable,
    earliest_restorable,
    parse_target,
    recovery_finished,
    repository_problem,
    what_is_lost,
)

NOW = datetime(2026, 12, 2, 9, 0, 0, tzinfo=timezone.utc)
SUMMARY = {"stanza": "restobot", "status": "ok", "backups": [
    {"type": "full", "stopped": "2026-11-30T03:40:00Z"}, {"type": "incr", "stopped": "2026-12-01T03:38:00Z"}]}
RELEASE = "/opt/resto/current"


@pytest.mark.parametrize(("text", "expected"), [
    ("latest", None),
    ("2026-12-02T08:40:00Z", datetime(2026, 12, 2, 8, 40, tzinfo=timezone.utc)),
    ("2026-12-02T09:40:00+01:00", datetime(2026, 12, 2, 8, 40, tzinfo=timezone.utc)),
    ("2026-12-02T08:40:00.750Z", datetime(2026, 12, 2, 8, 40, tzinfo=timezone.utc)),
])
def test_the_target_is_latest_or_a_time_with_its_zone_read_in_utc(text, expected):
    assert parse_target(text, NOW) == Target(expected)


@pytest.mark.parametrize(("text", "reason"), [
    ("yesterday", "is neither 'latest' nor an ISO 8601 time"),
    ("2026-12-02T08:40:00", "has no time zone: write it in UTC with a Z"),
    ("2026-12-02T09:00:00Z", "is not in the past"),
    ("2026-12-03T08:00:00Z", "is not in the past"),
])
def test_a_target_that_is_not_a_past_time_with_its_zone_is_refused_saying_why(text, reason):
    with pytest.raises(TargetRefused, match=reason):
        parse_target(text, NOW)


def test_pgbackrest_is_told_a_time_target_in_utc_and_to_promote_there():
    assert Target(datetime(2026, 12, 2, 8, 40, tzinfo=timezone.utc)).pgbackrest_options == [
        "--type=time", "--target=2026-12-02 08:40:00+00", "--target-action=promote"]
    assert Target(None).pgbackrest_options == []


def test_the_earliest_point_is_when_the_oldest_backup_ended():
    assert earliest_restorable(SUMMARY) == datetime(2026, 11, 30, 3, 40, tzinfo=timezone.utc)
    assert earliest_restorable({"backups": []}) is None


@pytest.mark.parametrize(("summary", "target", "reason"), [
    ({**SUMMARY, "status": "other", "problem": "[HostConnectError] timeout"}, Target(None),
     "not readable: \\[HostConnectError\\] timeout \\(see resto STAGE backup offsite info\\)"),
    ({**SUMMARY, "backups": []}, Target(None), "holds no backup yet"),
    (SUMMARY, Target(datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)),
     "is before the oldest backup of the repository ended \\(2026-11-30T03:40:00Z\\)"),
])
def test_a_repository_that_cannot_reach_the_target_is_refused(summary, target, reason):
    with pytest.raises(TargetRefused, match=reason):
        check_reachable(target, summary)


def test_a_target_after_the_oldest_backup_or_the_end_of_the_archive_is_reachable():
    check_reachable(Target(datetime(2026, 11, 30, 3, 40, tzinfo=timezone.utc)), SUMMARY)
    check_reachable(Target(None), SUMMARY)


def test_what_is_lost_names_the_point_and_the_rows_now():
    lines = what_is_lost(Target(datetime(2026, 12, 2, 8, 40, tzinfo=timezone.utc)), {"inbound_messages": 14}, SUMMARY)
    assert lines == ["restore the live database from the off-site repository (restobot) to 2026-12-02T08:40:00Z:",
                     "  inbound_messages: 14 rows now",
                     "  every row written after 2026-12-02T08:40:00Z is lost",
                     "  (all of it stays in the safety dump taken first)"]


@pytest.mark.parametrize(("answer", "finished"), [(["f"], True), (["t"], False), ([], False), (["", "f", ""], True)])
def test_recovery_is_finished_once_postgres_answers_that_it_is_not_in_recovery(answer, finished):
    assert recovery_finished(answer) is finished


def test_pgbackrest_restores_from_a_one_off_container_of_the_service_as_postgres():
    assert commands.offsite_restore(RELEASE, "restobot", ["--type=time", "--target=x"]) == [
        *commands.compose(RELEASE, "run", "--rm", "--no-deps", "--no-TTY", "postgres"),
        "gosu", "postgres", "pgbackrest", "--stanza=restobot", "--delta", "--type=time", "--target=x", "restore"]


def test_the_way_back_empties_the_services_data_volume_only():
    assert commands.data_directory_emptied(RELEASE)[-5:] == [
        "postgres", "/var/lib/postgresql/data", "-mindepth", "1", "-delete"]
    assert commands.data_directory_emptied(RELEASE)[-7:-5] == ["--entrypoint", "find"]


def test_the_service_data_path_is_the_one_compose_mounts():
    from restobot.render import PGDATA

    assert commands.SERVICE_PGDATA == PGDATA


# --- the command's refusals: exit 2, nothing changed --------------------------------------------------


def refused_connections(monkeypatch) -> None:
    def refuse(target):
        raise AssertionError("connected although the input was bad")

    monkeypatch.setattr(cli, "connect", refuse)


def test_a_bad_time_exits_2_before_connecting(capsys, monkeypatch, with_secrets):
    refused_connections(monkeypatch)
    status = cli.main(["production", "backup", "offsite", "restore", "--to", "2026-12-02T08:40:00", "--yes"])
    assert status == cli.EXIT_USAGE
    assert "--to: '2026-12-02T08:40:00' has no time zone" in capsys.readouterr().err


def test_disabled_offsite_exits_2_saying_how_to_enable_it(capsys, monkeypatch, with_secrets):
    refused_connections(monkeypatch)
    status = cli.main(["production", "backup", "offsite", "restore", "--yes"])
    assert status == cli.EXIT_USAGE
    assert "offsite_backup.enabled is false" in capsys.readouterr().err


# pgBackRest 2.55's `info --output=json` with another passphrase than the repository's (trimmed; the
# noise stands for the undecrypted bytes it quotes).
NOISE = "\x8bW\x0fE\x12.\tD\x1b"
WRONG_KEY_INFO = {"archive": [], "backup": [], "cipher": "aes-256-cbc", "db": [], "name": "restobot",
                  "repo": [{"cipher": "aes-256-cbc", "key": 1, "status": {"code": 99, "message": (
                      "[FormatError] unable to load info file '/srv/offsite/restobot/backup/restobot/backup.info' or "
                      f"'/srv/offsite/restobot/backup/restobot/backup.info.copy':\nFormatError: key/value found outside "
                      f"of section at line 1: {NOISE}\nHINT: has a stanza-create been performed?")}}],
                  "status": {"code": 99, "lock": {"backup": {"held": False}}, "message": "other"}}


def test_a_repository_that_does_not_decrypt_is_named_a_wrong_passphrase_not_pgbackrests_noise():
    assert repository_problem(WRONG_KEY_INFO) == WRONG_PASSPHRASE
    assert "OFFSITE_BACKUP_PASSPHRASE" in WRONG_PASSPHRASE and "off the VPS" in WRONG_PASSPHRASE
    summary = cli.offsite_summary([WRONG_KEY_INFO])
    assert (summary["status"], summary["problem"], summary["healthy"]) == ("other", WRONG_PASSPHRASE, False)
    with pytest.raises(TargetRefused, match="OFFSITE_BACKUP_PASSPHRASE"):
        check_reachable(Target(None), summary)


def test_any_other_problem_is_its_first_line_in_printable_text():
    info = {**WRONG_KEY_INFO, "cipher": "none",
            "repo": [{"status": {"code": 103, "message": f"[HostConnectError] timeout\t{NOISE}\nsecond line"}}]}
    assert repository_problem(info) == "[HostConnectError] timeout W E . D"
    assert repository_problem({"status": {"code": 0, "message": "ok"}}) is None


def test_pgbackrests_answer_quoting_raw_control_characters_still_reads():
    """pgBackRest writes the undecrypted bytes into its JSON raw (not escaped): read anyway, not refused as
    "not the JSON expected" with the bytes in the message."""
    raw = json.dumps([WRONG_KEY_INFO]).replace("\\u001b", "\x1b").replace("\\u000f", "\x0f").replace("\\n", "\n")
    assert "\x1b" in raw and "\n" in raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert cli.offsite_summary(cli.parse_json_document([raw]))["problem"] == WRONG_PASSPHRASE
