"""The automatic revert after a failed activation: the previous release comes back only when it can
run on the database as the new release left it; otherwise the new release's containers stay up and
the operator is told which migrations block it and which backup to restore."""

from __future__ import annotations

from pyinfra.api import StringCommand

from restobot.commands import HostLayout, compose_up, shell, smoke_checks
from restobot.facts.deploy import AppliedMigrations, ReleaseManifestOnHost
from restobot.operations.stack import SMOKE_ATTEMPTS, activate_release, revert
from tests.unit.scripted import ScriptedHost
from tests.unit.test_release_manifest import EARLIER_RELEASE_JSON

LAYOUT = HostLayout("/opt/resto")
NEW, PREVIOUS = "v2-bbbbbbbb", "v1-aaaaaaaa"
MANIFEST_READ = StringCommand(ReleaseManifestOnHost().command(LAYOUT.release_dir(PREVIOUS))).get_raw_value()
LEDGER_READ = StringCommand(AppliedMigrations().command()).get_raw_value()
UP_PREVIOUS = shell(compose_up(LAYOUT.release_dir(PREVIOUS))).get_raw_value()
UP_NEW = shell(compose_up(LAYOUT.release_dir(NEW))).get_raw_value()
SMOKE_PREVIOUS = shell(smoke_checks(LAYOUT.release_dir(PREVIOUS), SMOKE_ATTEMPTS)).get_raw_value()
# The previous release (EARLIER) knows 0001_inbound_messages.sql and 0002_outbound_messages.sql.
KNOWN = ["0001_inbound_messages.sql\t84\tf", "0002_outbound_messages.sql\tb7\tt"]


def host_with(ledger: list[str], manifest: str = EARLIER_RELEASE_JSON) -> ScriptedHost:
    return ScriptedHost({MANIFEST_READ: manifest.splitlines(), LEDGER_READ: ledger,
                         SMOKE_PREVIOUS: ["PASS healthz 200"]})


def test_a_migration_the_previous_release_does_not_know_keeps_it_down():
    host = host_with(["rows", *KNOWN, "0003_rename.sql\tcc\tf"])
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert host.ran == [MANIFEST_READ, LEDGER_READ]


def test_a_blocked_revert_names_the_migrations_and_the_way_out():
    host = host_with(["rows", *KNOWN, "0003_rename.sql\tcc\tf", "0004_drop.sql\tdd\tf"])
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert host.logged == [
        "not going back to v1-aaaaaaaa: the database holds migrations it does not know, not marked "
        "backward-compatible: 0003_rename.sql, 0004_drop.sql; its containers would not start on it. Rather than "
        "a mixed stack, v2-bbbbbbbb's containers stay up (current still names v1-aaaaaaaa). Either fix v2-bbbbbbbb and "
        "deploy again, or roll back with the backup taken before v2-bbbbbbbb migrated "
        "(/opt/resto/backups/before-v2-bbbbbbbb.dump; rows written since are lost): "
        "pyinfra INVENTORY rollback.py --data release=v1-aaaaaaaa --data restore_backup=true"
    ]


def test_newer_backward_compatible_migrations_let_the_previous_release_back():
    host = host_with(["rows", *KNOWN, "0003_note.sql\tcc\tt"])
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert UP_PREVIOUS in host.ran and host.logged[-1] == "v1-aaaaaaaa serves again"


def test_the_same_schema_lets_the_previous_release_back():
    host = host_with(["rows", *KNOWN])
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert host.ran[:3] == [MANIFEST_READ, LEDGER_READ, UP_PREVIOUS]


def test_a_database_that_does_not_answer_keeps_the_previous_release_down():
    host = host_with(["error", "FATAL:  the database system is starting up"])
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert UP_PREVIOUS not in host.ran
    assert host.logged[0].startswith("not going back to v1-aaaaaaaa: the database could not be read to check "
                                     "v1-aaaaaaaa runs on it: FATAL:  the database system is starting up.")


def test_a_previous_release_without_a_manifest_stays_down():
    host = host_with(["rows", *KNOWN], manifest="")
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert (host.ran, host.logged[0].split(".")[0]) == (
        [MANIFEST_READ], "not going back to v1-aaaaaaaa: v1-aaaaaaaa has no RELEASE")


def test_a_damaged_manifest_keeps_the_previous_release_down():
    host = host_with(["rows", *KNOWN], manifest='{"name": "v1"}')
    revert(host, LAYOUT, NEW, PREVIOUS)
    assert UP_PREVIOUS not in host.ran and "its manifest cannot be read" in host.logged[0]


def test_a_failed_activation_over_an_incompatible_migration_leaves_the_new_release_up():
    host = host_with(["rows", *KNOWN, "0003_rename.sql\tcc\tf"])
    host.answers[UP_NEW] = (False, ["container resto-n8n-main-1 is unhealthy"])
    assert activate_release(None, host, LAYOUT, NEW, PREVIOUS, "ab" * 32) is False
    assert [command for command in host.ran if " up " in command] == [UP_NEW]
