"""Retention on schedule: the host deletes the rows kept past their retention every night.

``cleanup_scheduled(settings, layout)`` installs on the VPS ``{base_dir}/bin/cleanup``
(templates/cleanup/cleanup.sh.j2: the same statement as ``resto STAGE cleanup``, under the
deploy lock, audited) and ``CRON_FILE``, which runs it as root on ``retention.schedule``.
"""

from __future__ import annotations

import io

from pyinfra.api import deploy
from pyinfra.operations import files

from restobot.commands import CLEANUP_SQL, HostLayout, database_read, shell_text
from restobot.operations.backup import LOG_DIR
from restobot.operations.cron import managed_cron_file
from restobot.settings import REPO_ROOT, Settings

TEMPLATE = REPO_ROOT / "templates" / "cleanup" / "cleanup.sh.j2"
CRON_FILE = "/etc/cron.d/restobot-cleanup"
CLEANUP_LOG = f"{LOG_DIR}/cleanup.log"


def retention_variables(settings: Settings) -> dict[str, str]:
    """The ages past which rows are deleted, as ``commands.PAST_RETENTION``'s psql variables."""
    return {"inbound_days": str(settings.retention.inbound_messages_days),
            "outbound_days": str(settings.retention.outbound_messages_days),
            "security_days": str(settings.retention.security_events_days),
            "executions_hours": str(settings.n8n.executions_max_age_hours)}


def script_path(layout: HostLayout) -> str:
    return f"{layout.base_dir}/bin/cleanup"


def cron_file(settings: Settings, script: str) -> str:
    """The whole ``CRON_FILE`` (pure: tested by value)."""
    return managed_cron_file("restobot/operations/cleanup.py", "rows past their retention deleted nightly",
                             "Change `retention.schedule` in the inventory and deploy again",
                             f"{settings.retention.schedule} root {shell_text([script])} >/dev/null")


def script_values(settings: Settings, layout: HostLayout) -> dict[str, str]:
    """What the template is rendered with; shell words come quoted (pure)."""
    variables = retention_variables(settings)
    return {
        "cron_file": CRON_FILE,
        "inbound_days": variables["inbound_days"],
        "outbound_days": variables["outbound_days"],
        "security_days": variables["security_days"],
        "executions_hours": variables["executions_hours"],
        "audit_text": layout.audit_log,
        "log_text": CLEANUP_LOG,
        "script_text": script_path(layout),
        "lock_dir": shell_text([layout.lock_dir]),
        "audit_log": shell_text([layout.audit_log]),
        "log": shell_text([CLEANUP_LOG]),
        "current": shell_text([layout.current]),
        "delete_command": shell_text(database_read(CLEANUP_SQL, variables)),
    }


@deploy("Ensure the rows past their retention are deleted on schedule")
def cleanup_scheduled(settings: Settings, layout: HostLayout) -> None:
    """
    Ensure ``bin/cleanup`` and its cron entry are installed (root's: it takes the deploy lock
    and writes the audit log, as the deploy does).

    + settings: the stage's settings (``retention`` and ``n8n.executions_max_age_hours`` are read)
    + layout: where the stack lives on the host

    **Example:**

    .. code:: python

        cleanup_scheduled(settings, HostLayout(settings.host.base_dir))
    """
    script = script_path(layout)
    files.template(name=f"Ensure {script} deletes the rows past their retention",
                   src=str(TEMPLATE), dest=script, user="root", group="root", mode="700",
                   **script_values(settings, layout))
    files.file(name=f"Ensure {CLEANUP_LOG} is root's, mode 640", path=CLEANUP_LOG,
               user="root", group="adm", mode="640")
    files.put(name=f"Ensure cron runs {script} at '{settings.retention.schedule}'",
              src=io.StringIO(cron_file(settings, script)), dest=CRON_FILE, user="root", group="root", mode="644")
