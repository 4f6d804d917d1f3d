"""Scheduled backups: a nightly dump of the database, kept 7 daily / 4 weekly / 6 monthly.

``backups_scheduled(settings, layout)`` installs on the VPS:

* ``{base_dir}/bin/backup`` (templates/backup/backup.sh.j2, POSIX sh): pg_dump -Fc and
  pg_dumpall --globals-only from the postgres container, row counts of the key tables
  taken in the dump's own snapshot, checked, renamed, a ``last-success`` stamp, then
  retention; it logs to ``BACKUP_LOG`` (0640) and records each run's outcome in
  ``BackupPaths.last_run`` (exported by restobot/remote/container_states.py for RestobotBackupFailed);
* ``{base_dir}/bin/backup-verify`` (templates/backup/backup-verify.sh.j2): restores the
  newest dump into the scratch database ``restore_check`` and compares the counts;
* ``{base_dir}/bin/restobot_backup.py``: restobot/remote/backup.py, the retention and
  restore-check code both scripts call (unit-tested by value). It reaches the host in the
  release like every program that runs there, and is copied from ``{base_dir}/current``
  into ``bin/`` (by then the release just deployed), so a rollback keeps the copy that works;
* ``CRON_FILE``: runs ``bin/backup`` as the deploy user on ``backup.schedule``.

Dumps live in ``{backups_dir}/scheduled`` (0700, files 0600: personal data). The
pre-deploy backups of restobot/operations/database.py stay apart in ``{backups_dir}``.
Cron itself: provisioning installs and starts it on hosts without systemd; here it is
ensured on every host (a systemd VPS image may lack it).

The off-site backup (``offsite_backup`` enabled): PostgreSQL archives its WAL with pgBackRest
(docker/postgres-pgbackrest/, templates/backup/pgbackrest.conf.j2); ``offsite_stanza_created``
makes the repository's stanza, checks that archiving reaches it, and takes a first full backup.
``offsite_backups_scheduled`` installs ``{base_dir}/bin/offsite-backup``
(templates/backup/offsite-backup.sh.j2: tonight's full or incremental backup, ``pgbackrest check``
and ``verify``, its outcome recorded for the alerts) and ``OFFSITE_CRON_FILE``, which runs it as
the deploy user on ``offsite_backup.schedule``; and ``{base_dir}/bin/offsite-restore-drill``
(templates/backup/offsite-restore-drill.sh.j2: the repository's latest point restored into a scratch
instance and checked against the live row counts) with ``DRILL_CRON_FILE`` on
``offsite_backup.drill_schedule``. With ``offsite_backup`` disabled, all four are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, deploy, operation
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import apt, files, server

from restobot.commands import (
    DRILL_CONTAINER,
    POSTGRES_CONTAINER,
    HostLayout,
    offsite_repository_is_this_databases,
    offsite_restore_drill,
    pgbackrest,
    run_script,
    shell,
    shell_text,
)
from restobot.facts.offsite import OffsiteBackupInfo
from restobot.facts.provision import HostPlatform
from restobot.operations.cron import managed_cron_file
from restobot.operations.provision import init_service
from restobot.operations.stack import StepFailed, run_step
from restobot.remote import backup as backup_helper
from restobot.settings import REPO_ROOT, BackupSettings, OffsiteBackupSettings, Settings

TEMPLATES = REPO_ROOT / "templates" / "backup"
CRON_FILE = "/etc/cron.d/restobot-backup"
OFFSITE_CRON_FILE = "/etc/cron.d/restobot-offsite-backup"
DRILL_CRON_FILE = "/etc/cron.d/restobot-offsite-restore-drill"
LOG_DIR = "/var/log/restobot"
BACKUP_LOG = f"{LOG_DIR}/backup.log"
HELPER_IN_RELEASE = "restobot/remote/backup.py"
"""The helper's path in a release (and in the checkout it is built from)."""
HELPER_MODE = 750
# How long the drill's scratch instance may take to replay the archive and promote.
DRILL_RECOVERY_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class BackupPaths:
    """Where the scheduled backups and their scripts live on the VPS."""

    layout: HostLayout

    @property
    def bin_dir(self) -> str:
        return f"{self.layout.base_dir}/bin"

    @property
    def script(self) -> str:
        return f"{self.bin_dir}/backup"

    @property
    def verify_script(self) -> str:
        return f"{self.bin_dir}/backup-verify"

    @property
    def helper(self) -> str:
        return f"{self.bin_dir}/restobot_backup.py"

    @property
    def helper_source(self) -> str:
        """The helper in the current release, which ``helper`` is copied from."""
        return f"{self.layout.current}/{HELPER_IN_RELEASE}"

    @property
    def directory(self) -> str:
        return f"{self.layout.backups_dir}/scheduled"

    @property
    def last_success(self) -> str:
        return f"{self.directory}/last-success"

    @property
    def last_run(self) -> str:
        """The last run's outcome, ``<time> ok`` or ``<time> failed``: outside ``directory``, which may be what failed."""
        return f"{self.layout.state_dir}/backup-last-run"

    @property
    def offsite_script(self) -> str:
        return f"{self.bin_dir}/offsite-backup"

    @property
    def offsite_last_run(self) -> str:
        """The off-site run's outcome, ``<time> ok`` or ``<time> failed``."""
        return f"{self.layout.state_dir}/offsite-backup-last-run"

    @property
    def offsite_last_success(self) -> str:
        """``<time> full|incr``, rewritten by each run that succeeded."""
        return f"{self.layout.state_dir}/offsite-backup-last-success"

    @property
    def offsite_lock(self) -> str:
        return f"{self.layout.state_dir}/offsite-backup.lock"

    @property
    def drill_script(self) -> str:
        return f"{self.bin_dir}/offsite-restore-drill"

    @property
    def drill_last_run(self) -> str:
        """The restore drill's outcome, ``<time> ok`` or ``<time> failed``."""
        return f"{self.layout.state_dir}/offsite-restore-drill-last-run"

    @property
    def drill_last_success(self) -> str:
        return f"{self.layout.state_dir}/offsite-restore-drill-last-success"

    @property
    def drill_lock(self) -> str:
        return f"{self.layout.state_dir}/offsite-restore-drill.lock"


# --- pure builders ---------------------------------------------------------


def cron_line(schedule: str, user: str, script: str) -> str:
    """The /etc/cron.d line running ``script`` as ``user`` (stdout dropped: cron mails stderr, the failures)."""
    return f"{schedule} {user} {shlex.quote(script)} >/dev/null"


def backup_cron_file(what: str, setting: str, line: str) -> str:
    """A cron.d file of this module: ``what`` it runs, the ``setting`` its schedule comes from, its ``line``."""
    return managed_cron_file("restobot/operations/backup.py", what,
                             f"Change `{setting}` in the inventory and deploy again", line)


def cron_file(backup: BackupSettings, user: str, paths: BackupPaths) -> str:
    """The whole ``CRON_FILE`` (pure: tested by value)."""
    return backup_cron_file("the nightly database backup", "backup.schedule",
                             cron_line(backup.schedule, user, paths.script))


def shell_words(**values: str) -> dict[str, str]:
    """Each value twice, for a script template: quoted as one shell word, and as ``NAME_text`` for its
    comments and messages (pure)."""
    return {key: text for name, value in values.items()
            for key, text in ((name, shlex.quote(value)), (f"{name}_text", value))}


def script_values(backup: BackupSettings, user: str, paths: BackupPaths,
                  container: str = POSTGRES_CONTAINER) -> dict[str, str | int]:
    """What the two script templates are rendered with; shell words come quoted (pure)."""
    return {
        **shell_words(deploy_user=user, container=container, directory=paths.directory, log=BACKUP_LOG,
                      helper=paths.helper, last_run=paths.last_run, scratch=backup_helper.SCRATCH_DATABASE),
        "script_text": paths.script,
        "verify_text": paths.verify_script,
        "cron_file": CRON_FILE,
        "daily": backup.keep_daily,
        "weekly": backup.keep_weekly,
        "monthly": backup.keep_monthly,
        "count_sql": backup_helper.count_sql(),
    }


def offsite_cron_file(offsite: OffsiteBackupSettings, user: str, paths: BackupPaths) -> str:
    """The whole ``OFFSITE_CRON_FILE`` (pure: tested by value)."""
    return backup_cron_file("the nightly off-site backup (pgBackRest)", "offsite_backup.schedule",
                             cron_line(offsite.schedule, user, paths.offsite_script))


def offsite_script_values(offsite: OffsiteBackupSettings, user: str, paths: BackupPaths,
                          container: str = POSTGRES_CONTAINER, stage: str = "production") -> dict[str, str | int]:
    """What the off-site script's template is rendered with; shell words come quoted (pure)."""
    return {
        **shell_words(deploy_user=user, container=container, stanza=offsite.stanza, log=BACKUP_LOG,
                      helper=paths.helper, last_run=paths.offsite_last_run, stamp=paths.offsite_last_success,
                      lock=paths.offsite_lock, stage=stage),
        "script_text": paths.offsite_script,
        "cron_file": OFFSITE_CRON_FILE,
        "full_every_days": offsite.full_interval_days,
    }


def drill_cron_file(offsite: OffsiteBackupSettings, user: str, paths: BackupPaths) -> str:
    """The whole ``DRILL_CRON_FILE`` (pure: tested by value)."""
    return backup_cron_file("the off-site restore drill (pgBackRest into a scratch instance)",
                             "offsite_backup.drill_schedule", cron_line(offsite.drill_schedule, user, paths.drill_script))


def drill_script_values(settings: Settings, paths: BackupPaths,
                        container: str = POSTGRES_CONTAINER) -> dict[str, str | int]:
    """What the drill's template is rendered with; shell words come quoted (pure)."""
    return {
        **shell_words(deploy_user=settings.host.deploy_user, container=container,
                      stanza=settings.offsite_backup.stanza, scratch_name=DRILL_CONTAINER, log=BACKUP_LOG,
                      helper=paths.helper, last_run=paths.drill_last_run, stamp=paths.drill_last_success,
                      lock=paths.drill_lock),
        "script_text": paths.drill_script,
        "cron_file": DRILL_CRON_FILE,
        "seconds": DRILL_RECOVERY_SECONDS,
        "disk_percent": settings.monitoring.disk_percent,
        "scratch_command": shlex.join(offsite_restore_drill(paths.layout.current)),
    }


def helper_install(paths: BackupPaths, user: str) -> list[str]:
    """Copy the current release's helper into ``bin/``: root's, run by ``user`` (pure)."""
    return ["install", "-o", "root", "-g", user, "-m", str(HELPER_MODE), paths.helper_source, paths.helper]


def helper_sha256(source: Path) -> str:
    """The sha256 of the helper in the checkout a release was built from (the release holds the same bytes)."""
    helper = source / HELPER_IN_RELEASE
    if not helper.is_file():
        raise OperationError(f"{helper} is missing: {source} is not a checkout of this code")
    return hashlib.sha256(helper.read_bytes()).hexdigest()


def helper_is_current(present: dict | None, sha256: str | None, wanted: str, user: str) -> bool:
    """Whether the helper on the host (its ``File`` and ``Sha256File`` facts) is ``wanted``, root's,
    group ``user``, mode 750: nothing to copy (pure)."""
    return bool(present) and sha256 == wanted and (
        present["user"], present["group"], present["mode"]) == ("root", user, HELPER_MODE)


# --- deploy ----------------------------------------------------------------


@deploy("Ensure the database is backed up on schedule")
def backups_scheduled(settings: Settings, layout: HostLayout) -> None:
    """
    Ensure the nightly backup, its restore check and its cron entry are installed,
    and that one backup has succeeded (run now on a host that has none yet).

    + settings: the stage's settings (``backup`` and ``host.deploy_user`` are read)
    + layout: where the stack lives on the host

    **Example:**

    .. code:: python

        backups_scheduled(settings, HostLayout(settings.host.base_dir))
    """
    user = settings.host.deploy_user
    paths = BackupPaths(layout)
    values = script_values(settings.backup, user, paths)
    platform = host.get_fact(HostPlatform)

    files.directory(name=f"Ensure {paths.bin_dir} holds root's scripts, run by {user}",
                    path=paths.bin_dir, user="root", group=user, mode="750")
    files.directory(name=f"Ensure {paths.directory} is {user}'s, mode 700",
                    path=paths.directory, user=user, group=user, mode="700")
    files.directory(name=f"Ensure {LOG_DIR} is {user}'s, mode 750",
                    path=LOG_DIR, user=user, group="adm", mode="750")
    files.file(name=f"Ensure {BACKUP_LOG} is {user}'s, mode 640",
               path=BACKUP_LOG, user=user, group="adm", mode="640")
    # Copied on the host from `current`, which is the release just deployed by the time this
    # runs (it moves once the release serves) but may still be the previous one while the
    # deploy is planned: whether to copy is decided from the checkout deploy.py released
    # (its `source` data, else this one), whose bytes that release holds.
    wanted = helper_sha256(Path(host.data.get("source") or REPO_ROOT))
    present = host.get_fact(File, path=paths.helper)
    if not helper_is_current(present, present and host.get_fact(Sha256File, path=paths.helper), wanted, user):
        server.shell(name=f"Ensure {paths.helper} is the current release's retention and restore-check code",
                     commands=[shell_text(helper_install(paths, user))])
    files.template(name=f"Ensure {paths.script} dumps, checks and keeps the backups",
                   src=str(TEMPLATES / "backup.sh.j2"), dest=paths.script,
                   user="root", group=user, mode="750", **values)
    files.template(name=f"Ensure {paths.verify_script} restores the newest backup into a scratch database",
                   src=str(TEMPLATES / "backup-verify.sh.j2"), dest=paths.verify_script,
                   user="root", group=user, mode="750", **values)
    apt.packages(name="Ensure cron is installed", packages=["cron"], no_recommends=True)
    if platform is not None:
        init_service(platform, "cron", name="Ensure cron is running (it runs the nightly backup)", running=True)
    files.put(name=f"Ensure cron runs {paths.script} at '{settings.backup.schedule}' as {user}",
              src=io.StringIO(cron_file(settings.backup, user, paths)), dest=CRON_FILE,
              user="root", group="root", mode="644")
    # A fresh stack is backed up now, not at the next scheduled time: the go-live
    # checklist wants a recent backup that restores.
    if host.get_fact(File, path=paths.last_success) is None:
        server.shell(name=f"Ensure a first backup exists (no {paths.last_success} yet)",
                     # As root over SSH: the script re-runs itself as the deploy user.
                     commands=[shell_text(run_script(paths.script))])


@operation()
def offsite_stanza_created(stanza: str, helper: str, stage: str):
    """
    Ensure the off-site repository holds ``stanza`` with a full backup, WAL archiving into it checked.

    A missing stanza is created and ``pgbackrest check`` proves a WAL segment reaches the repository
    (it fails the deploy, with pgBackRest's error, when the host, its key or the passphrase is wrong);
    a repository without a full backup gets one. A repository that backs up another database (a VPS
    rebuilt after a loss, before its restore) is not written to: a warning names the restore command
    and the deploy goes on. Call it once the postgres service runs with archiving.

    + stanza: ``offsite_backup.stanza``
    + helper: the backup helper installed on the host (``BackupPaths.helper``)
    + stage: the stage's name, for the commands the errors name

    **Example:**

    .. code:: python

        offsite_stanza_created(name="Ensure the off-site repository holds the database",
                               stanza=settings.offsite_backup.stanza, helper=paths.helper, stage="production")
    """
    repository = host.get_fact(OffsiteBackupInfo, stanza=stanza)
    if repository is not None and repository.stanza_exists and repository.full_backups:
        host.noop(f"stanza {stanza} holds {repository.full_backups} full backup(s), "
                  f"WAL archived up to {repository.wal_max or 'none yet'}")
        return
    steps = []
    if repository is None or not repository.stanza_exists:
        steps += [pgbackrest(stanza, "stanza-create"), pgbackrest(stanza, "check")]
    if repository is None or not repository.full_backups:
        steps.append(pgbackrest(stanza, "--type=full", "backup"))
    # Whose repository it is is read when the steps run: on a fresh VPS postgres is not up yet when
    # the facts are read.
    yield FunctionCommand(unless_foreign, (stanza, helper, stage, steps), {})


def foreign_repository(target, stanza: str, helper: str, stage: str) -> str | None:
    """Why the off-site repository is another database's (None: it is this one's, or holds no stanza)."""
    ok, output = target.run_shell_command(shell(offsite_repository_is_this_databases(stanza, helper, stage)),
                                          print_output=False, print_input=False)
    lines = [item.line for item in output]
    if ok:
        return None
    foreign = [line for line in lines if line.startswith(backup_helper.FOREIGN_REPOSITORY_SAYS)]
    if foreign:
        return foreign[0]
    raise StepFailed("reading the off-site repository failed:\n" + "\n".join(f"    {line}" for line in lines[-20:]))


def unless_foreign(state, host, stanza: str, helper: str, stage: str, steps: list[list[str]]) -> bool:
    """Run ``steps`` unless the repository backs up another database: a VPS rebuilt after a loss
    whose next step is the restore. The deploy goes on, the warning says so, nothing is written."""
    try:
        foreign = foreign_repository(host, stanza, helper, stage)
        if foreign:
            host.log_styled(foreign, fg="yellow", log_func=logger.warning)
            return True
        for argv in steps:
            run_step(host, argv, shell_text(argv))
    except StepFailed as failure:
        host.log_styled(str(failure), fg="red", log_func=logger.error)
        return False
    return True


@operation()
def offsite_first_run_done(script: str, stamp: str, stanza: str, helper: str, stage: str):
    """
    Ensure one run of an off-site ``script`` has succeeded on this host: it is run now when ``stamp``
    is missing (its TooOld alert would otherwise fire until the first scheduled run, and the run
    proves the script works where it will run). Not on a repository of another database (a VPS
    rebuilt, before its restore: the restore runs it).

    + script: ``bin/offsite-backup`` or ``bin/offsite-restore-drill``
    + stamp: the stamp its success writes
    + stanza, helper, stage: as ``offsite_stanza_created``'s
    """
    if host.get_fact(File, path=stamp) is not None:
        host.noop(f"{stamp} exists: an off-site run has succeeded here")
        return
    yield FunctionCommand(unless_foreign, (stanza, helper, stage, [run_script(script)]), {})


@deploy("Ensure the off-site backup runs on schedule")
def offsite_backups_scheduled(settings: Settings, layout: HostLayout) -> None:
    """
    Ensure ``bin/offsite-backup``, ``bin/offsite-restore-drill`` and their cron entries are installed
    while ``offsite_backup`` is enabled, and that one run of each has succeeded (run now on a host that
    has none yet); absent while it is not (a host that stopped archiving must not report its nightly
    failures). Call it after ``backups_scheduled`` (it uses the helper that installs).

    + settings: the stage's settings (``offsite_backup`` and ``host.deploy_user`` are read)
    + layout: where the stack lives on the host

    **Example:**

    .. code:: python

        offsite_backups_scheduled(settings, HostLayout(settings.host.base_dir))
    """
    offsite, user, paths = settings.offsite_backup, settings.host.deploy_user, BackupPaths(layout)
    if not offsite.enabled:
        files.file(name=f"Ensure {OFFSITE_CRON_FILE} is absent (offsite_backup is disabled)",
                   path=OFFSITE_CRON_FILE, present=False)
        files.file(name=f"Ensure {paths.offsite_script} is absent", path=paths.offsite_script, present=False)
        files.file(name=f"Ensure {DRILL_CRON_FILE} is absent", path=DRILL_CRON_FILE, present=False)
        files.file(name=f"Ensure {paths.drill_script} is absent", path=paths.drill_script, present=False)
        return
    files.template(name=f"Ensure {paths.offsite_script} backs up, checks and verifies the off-site repository",
                   src=str(TEMPLATES / "offsite-backup.sh.j2"), dest=paths.offsite_script,
                   user="root", group=user, mode="750",
                   **offsite_script_values(offsite, user, paths, stage=settings.stage.value))
    files.put(name=f"Ensure cron runs {paths.offsite_script} at '{offsite.schedule}' as {user}",
              src=io.StringIO(offsite_cron_file(offsite, user, paths)), dest=OFFSITE_CRON_FILE,
              user="root", group="root", mode="644")
    offsite_first_run_done(name=f"Ensure an off-site run has succeeded on this host ({paths.offsite_last_success})",
                           script=paths.offsite_script, stamp=paths.offsite_last_success, stanza=offsite.stanza,
                           helper=paths.helper, stage=settings.stage.value)
    files.template(name=f"Ensure {paths.drill_script} restores the off-site repository into a scratch instance",
                   src=str(TEMPLATES / "offsite-restore-drill.sh.j2"), dest=paths.drill_script,
                   user="root", group=user, mode="750", **drill_script_values(settings, paths))
    files.put(name=f"Ensure cron runs {paths.drill_script} at '{offsite.drill_schedule}' as {user}",
              src=io.StringIO(drill_cron_file(offsite, user, paths)), dest=DRILL_CRON_FILE,
              user="root", group="root", mode="644")
    offsite_first_run_done(name=f"Ensure a restore drill has passed on this host ({paths.drill_last_success})",
                           script=paths.drill_script, stamp=paths.drill_last_success, stanza=offsite.stanza,
                           helper=paths.helper, stage=settings.stage.value)