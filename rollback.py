"""Roll back to an earlier release that is still on the host.

    pyinfra inventory/production.py rollback.py --data release=v1.2.0
    pyinfra inventory/production.py rollback.py --data release=v1.2.0 --data restore_backup=true

The release's configs, images and workflows come back; its smoke checks run
before `current` moves. Migrations are forward-only: the data is kept, and the
rollback is refused when the release cannot run on the newer schema, unless the
operator asks to restore the backup taken before that schema changed.
A release that is not on the host is refused before anything changes.
"""

import time

from pyinfra import host, state
from pyinfra.api.exceptions import DeployError

from restobot.commands import HostLayout
from restobot.facts.deploy import (
    AppliedMigrations,
    PreDeployDumps,
    DeployState,
    ReleaseManifestOnHost,
)
from restobot.operations import database, images, lock, release, stack
from restobot.rollback_plan import RollbackRefused, plan_rollback, resolve_release
from restobot.settings import settings_for

started = time.monotonic()
settings = settings_for(host)
layout = HostLayout(settings.host.base_dir)
actor = lock.Actor.current()

# Decide before touching anything: which release, and can it run on this schema?
deployed = host.get_fact(DeployState, base_dir=layout.base_dir)
try:
    identifier = resolve_release(host.data.get("release"), list(deployed.releases))
    release_dir = layout.release_dir(identifier)
    manifest = host.get_fact(ReleaseManifestOnHost, release_dir=release_dir)
    plan = plan_rollback(
        identifier,
        manifest,
        host.get_fact(AppliedMigrations),
        host.get_fact(PreDeployDumps, backups_dir=layout.backups_dir),
        restore_backup=str(host.data.get("restore_backup", "")).lower() in ("1", "true", "yes"),
    )
except RollbackRefused as refused:
    raise DeployError(str(refused)) from None

lock.install_failure_handler(state, layout, actor, "rollback", identifier, started)
lock.deploy_lock_taken(name=lock.TAKE_LOCK, layout=layout, actor=actor, action="rollback", release=identifier)
lock.audit_logged(name=lock.AUDIT, layout=layout, actor=actor, action="rollback", release=identifier, result="started")

release.configs_in_place(
    name=f"Ensure the configs {identifier} mounts are in place", layout=layout, identifier=identifier,
    mounted=plan.manifest.mounted_configs,
)
images.images_present(name="Ensure the release's images are present", images=settings.images)
images.migrate_image_built(name="Ensure the migrate image is built", release_dir=release_dir, image=plan.manifest.migrate_image)

if plan.restore is not None:
    database.database_restored(
        name=f"Restore {plan.restore.path} (asked with restore_backup), the current database kept in a safety dump",
        layout=layout, release_dir=release_dir, backup=plan.restore.path,
        database=settings.database.name, user=settings.database.user,
    )

stack.release_serving(
    name=f"Ensure {identifier} serves and passes its smoke checks",
    layout=layout, identifier=identifier,
    workflows_sha256=plan.manifest.workflows_sha256,
)

lock.audit_logged(
    name=lock.AUDIT, layout=layout, actor=actor, action="rollback", release=identifier, result="success",
    started=started,
)
lock.deploy_lock_released(name=lock.RELEASE_LOCK, layout=layout, summary=f"rollback to {identifier}", started=started)
