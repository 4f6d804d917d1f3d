"""The release manifest (RELEASE.json): built, written, read back from the host, used by the rollback."""

from __future__ import annotations

import io
import tarfile

import pytest

from restobot.facts.deploy import DatabaseUnreadable, LedgerRow, PreDeployDump, ReleaseManifestOnHost
from restobot.release_archive import MANIFEST, MigrationInfo, ReleaseError, ReleaseManifest, build_release
from restobot.operations.database import pending_migrations
from restobot.remote.migrate.plan import make_plan
from restobot.rollback_plan import RollbackRefused, plan_rollback
from tests.conftest import settings_for_stage

# RELEASE.json exactly as the code before the typed manifest wrote it (issue 11's releases
# are still on hosts, and a rollback reads theirs).
EARLIER_RELEASE_JSON = """\
{
  "commit": "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff",
  "config_sha256": "5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5d",
  "images": {
    "migrate_base": "python:3.11-slim",
    "n8n": "n8nio/n8n:2.40.5",
    "nginx": "nginx:1.28-alpine",
    "postgres": "postgres:17-bookworm",
    "redis": "redis:7.4-alpine",
    "traefik": "traefik:v3.7.15"
  },
  "migrate_image": "restobot/migrate:2ddce02a28ea",
  "migrations": [
    {
      "backward_compatible": false,
      "filename": "0001_inbound_messages.sql",
      "sha256": "8484848484848484848484848484848484848484848484848484848484848484"
    },
    {
      "backward_compatible": true,
      "filename": "0002_outbound_messages.sql",
      "sha256": "b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7"
    }
  ],
  "name": "v1.0.0",
  "stage": "production",
  "workflows_sha256": "c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4"
}
"""
EARLIER = ReleaseManifest(
    name="v1.0.0",
    stage="production",
    commit="c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff",
    migrate_image="restobot/migrate:2ddce02a28ea",
    images={
        "migrate_base": "python:3.11-slim", "n8n": "n8nio/n8n:2.40.5", "nginx": "nginx:1.28-alpine",
        "postgres": "postgres:17-bookworm", "redis": "redis:7.4-alpine", "traefik": "traefik:v3.7.15",
    },
    migrations=(
        MigrationInfo("0001_inbound_messages.sql", "84" * 32, False),
        MigrationInfo("0002_outbound_messages.sql", "b7" * 32, True),
    ),
    workflows_sha256="c4" * 32,
    config_sha256="5d" * 32,
)


def test_an_earlier_release_json_loads():
    assert ReleaseManifest.from_json(EARLIER_RELEASE_JSON) == EARLIER


def test_the_json_keeps_its_keys_and_layout():
    assert EARLIER.to_json() == EARLIER_RELEASE_JSON


def test_a_manifest_without_a_commit_round_trips():
    manifest = EARLIER.model_copy(update={"commit": None})
    assert '"commit": null' in manifest.to_json()
    assert ReleaseManifest.from_json(manifest.to_json()) == manifest


def test_keys_this_code_does_not_know_are_ignored():
    newer = EARLIER_RELEASE_JSON.replace('"name": "v1.0.0",', '"name": "v1.0.0",\n  "sbom_sha256": "ab",')
    assert ReleaseManifest.from_json(newer) == EARLIER


def test_a_damaged_manifest_is_refused_naming_the_file_and_the_key():
    damaged = EARLIER_RELEASE_JSON.replace('      "filename": "0001_inbound_messages.sql",\n', "")
    with pytest.raises(ReleaseError, match=r"^/r/RELEASE.json: not a release manifest \(migrations.0.filename: "
                                           r"Field required\); the release is damaged: deploy it again$"):
        ReleaseManifest.from_json(damaged, source="/r/RELEASE.json")


def test_text_that_is_not_json_is_refused():
    with pytest.raises(ReleaseError, match="not a release manifest"):
        ReleaseManifest.from_json("<html>")


def test_the_manifest_is_frozen():
    with pytest.raises(ValueError, match="frozen"):
        EARLIER.name = "v2"  # type: ignore[misc]


def test_the_built_archive_holds_the_manifest_it_reports(secret_env):
    built = build_release(settings_for_stage("production", secret_env), "v1.0.0")
    with tarfile.open(fileobj=io.BytesIO(built.archive)) as archive:
        text = archive.extractfile(MANIFEST).read().decode()
    assert text == built.manifest.to_json()
    assert ReleaseManifest.from_json(text) == built.manifest
    assert built.migrate_image == built.manifest.migrate_image
    assert "bundle_dir" not in built.manifest.images


def test_the_host_fact_reads_the_manifest_or_none():
    assert ReleaseManifestOnHost().process(EARLIER_RELEASE_JSON.splitlines()) == EARLIER
    assert ReleaseManifestOnHost().process([]) is None
    assert ReleaseManifestOnHost().command("/opt/resto/releases/v1-aa") == (
        "cat /opt/resto/releases/v1-aa/RELEASE.json 2>/dev/null || true"
    )


# --- the rollback's decision, from the manifest ---------------------------------------------


def test_the_manifest_and_the_ledger_feed_the_migration_runners_own_plan():
    ledger = (LedgerRow("0001_inbound_messages.sql", "84" * 32), LedgerRow("0009_new.sql", "z", True),
              LedgerRow("0010_rename.sql", "w"))
    plan = make_plan(EARLIER.migrations, {row.filename: row for row in ledger})
    assert [item.filename for item in plan.pending] == ["0002_outbound_messages.sql"]
    assert plan.changed == ()
    assert ([row.filename for row in plan.unknown], [row.filename for row in plan.tolerated]) == (
        ["0010_rename.sql"], ["0009_new.sql"])
    assert pending_migrations(EARLIER.migrations, ledger) == ["0002_outbound_messages.sql"]
    assert pending_migrations(EARLIER.migrations, None) == ["0001_inbound_messages.sql", "0002_outbound_messages.sql"]


def test_rollback_without_a_manifest_on_the_host_is_refused():
    with pytest.raises(RollbackRefused, match="release v1-aa has no RELEASE.json on the host; nothing was changed"):
        plan_rollback("v1-aa", None, None, [], restore_backup=False)


def test_rollback_onto_a_schema_it_knows_keeps_the_data():
    ledger = (LedgerRow("0001_inbound_messages.sql", "x"), LedgerRow("0002_outbound_messages.sql", "y"))
    plan = plan_rollback("v1-aa", EARLIER, ledger, [], restore_backup=False)
    assert (plan.manifest, plan.restore, plan.newer_compatible) == (EARLIER, None, ())


def test_rollback_over_newer_backward_compatible_migrations_keeps_the_data():
    ledger = (LedgerRow("0001_inbound_messages.sql", "x"), LedgerRow("0009_new.sql", "z", backward_compatible=True))
    plan = plan_rollback("v1-aa", EARLIER, ledger, [], restore_backup=False)
    assert (plan.restore, plan.newer_compatible) == (None, ("0009_new.sql",))


def test_rollback_over_an_incompatible_migration_restores_only_when_asked():
    ledger = (LedgerRow("0001_inbound_messages.sql", "x"), LedgerRow("0009_rename.sql", "z"))
    backup = PreDeployDump("/opt/resto/backups/before-v2-bb.dump", "v2-bb",
                    ("0001_inbound_messages.sql", "0002_outbound_messages.sql"))
    with pytest.raises(RollbackRefused, match="--data restore_backup=true to restore /opt/resto/backups/before-v2-bb"):
        plan_rollback("v1-aa", EARLIER, ledger, [backup], restore_backup=False)
    assert plan_rollback("v1-aa", EARLIER, ledger, [backup], restore_backup=True).restore == backup


@pytest.mark.parametrize("restore_backup", [False, True], ids=["keep-data", "restore"])
def test_rollback_onto_a_database_that_did_not_answer_is_refused(restore_backup):
    unreadable = DatabaseUnreadable("FATAL:  the database system is starting up")
    with pytest.raises(RollbackRefused, match=r"could not be read.*starting up\nNothing was changed"):
        plan_rollback("v1-aa", EARLIER, unreadable, [], restore_backup=restore_backup)
