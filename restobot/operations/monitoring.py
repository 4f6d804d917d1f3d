"""The monitoring's part on the host itself: the container states node-exporter reads.

``container_states_scheduled(settings, layout)`` installs on the VPS:

* ``{base_dir}/metrics`` (``HostLayout.textfile_dir``, 0755): node-exporter's textfile directory,
  mounted read-only into it by compose.yml;
* ``{base_dir}/bin/restobot_container_states.py``: restobot/remote/container_states.py, from the
  checkout the release was built from;
* ``CRON_FILE``: runs it every minute as root (docker's socket), sampling every
  ``monitoring.container_state_interval_seconds``; it also reports when the nightly backup last
  succeeded (its last-success stamp), which RestobotBackupTooOld reads, and whether its last run
  succeeded (the run's recorded outcome), which RestobotBackupFailed reads.

Prometheus, Alertmanager and the exporters themselves are compose services (templates/compose.yml.j2).
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from restobot.commands import LONG_RUNNING_SERVICES, MONITORING_SERVICES, HostLayout
from restobot.operations.backup import BackupPaths
from restobot.operations.cron import managed_cron_file
from restobot.render import COMPOSE_PROJECT
from restobot.settings import REPO_ROOT, Settings

CRON_FILE = "/etc/cron.d/restobot-container-states"
PROGRAM_IN_RELEASE = "restobot/remote/container_states.py"
CPU_SERVICES = ("n8n-main", "n8n-worker")


def program_path(layout: HostLayout) -> str:
    return f"{layout.base_dir}/bin/restobot_container_states.py"


def samples_per_minute(interval_seconds: int) -> int:
    """How many samples one cron run (a minute apart from the next) takes (pure)."""
    return max(1, 60 // interval_seconds)


def states_argv(layout: HostLayout, interval_seconds: int) -> list[str]:
    """The program's command line: every service of the stack and of its monitoring (pure)."""
    return [
        "python3", program_path(layout), "--dir", layout.textfile_dir, "--project", COMPOSE_PROJECT,
        "--backup-stamp", BackupPaths(layout).last_success, "--backup-last-run", BackupPaths(layout).last_run,
        "--offsite-stamp", BackupPaths(layout).offsite_last_success,
        "--offsite-last-run", BackupPaths(layout).offsite_last_run,
        "--drill-stamp", BackupPaths(layout).drill_last_success,
        "--drill-last-run", BackupPaths(layout).drill_last_run,
        "--samples", str(samples_per_minute(interval_seconds)), "--every", str(interval_seconds),
        *(argument for service in CPU_SERVICES for argument in ("--cpu", service)),
        *LONG_RUNNING_SERVICES, *MONITORING_SERVICES,
    ]


def cron_file(layout: HostLayout, interval_seconds: int) -> str:
    """The whole ``CRON_FILE`` (pure: tested by value)."""
    return managed_cron_file("restobot/operations/monitoring.py", "the containers' states for node-exporter",
                             "Change `monitoring.container_state_interval_seconds` and deploy again",
                             f"* * * * * root {shlex.join(states_argv(layout, interval_seconds))} >/dev/null")


@deploy("Ensure the container states are written for node-exporter")
def container_states_scheduled(settings: Settings, layout: HostLayout) -> None:
    """
    Ensure node-exporter's textfile directory exists and cron writes the containers' states into it.

    + settings: the stage's settings (``monitoring.container_state_interval_seconds`` is read)
    + layout: where the stack lives on the host

    **Example:**

    .. code:: python

        container_states_scheduled(settings, HostLayout(settings.host.base_dir))
    """
    interval = settings.monitoring.container_state_interval_seconds
    source = Path(host.data.get("source") or REPO_ROOT)
    files.directory(name=f"Ensure {layout.textfile_dir} holds the metrics node-exporter reads",
                    path=layout.textfile_dir, user="root", group="root", mode="755")
    files.directory(name=f"Ensure {layout.base_dir}/bin exists", path=f"{layout.base_dir}/bin")
    files.put(name=f"Ensure {program_path(layout)} is the released container-state program",
              src=str(source / PROGRAM_IN_RELEASE), dest=program_path(layout),
              user="root", group="root", mode="755")
    files.put(name=f"Ensure cron writes the container states every {interval} s",
              src=io.StringIO(cron_file(layout, interval)), dest=CRON_FILE,
              user="root", group="root", mode="644")
