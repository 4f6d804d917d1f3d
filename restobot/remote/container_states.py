"""The containers' states as Prometheus metrics, written ON THE VPS for node-exporter's textfile collector.

Shipped in the release, installed by ``restobot.operations.monitoring.container_states_scheduled`` to
``{base_dir}/bin/restobot_container_states.py`` and run by cron once a minute as root (docker's socket),
with the host's ``python3`` as a lone file: standard library only, no import from the rest of
``restobot``, Python 3.9+. It samples ``--samples`` times, ``--every`` seconds apart (cron cannot run
more often than once a minute), and each time replaces ``restobot_containers.prom`` in one rename::

    restobot_container_running{service="nginx"} 1      0: stopped, exited, restarting, or no container
    restobot_container_healthy{service="nginx"} 1      0: docker says unhealthy (absent while starting
                                                       or without a healthcheck)
    restobot_container_cpu_percent{service="n8n-main"} 3.5   docker stats, share of one core
    restobot_backup_last_success_timestamp_seconds 1.79e9  the nightly backup's last-success stamp's time
                                                       (--backup-stamp; absent while there is none)
    restobot_backup_last_run_success 1                 0: the backup's last run failed (--backup-last-run,
                                                       the outcome it records; absent while there is none)
    restobot_offsite_backup_last_success_timestamp_seconds, restobot_offsite_backup_last_run_success
                                                       the same of the nightly off-site backup (--offsite-stamp,
                                                       --offsite-last-run; absent while off-site is off)
    restobot_offsite_restore_drill_last_success_timestamp_seconds, restobot_offsite_restore_drill_last_run_success
                                                       the same of the off-site restore drill (--drill-stamp,
                                                       --drill-last-run)

One-off containers (``docker compose run``) are left out: they carry their service's label too.

    python3 restobot_container_states.py --dir /opt/resto/metrics --project resto \\
        --backup-stamp /opt/resto/backups/scheduled/last-success \\
        --backup-last-run /opt/resto/state/backup-last-run --samples 4 --every 15 nginx postgres ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence

OUTPUT = "restobot_containers.prom"
HEADER = (
    "# HELP restobot_container_running 1 when the service's container is running.\n"
    "# TYPE restobot_container_running gauge\n"
    "# HELP restobot_container_healthy 1 when docker reports the service's container healthy, 0 unhealthy.\n"
    "# TYPE restobot_container_healthy gauge\n"
    "# HELP restobot_container_cpu_percent The container's CPU use, percent of one core (docker stats).\n"
    "# TYPE restobot_container_cpu_percent gauge\n"
)
BACKUP_HEADER = (
    "# HELP restobot_backup_last_success_timestamp_seconds When the nightly backup last succeeded.\n"
    "# TYPE restobot_backup_last_success_timestamp_seconds gauge\n"
)
LAST_RUN_HEADER = (
    "# HELP restobot_backup_last_run_success 1 when the nightly backup's last run succeeded, 0 when it failed.\n"
    "# TYPE restobot_backup_last_run_success gauge\n"
)
OFFSITE_HEADER = (
    "# HELP restobot_offsite_backup_last_success_timestamp_seconds When the nightly off-site backup last succeeded.\n"
    "# TYPE restobot_offsite_backup_last_success_timestamp_seconds gauge\n"
)
OFFSITE_LAST_RUN_HEADER = (
    "# HELP restobot_offsite_backup_last_run_success 1 when the nightly off-site backup's last run succeeded, "
    "0 when it failed.\n"
    "# TYPE restobot_offsite_backup_last_run_success gauge\n"
)
DRILL_HEADER = (
    "# HELP restobot_offsite_restore_drill_last_success_timestamp_seconds When the off-site restore drill last "
    "passed.\n"
    "# TYPE restobot_offsite_restore_drill_last_success_timestamp_seconds gauge\n"
)
DRILL_LAST_RUN_HEADER = (
    "# HELP restobot_offsite_restore_drill_last_run_success 1 when the off-site restore drill's last run passed, "
    "0 when it failed.\n"
    "# TYPE restobot_offsite_restore_drill_last_run_success gauge\n"
)
LAST_RUN_OUTCOMES = {"ok": 1, "failed": 0}


def ps_argv(project: str) -> List[str]:
    """Every container of the compose project, one JSON object a line."""
    return ["docker", "ps", "--all", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
            "--format", "{{json .}}"]


def stats_argv(names: Sequence[str]) -> List[str]:
    return ["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.CPUPerc}}", *names]


def labels_of(container: Dict[str, str]) -> Dict[str, str]:
    """A ``docker ps`` record's labels (``a=1,b=2``; a value holding a comma keeps only its first part)."""
    pairs = (label.partition("=") for label in container.get("Labels", "").split(","))
    return {key: value for key, separator, value in pairs if separator}


def service_of(container: Dict[str, str]) -> Optional[str]:
    """The compose service a ``docker ps`` record belongs to (its label), or None for a one-off container."""
    labels = labels_of(container)
    if labels.get("com.docker.compose.oneoff") == "True":
        return None
    return labels.get("com.docker.compose.service")


def health_of(status: str) -> Optional[int]:
    """``Up 3 minutes (healthy)`` -> 1, ``(unhealthy)`` -> 0, no or a starting healthcheck -> None."""
    if "(unhealthy)" in status:
        return 0
    if "(healthy)" in status:
        return 1
    return None


def metrics(services: Sequence[str], containers: Iterable[Dict[str, str]], cpu: Dict[str, float]) -> str:
    """The .prom text for ``services`` from ``docker ps`` records and CPU percents by container name (pure)."""
    by_service: Dict[str, Dict[str, str]] = {}
    for container in containers:
        service = service_of(container)
        # One container a service; while compose replaces one, the running one speaks.
        if service in services and (service not in by_service or container.get("State") == "running"):
            by_service[service] = container
    lines = [HEADER.rstrip("\n")]
    for service in services:
        container = by_service.get(service, {})
        running = container.get("State") == "running"
        lines.append(f'restobot_container_running{{service="{service}"}} {int(running)}')
        health = health_of(container.get("Status", "")) if running else None
        if health is not None:
            lines.append(f'restobot_container_healthy{{service="{service}"}} {health}')
        name = container.get("Names")
        if running and name in cpu:
            lines.append(f'restobot_container_cpu_percent{{service="{service}"}} {cpu[name]:g}')
    return "\n".join(lines) + "\n"


def backup_metrics(stamp_mtime: Optional[float], header: str = BACKUP_HEADER,
                   name: str = "restobot_backup_last_success_timestamp_seconds") -> str:
    """The backup's last success, from its stamp's modification time; nothing when there is no stamp (pure)."""
    if stamp_mtime is None:
        return ""
    return f"{header}{name} {stamp_mtime:.0f}\n"


def last_run_metrics(record: Optional[str], header: str = LAST_RUN_HEADER,
                     name: str = "restobot_backup_last_run_success") -> str:
    """The backup's last run from the outcome it records (``<time> ok`` or ``<time> failed``); nothing when
    there is no record or it reads otherwise (pure)."""
    words = (record or "").split()
    if len(words) != 2 or words[1] not in LAST_RUN_OUTCOMES:
        return ""
    return f"{header}{name} {LAST_RUN_OUTCOMES[words[1]]}\n"


def offsite_metrics(stamp_mtime: Optional[float], record: Optional[str]) -> str:
    """The off-site backup's last success and last run, as ``backup_metrics`` and ``last_run_metrics`` (pure)."""
    return (backup_metrics(stamp_mtime, OFFSITE_HEADER, "restobot_offsite_backup_last_success_timestamp_seconds")
            + last_run_metrics(record, OFFSITE_LAST_RUN_HEADER, "restobot_offsite_backup_last_run_success"))


def drill_metrics(stamp_mtime: Optional[float], record: Optional[str]) -> str:
    """The restore drill's last success and last run, as ``backup_metrics`` and ``last_run_metrics`` (pure)."""
    return (backup_metrics(stamp_mtime, DRILL_HEADER, "restobot_offsite_restore_drill_last_success_timestamp_seconds")
            + last_run_metrics(record, DRILL_LAST_RUN_HEADER, "restobot_offsite_restore_drill_last_run_success"))


def read_record(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def stamp_mtime(path: Optional[str]) -> Optional[float]:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def parse_ps(output: str) -> List[Dict[str, str]]:
    return [json.loads(line) for line in output.splitlines() if line.strip().startswith("{")]


def parse_stats(output: str) -> Dict[str, float]:
    """``resto-nginx-1\\t0.15%`` lines -> {name: 0.15}; unreadable lines are left out."""
    cpu: Dict[str, float] = {}
    for line in output.splitlines():
        name, _, percent = line.partition("\t")
        try:
            cpu[name.strip()] = float(percent.strip().rstrip("%"))
        except ValueError:
            continue
    return cpu


def write_atomically(directory: str, text: str) -> None:
    """Replace ``OUTPUT`` in one rename: the collector never reads half a file."""
    partial = os.path.join(directory, f".{OUTPUT}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(partial, 0o644)
    os.replace(partial, os.path.join(directory, OUTPUT))


def run(argv: List[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def sample(directory: str, project: str, services: Sequence[str], cpu_services: Sequence[str],
           backup_stamp: Optional[str], backup_last_run: Optional[str],
           offsite_stamp: Optional[str] = None, offsite_last_run: Optional[str] = None,
           drill_stamp: Optional[str] = None, drill_last_run: Optional[str] = None) -> None:
    containers = parse_ps(run(ps_argv(project)))
    names = [c["Names"] for c in containers if service_of(c) in cpu_services and c.get("State") == "running"]
    cpu = parse_stats(run(stats_argv(names))) if names else {}
    write_atomically(directory, metrics(services, containers, cpu) + backup_metrics(stamp_mtime(backup_stamp))
                     + last_run_metrics(read_record(backup_last_run))
                     + offsite_metrics(stamp_mtime(offsite_stamp), read_record(offsite_last_run))
                     + drill_metrics(stamp_mtime(drill_stamp), read_record(drill_last_run)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write the compose project's container states for node-exporter.")
    parser.add_argument("--dir", required=True, help="node-exporter's textfile directory")
    parser.add_argument("--project", required=True, help="the compose project's name")
    parser.add_argument("--samples", type=int, default=1, help="how many samples this run writes")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between two samples")
    parser.add_argument("--cpu", action="append", default=[], help="a service whose CPU use is reported")
    parser.add_argument("--backup-stamp", help="the nightly backup's last-success stamp")
    parser.add_argument("--backup-last-run", help="the outcome the nightly backup records of its last run")
    parser.add_argument("--offsite-stamp", help="the nightly off-site backup's last-success stamp")
    parser.add_argument("--offsite-last-run", help="the outcome the nightly off-site backup records of its last run")
    parser.add_argument("--drill-stamp", help="the off-site restore drill's last-success stamp")
    parser.add_argument("--drill-last-run", help="the outcome the off-site restore drill records of its last run")
    parser.add_argument("services", nargs="+", help="the services expected to run")
    args = parser.parse_args(argv)
    for index in range(args.samples):
        started = time.monotonic()
        try:
            sample(args.dir, args.project, args.services, args.cpu, args.backup_stamp, args.backup_last_run,
                   args.offsite_stamp, args.offsite_last_run, args.drill_stamp, args.drill_last_run)
        except (subprocess.SubprocessError, OSError, ValueError) as error:
            # Left as it was: a stale file keeps its last values, and RestobotContainerStateUnknown
            # fires only when it is gone. cron mails stderr.
            print(f"container states: {error}", file=sys.stderr)
        if index + 1 < args.samples:
            time.sleep(max(0.0, args.every - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
