"""A rollback's restore: the chosen dump checked before anything is dropped, what is at stake said,
the database it replaces kept in a safety dump and put back (n8n started again) when the restore fails."""

from __future__ import annotations

import pytest

from restobot.commands import (
    HostLayout,
    database_replaced,
    dump_contents,
    file_age_seconds,
    n8n_started_again,
    n8n_stopped,
    row_counts,
    safety_dump,
    shell,
)
from restobot.operations.database import describe_age, restore_with_safety_dump
from tests.unit.scripted import ScriptedHost

LAYOUT = HostLayout("/opt/resto")
RELEASE = "/opt/resto/releases/v1-aaaaaaaa"
BACKUP = "/opt/resto/backups/before-v2-bbbbbbbb.dump"
SAFETY = "/opt/resto/backups/before-restore-20261201T102701Z.dump"


def raw(argv: list[str]) -> str:
    return shell(argv).get_raw_value()


LIST, AGE, COUNT, STOP, START = (raw(dump_contents(RELEASE, BACKUP)), raw(file_age_seconds(BACKUP)),
                                 raw(row_counts(RELEASE)), raw(n8n_stopped(RELEASE)), raw(n8n_started_again()))
SAFETY_DUMP = [raw(argv) for argv in safety_dump(LAYOUT, SAFETY)]
RESTORE = [raw(argv) for argv in database_replaced(RELEASE, BACKUP, "n8n", "n8n")]
PUT_BACK = [raw(argv) for argv in database_replaced(RELEASE, SAFETY, "n8n", "n8n")]
LISTING = [";", "; Archive created at 2026-12-01 08:22:01 UTC", ";     dbname: n8n", "217; 1259 16385 TABLE public x n8n"]


def scripted(**failing: list[str]) -> ScriptedHost:
    """A host where the dump lists, is 2 h 5 min old and 12/9 rows are counted; ``failing`` maps
    a command (by its name here) to the error it prints as it fails."""
    answers = {LIST: LISTING, AGE: ["7500"], COUNT: ["inbound_messages\t12", "outbound_messages\t9"]}
    named = {"LIST": LIST, "STOP": STOP, "SAFETY": SAFETY_DUMP[1], "RESTORE": RESTORE[2], "PUT_BACK": PUT_BACK[2],
             "START": START}
    for name, error in failing.items():
        answers[named[name]] = (False, error)
    return ScriptedHost(answers)


def restore(host: ScriptedHost) -> bool:
    return restore_with_safety_dump(None, host, LAYOUT, RELEASE, BACKUP, SAFETY, "n8n", "n8n")


def test_a_restore_checks_the_dump_counts_keeps_a_safety_dump_then_replaces_the_database():
    host = scripted()
    assert restore(host) is True
    assert host.ran == [LIST, AGE, COUNT, STOP, *SAFETY_DUMP, *RESTORE, COUNT]


def test_a_restore_says_the_dumps_age_and_the_rows_at_stake_before_dropping():
    host = scripted()
    restore(host)
    assert host.logged[0] == (
        f"restoring {BACKUP}: made 2026-12-01 08:22:01 UTC, 2 h 5 min ago. The database holds now: "
        f"inbound_messages 12, outbound_messages 9; rows written since the dump are lost (kept in the safety dump "
        f"{SAFETY})."
    )


def test_a_restore_names_the_safety_dump_and_how_many_are_kept():
    host = scripted()
    restore(host)
    assert host.logged[-1].endswith(f"The database as it was is in {SAFETY}; the newest 3 safety dumps are kept.")


def test_a_dump_pg_restore_cannot_list_is_refused_before_anything_changes():
    host = scripted(LIST=["pg_restore: error: input file does not appear to be a valid archive (too short?)"])
    assert restore(host) is False
    assert host.ran == [LIST]
    assert host.logged[0].startswith(f"{BACKUP} cannot be restored (nothing was changed): pg_restore --list of")
    assert "too short?" in host.logged[0]


def test_a_failed_restore_puts_the_safety_dump_back_and_starts_n8n_again():
    host = scripted(RESTORE=["pg_restore: error: could not execute query: ERROR:  type x does not exist"])
    assert restore(host) is False
    assert host.ran[-len(PUT_BACK) - 1:] == [*PUT_BACK, START]


def test_a_failed_restore_fails_loudly_naming_the_safety_dump():
    host = scripted(RESTORE=["pg_restore: error: could not execute query"])
    restore(host)
    assert "could not execute query" in host.logged[1]
    assert host.logged[-1] == (
        f"the restore of {BACKUP} failed; the database was put back from the safety dump {SAFETY} and n8n "
        "started again: the data is as it was before the rollback, which stops here."
    )


def test_a_safety_dump_that_cannot_be_put_back_leaves_n8n_stopped_and_says_how_to_recover():
    host = scripted(RESTORE=["pg_restore: error: could not execute query"], PUT_BACK=["no space left on device"])
    assert restore(host) is False
    assert START not in host.ran
    assert host.logged[-1].startswith(f"the restore of {BACKUP} failed, and putting back the safety dump {SAFETY} "
                                      "failed too:")
    assert "n8n is left stopped" in host.logged[-1] and f"< \"$0\"' {SAFETY}" in host.logged[-1]


def test_a_safety_dump_that_fails_drops_nothing_and_starts_n8n_again():
    host = scripted(SAFETY=["pg_dump: error: connection failed"])
    assert restore(host) is False
    assert not any("DROP DATABASE" in command for command in host.ran)
    assert host.ran[-1] == START
    assert host.logged[-1].endswith("Nothing was dropped; n8n was started again.")


@pytest.mark.parametrize("seconds, said", [
    (40, "40 s"), (720, "12 min"), (7500, "2 h 5 min"), (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"), (-3, "0 s"),
])
def test_ages_are_said_in_their_largest_units(seconds, said):
    assert describe_age(seconds) == said
