"""Deploy the Resto Bot stack, in the runbook's order:
provision, render, release, migrate, workflows, checks.

    pyinfra inventory/production.py deploy.py                      # shows the changes, asks, deploys
    pyinfra inventory/production.py deploy.py -y                   # CI: no question
    pyinfra inventory/production.py deploy.py --dry                # what would change, nothing done
    pyinfra inventory/production.py deploy.py --data release=v1.2  # name the release yourself
    pyinfra inventory/production.py deploy.py --data source=../wt  # release another checkout

The settings were validated when pyinfra loaded the inventory, before any
connection. The release is named by the git tag of HEAD (or its commit).
"""

import time
from pathlib import Path

from pyinfra import host, state

from restobot.commands import HostLayout
from restobot.operations import backup, cleanup, database, images, lock, monitoring, provision, release, stack
from restobot.release_archive import build_release, private_tempdir, release_name_from_git
from restobot.settings import REPO_ROOT, settings_for

started = time.monotonic()
settings = settings_for(host)
layout = HostLayout(settings.host.base_dir)
actor = lock.Actor.current()

# Render: every config and env file of this release, packed into one archive.
source = Path(host.data.get("source") or REPO_ROOT)
built = build_release(settings, host.data.get("release") or release_name_from_git(source), source)
identifier = release.release_id(built.name, built.sha256)
archive = built.write_archive(private_tempdir())
release_dir = layout.release_dir(identifier)

lock.install_failure_handler(state, layout, actor, "deploy", identifier, started)
lock.deploy_lock_taken(name=lock.TAKE_LOCK, layout=layout, actor=actor, action="deploy", release=identifier)
lock.audit_logged(name=lock.AUDIT, layout=layout, actor=actor, action="deploy", release=identifier, result="started")

# Provision: a fresh VPS becomes a docker host with a hardened SSH and firewall.
provision.host_provisioned(settings)

# Release: the archive unpacked under releases/, its images present.
release.release_unpacked(
    name=f"Ensure release {identifier} is on the host",
    layout=layout, release=built.name, sha256=built.sha256, archive=archive, owner=settings.host.deploy_user,
)
release.configs_in_place(
    name=f"Ensure the configs {identifier} mounts are in place", layout=layout, identifier=identifier,
    mounted=built.manifest.mounted_configs,
)
images.images_present(name="Ensure the stack's images are present", images=settings.images)
images.migrate_image_built(name="Ensure the migrate image is built", release_dir=release_dir, image=built.migrate_image)
images.postgres_image_built(
    name="Ensure the postgres image with pgBackRest is built", release_dir=release_dir, image=built.postgres_image
)

# Migrate: a backup first when the database exists, then fail-fast migrations.
database.database_backed_up(
    name="Ensure a backup precedes the migrations",
    layout=layout, identifier=identifier, release_migrations=built.manifest.migrations,
)
database.schema_migrated(
    name="Ensure every migration is applied", release_dir=release_dir, release_migrations=built.manifest.migrations,
    log=layout.migration_log(identifier),
)

database.api_client_present(
    name="Ensure the admin API client is present",
    release_dir=release_dir, client="admin", token_hash=settings.admin.token_sha256, scopes=("admin:dlq", "admin:read"),
)

# Workflows and checks: converge the stack, import the workflows, smoke-check, then move `current`.
stack.release_serving(
    name=f"Ensure {identifier} serves and passes its smoke checks",
    layout=layout, identifier=identifier,
    workflows_sha256=built.manifest.workflows_sha256,
)
release.releases_pruned(
    name=f"Ensure at most {settings.host.keep_releases} releases (and the backups taken before them) are kept",
    layout=layout, keep=settings.host.keep_releases, protected=(identifier,),
    protected_configs=tuple(built.manifest.mounted_configs),
)

# Backups: the nightly dump, its restore check, its cron entry, and a first dump now; off-site, the
# stanza with a first full backup and the nightly pgBackRest run (removed when off-site is disabled).
backup.backups_scheduled(settings, layout)
if settings.offsite_backup.enabled:  # a setting: it cannot change during the run
    backup.offsite_stanza_created(
        name="Ensure the off-site repository holds the database", stanza=settings.offsite_backup.stanza,
        helper=backup.BackupPaths(layout).helper, stage=settings.stage.value,
    )
backup.offsite_backups_scheduled(settings, layout)

# Retention: the rows past their retention deleted nightly, after the backup.
cleanup.cleanup_scheduled(settings, layout)

# Monitoring: Prometheus and its exporters are compose services; the host writes the containers' states.
monitoring.container_states_scheduled(settings, layout)

lock.audit_logged(
    name=lock.AUDIT, layout=layout, actor=actor, action="deploy", release=identifier, result="success", started=started
)
lock.deploy_lock_released(name=lock.RELEASE_LOCK, layout=layout, summary=f"deploy of {identifier}", started=started)
