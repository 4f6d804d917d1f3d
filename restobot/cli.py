"""``resto STAGE COMMAND``: the runbook's day-2 procedures, one command each, over the deploy's inventory.

    resto production ps                     # every service: state, health, start time
    resto production logs n8n-main --tail 50
    resto production executions --failed --json
    resto production restart n8n-worker     # takes the deploy lock, appends to the audit log

It reads the stage's inventory (``inventory/STAGE.py``, or ``--inventory FILE``) and
its secrets exactly as the deploy does (restobot/settings.py), and reaches the VPS
over SSH with the same rules: the host key pinned by the inventory, never an unknown
one. Every argument is checked before anything connects. The commands it runs on the
host are restobot/commands.py's builders (SQL is fixed text, values are psql variables).

Read commands never take the deploy lock and take ``--json``; commands that change the
host (``start``, ``stop``, ``restart``, ``dlq replay``, ``cleanup``, ``migrations apply``,
``backup now``, ``restore``, ``quarantine add|remove``, ``secrets rotate``, ``lock release``) take the lock first (or
release it, on purpose) and append one line to the host's audit log.

Exit status, for scripts:

    0  done (a read command read the host, whatever it found)
    1  the host answered with a failure (a command failed on it, a service did not
       become healthy, ``ps --check`` found a service not running healthy)
    2  bad input or settings: unknown stage, service, channel, count or duration;
       invalid inventory or secrets. Nothing was connected to, nothing changed
       (a backup FILE the host does not hold, or pg_restore cannot read: the host
       was only read)
    3  the VPS could not be reached, or its host key is not the pinned one
    4  refused: the deploy lock is held by someone else (nothing changed)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from restobot import commands
from restobot.commands import LONG_RUNNING_SERVICES, HostLayout, shell_text
from restobot.hosts import InventoryError, changed_key_message, unknown_key_message
from restobot.operations.backup import BACKUP_LOG, BackupPaths
from restobot.rotation import (
    DEFAULT_OVERLAP_SECONDS,
    MAX_OVERLAP_SECONDS,
    Rotation,
    RotationRefused,
    check_kept_in_file,
    generated_value,
    issued_value,
    role_password_sql,
    rotation_for,
    scram_sha256_verifier,
    secrets_file_written,
    with_values,
)
from restobot.settings import (
    CHANNELS,
    REPO_ROOT,
    Settings,
    SettingsError,
    Stage,
    load_settings,
    read_env_file,
    secrets_file,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_LOCKED = 0, 1, 2, 3, 4
STAGES = tuple(stage.value for stage in Stage)
MAX_LOG_LINES = 10_000
MAX_ROWS = 1_000
MAX_WINDOW_SECONDS = 366 * 86_400
HEALTHY_TIMEOUT_S = 180
DURATION = re.compile(r"^(?P<count>[1-9][0-9]{0,6})(?P<unit>[smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class CliError(click.ClickException):
    """A failure the operator can act on: printed as ``error: ...``, with its exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class UsageProblem(CliError):
    """Bad input or settings, found before anything connected: exit 2."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)


# --- pure parts: durations, parsers (unit-tested by value) ---------------------------------


def parse_duration(text: str) -> int:
    """``30s``, ``5m``, ``1h``, ``7d`` -> seconds; ValueError with the rule otherwise."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not a duration such as 30s, 5m, 1h or 7d (a whole number, then s, m, h or d)")
    seconds = int(match["count"]) * UNIT_SECONDS[match["unit"]]
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"'{text}' is longer than the longest window, 366d")
    return seconds


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


LOCK_INFO = re.compile(r"^holder=(?P<holder>\S+) action=(?P<action>.*?) release=(?P<release>\S+) since=(?P<since>\S+)$")
AUDIT_LINE = re.compile(
    r"^(?P<time>\S+) (?P<action>.+?) release=(?P<release>\S+) by=(?P<by>\S+) result=(?P<result>.*?)"
    r"(?: duration=(?P<duration_s>[0-9.]+)s)?$"
)
# docker compose logs: "SERVICE-N  | TIME TEXT" (compose names the replica, not the container).
LOG_LINE = re.compile(r"^(?P<service>\S+?)-(?P<replica>\d+)\s+\| (?:(?P<time>\d{4}-\d\d-\d\dT\S+) )?(?P<text>.*)$")


def parse_lock_status(lines: Sequence[str]) -> dict[str, Any]:
    """``lock_status``'s output -> ``{"held": False}`` or ``{"held": True, "holder": ..., ...}``.

    A lock directory without its info (a run killed between ``mkdir`` and writing it)
    is held by an unknown holder."""
    lines = [line.strip() for line in lines if line.strip()]
    if not lines or lines[0] != "held":
        return {"held": False}
    info = " ".join(lines[1:])
    match = LOCK_INFO.match(info)
    fields = match.groupdict() if match else {"holder": None, "action": None, "release": None, "since": None}
    return {"held": True, **fields, "info": info or None}


def parse_audit(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Audit log lines -> records; a line of another shape keeps its text alone."""
    records: list[dict[str, Any]] = []
    for line in (line.rstrip("\n") for line in lines):
        if not line.strip():
            continue
        match = AUDIT_LINE.match(line)
        if not match:
            records.append({"line": line})
            continue
        record: dict[str, Any] = match.groupdict()
        record["duration_s"] = float(record["duration_s"]) if record["duration_s"] else None
        records.append(record)
    return records


def parse_json_lines(lines: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON object a line (docker's ``--format '{{json .}}'``)."""
    return [json.loads(line) for line in lines if line.strip()]


def parse_containers(lines: Sequence[str]) -> list[dict[str, Any]]:
    """``project_containers_inspected``'s lines -> containers sorted by service, names without docker's ``/``."""
    containers = parse_json_lines(lines)
    for container in containers:
        container["name"] = str(container.get("name") or "").lstrip("/")
    return sorted(containers, key=lambda c: (str(c.get("service")), c["name"]))


def unhealthy_services(containers: Sequence[Mapping[str, Any]]) -> list[str]:
    """The long-running services not running healthy (or not there at all)."""
    fine = {c["service"] for c in containers if c.get("state") == "running" and c.get("health") in ("healthy", None)}
    return [service for service in LONG_RUNNING_SERVICES if service not in fine]


def parse_logs(lines: Sequence[str]) -> list[dict[str, Any]]:
    """``docker compose logs --timestamps`` lines -> ``{"service", "replica", "time", "text"}``
    (a line of another shape keeps its text alone)."""
    records: list[dict[str, Any]] = []
    for line in lines:
        match = LOG_LINE.match(line)
        if match:
            records.append({**match.groupdict(), "replica": int(match["replica"])})
        elif line.strip():
            records.append({"service": None, "replica": None, "time": None, "text": line})
    return records


def parse_percent(text: str) -> float | None:
    try:
        return float(text.strip().rstrip("%"))
    except (AttributeError, ValueError):
        return None


def parse_stats(lines: Sequence[str]) -> list[dict[str, Any]]:
    """``docker stats --format '{{json .}}'`` lines -> containers with numeric percentages."""
    return sorted(
        (
            {
                "name": row.get("Name"),
                "cpu_percent": parse_percent(row.get("CPUPerc", "")),
                "memory_percent": parse_percent(row.get("MemPerc", "")),
                "memory_usage": row.get("MemUsage"),
                "net_io": row.get("NetIO"),
                "block_io": row.get("BlockIO"),
                "pids": row.get("PIDs"),
            }
            for row in parse_json_lines(lines)
        ),
        key=lambda row: str(row["name"]),
    )


def parse_df(lines: Sequence[str]) -> dict[str, Any] | None:
    """``df -P -k PATH`` -> the file system's size, use and mount point (None when unreadable)."""
    rows = [line.split() for line in lines if line.strip()]
    if len(rows) < 2 or len(rows[-1]) < 6:
        return None
    filesystem, total, used, available, capacity, mount = rows[-1][:6]
    return {
        "filesystem": filesystem, "mount": mount, "total_kib": int(total), "used_kib": int(used),
        "available_kib": int(available), "used_percent": parse_percent(capacity),
    }


def stats_alerts(containers: Sequence[Mapping[str, Any]], disk: Mapping[str, Any] | None,
                 settings: Settings) -> list[str]:
    """What is above the runbook's thresholds (``monitoring.*`` settings)."""
    limits = settings.monitoring
    alerts = []
    for row in containers:
        if (row["cpu_percent"] or 0) > limits.cpu_percent:
            alerts.append(f"{row['name']}: CPU {row['cpu_percent']}% > {limits.cpu_percent}% (monitoring.cpu_percent)")
        if (row["memory_percent"] or 0) > limits.memory_percent:
            alerts.append(f"{row['name']}: memory {row['memory_percent']}% > {limits.memory_percent}% "
                          "(monitoring.memory_percent)")
    if disk and (disk["used_percent"] or 0) > limits.disk_percent:
        alerts.append(f"disk {disk['mount']}: {disk['used_percent']}% > {limits.disk_percent}% (monitoring.disk_percent)")
    return alerts


def parse_json_document(lines: Sequence[str]) -> Any:
    """The one JSON document a ``json_rows`` query (or ``pgbackrest --output=json``) printed.

    Not strict: pgBackRest quotes what it could not parse raw, control characters included (an info file
    read with another passphrase); psql's JSON has none."""
    text = "\n".join(lines).strip()
    if not text:
        raise ValueError("psql printed nothing")
    return json.loads(text, strict=False)


@dataclasses.dataclass(frozen=True)
class LedgerRecord:
    """A row of ``schema_migrations`` as the tool reads it (a ``LedgerEntry`` of the migration plan)."""

    filename: str
    checksum: str
    backward_compatible: bool
    applied_at: datetime | None = None
    duration_ms: int | None = None


def offsite_summary(stanzas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``pgbackrest --output=json info`` of one stanza, as the operator reads it (times in UTC, ISO 8601)."""
    [stanza] = stanzas
    archives = stanza.get("archive") or []
    backups = [
        {"label": b["label"], "type": b["type"],
         "started": utc_iso(b["timestamp"]["start"]), "stopped": utc_iso(b["timestamp"]["stop"]),
         "database_bytes": b["info"]["size"], "repository_bytes": b["info"]["repository"]["delta"]}
        for b in stanza.get("backup") or []
    ]
    from restobot.offsite_restore import repository_problem

    status = stanza["status"]
    return {
        "stanza": stanza["name"],
        "status": status["message"],
        "problem": repository_problem(stanza),
        "cipher": stanza.get("cipher", "none"),
        "wal_min": min((a.get("min") or "" for a in archives), default=""),
        "wal_max": max((a.get("max") or "" for a in archives), default=""),
        "backups": backups,
        "healthy": status["code"] == 0 and any(b["type"] == "full" for b in backups),
    }


def utc_iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def migration_status(manifest_json: str, ledger: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The current release's migrations against the ledger: each file applied, pending or changed,
    and the applied files the release does not know (decided by the deploy's own migration plan)."""
    from restobot.release_archive import ReleaseManifest
    from restobot.remote.migrate.plan import make_plan

    manifest = ReleaseManifest.from_json(manifest_json)
    applied = {
        row["filename"]: LedgerRecord(row["filename"], row["checksum"], bool(row["backward_compatible"]),
                                      datetime.fromisoformat(row["applied_at"]) if row.get("applied_at") else None,
                                      row.get("duration_ms"))
        for row in ledger
    }
    plan = make_plan(manifest.migrations, applied)
    pending = {m.filename for m in plan.pending}
    changed = {m.filename for m, _ in plan.changed}
    files = []
    for migration in manifest.migrations:
        row = applied.get(migration.filename)
        state = "changed" if migration.filename in changed else "pending" if migration.filename in pending else "applied"
        files.append({"filename": migration.filename, "state": state,
                      "applied_at": row.applied_at.isoformat() if row and row.applied_at else None, "duration_ms": row.duration_ms if row else None,
                      "backward_compatible": migration.backward_compatible})
    return {
        "release": manifest.name,
        "migrations": files,
        "pending": sorted(pending),
        "unknown": [a.filename for a in plan.unknown],
        "tolerated": [a.filename for a in plan.tolerated],
        "problems": plan.problems(),
    }


SCHEDULED_DUMP = re.compile(r"^resto-\d{8}T\d{6}Z\.dump$")
PARTIAL_DUMP = re.compile(r"^resto-\d{8}T\d{6}Z\.partial\.dump$")
SAFETY_DUMP = re.compile(r"^before-restore-\d{8}T\d{6}Z\.dump$")
PREDEPLOY_DUMP = re.compile(r"^before-(?P<release>.+)\.dump$")
DUMP_MODE = "0600"


def dump_kind(path: str, backups_dir: str, scheduled_dir: str) -> tuple[str, str | None]:
    """(kind, release) of a dump by where it is and its name: ``scheduled`` (bin/backup's, in
    ``scheduled_dir``), ``partial`` (one bin/backup is writing, or a killed run left), ``pre-deploy``
    (before a release migrated, with that release), ``safety`` (what a restore replaced), else ``other``."""
    directory, _, name = path.rpartition("/")
    if directory == scheduled_dir:
        return ("scheduled" if SCHEDULED_DUMP.match(name) else "partial" if PARTIAL_DUMP.match(name) else "other"), None
    if directory == backups_dir:
        if SAFETY_DUMP.match(name):
            return "safety", None
        if match := PREDEPLOY_DUMP.match(name):
            return "pre-deploy", match["release"]
    return "other", None


def parse_backups(lines: Sequence[str], backups_dir: str, scheduled_dir: str) -> list[dict[str, Any]]:
    """``commands.backups_listed``'s lines -> the dumps, newest first: kind, release (pre-deploy ones),
    path, size, created (the file's time), age by the host's clock, mode and whether it is 0600, and for
    a scheduled dump whether its metadata was written (``complete``) and the row counts recorded in it."""
    now, dumps = None, []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "now":
            now = int(rest)
        elif word == "dump":
            mtime, size, mode, path = rest.split(" ", 3)
            kind, release = dump_kind(path, backups_dir, scheduled_dir)
            dumps.append({"kind": kind, "release": release, "path": path, "size": int(size),
                          "created_at": utc_iso(int(mtime)), "mtime": int(mtime), "mode": f"{int(mode, 8):04o}",
                          "mode_ok": f"{int(mode, 8):04o}" == DUMP_MODE, "complete": False if kind == "scheduled" else None,
                          "rows": None})
        elif word == "meta" and dumps:
            try:
                metadata = json.loads(rest)
            except ValueError:
                metadata = {}
            if dumps[-1]["kind"] == "scheduled":
                dumps[-1]["complete"] = True
                tables = metadata.get("tables") if isinstance(metadata, dict) else None
                dumps[-1]["rows"] = tables if isinstance(tables, dict) else None
    for dump in dumps:
        dump["age_seconds"] = max(0, (now if now is not None else dump["mtime"]) - dump.pop("mtime"))
    return sorted(dumps, key=lambda dump: (dump["age_seconds"], dump["path"]))


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = float(size), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def human_age(seconds: int) -> str:
    for unit, length in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"


# --- the inventory and the SSH connection -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """The stage's one VPS: its pyinfra host entry and validated settings."""

    stage: str
    inventory: Path
    host_name: str
    data: Mapping[str, Any]
    settings: Settings

    @property
    def layout(self) -> HostLayout:
        return HostLayout(self.settings.host.base_dir)

    @property
    def address(self) -> str:
        return f"{self.data.get('ssh_user', 'root')}@{self.data['ssh_hostname']}:{self.data.get('ssh_port', 22)}"


def check_stage(stage: str, inventory: Path | None, root: Path = REPO_ROOT) -> Path:
    """The inventory file of ``stage``; UsageProblem for an unknown stage or a missing file."""
    if stage not in STAGES:
        raise UsageProblem(
            f"STAGE: unknown stage '{stage}'; the stages are {', '.join(STAGES)} (one inventory/STAGE.py each)"
        )
    path = inventory if inventory is not None else root / "inventory" / f"{stage}.py"
    if not path.is_file():
        raise UsageProblem(f"--inventory: {path} is not a file; give the stage's pyinfra inventory "
                           f"(default inventory/{stage}.py)")
    return path


def project_root(inventory: Path) -> Path:
    """The checkout an inventory belongs to: the parent of its ``inventory/`` folder, else its own folder."""
    folder = inventory.resolve().parent
    return folder.parent if folder.name == "inventory" else folder


@contextlib.contextmanager
def project_importable(inventory: Path):
    """The checkout holding ``inventory/`` first on ``sys.path`` while the inventory runs, as under
    ``pyinfra`` or ``python -m`` from that checkout: the ``resto`` script runs from any directory,
    and an inventory may import its checkout's modules (``inventory/local.py`` imports ``harness``)."""
    root = str(project_root(inventory))
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)


def load_target(stage: str, inventory: Path) -> Target:
    """Execute the inventory as pyinfra does (its settings validated there) and take its one host."""
    from restobot.golive import inventory_hosts

    try:
        with project_importable(inventory):
            namespace = runpy.run_path(str(inventory))
        hosts = inventory_hosts(namespace)
        if len(hosts) != 1:
            names = ", ".join(host.name for host in hosts) or "none"
            raise UsageProblem(f"--inventory: {inventory} defines {len(hosts)} hosts made with "
                               f"restobot.hosts.vps(SETTINGS) ({names}); this tool acts on exactly one")
        host = hosts[0]
        settings = load_settings(host.data["resto"])
    except (InventoryError, SettingsError) as error:
        raise UsageProblem(f"{error}\nnothing was connected to") from None
    if settings.stage.value != stage:
        raise UsageProblem(f"STAGE: '{stage}' but {inventory} is the inventory of stage '{settings.stage.value}'; "
                           "name the stage the inventory deploys")
    return Target(stage, inventory, host.name, host.data, settings)


@dataclasses.dataclass(frozen=True)
class Result:
    """One remote command's outcome."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Remote:
    """An SSH connection to the VPS (paramiko, host key pinned); runs argv lists, each part quoted."""

    def __init__(self, client) -> None:
        self.client = client

    def run(self, argv: Sequence[str], timeout: float = 120, stdin: str | None = None) -> Result:
        """Run ``argv`` (``stdin``, if any, written to it then closed: how a secret reaches a command),
        its output read to the end of both streams (sshd may report the exit status before the last
        output: waiting for the status alone loses lines)."""
        channel = self.client.get_transport().open_session(timeout=15)
        channel.settimeout(timeout)
        channel.exec_command(shell_text(argv))
        if stdin is not None:
            channel.sendall(stdin.encode())
            channel.shutdown_write()
        err = bytearray()

        def drain_stderr() -> None:
            with contextlib.suppress(OSError):
                while chunk := channel.recv_stderr(65536):
                    err.extend(chunk)

        reader = threading.Thread(target=drain_stderr, daemon=True)
        reader.start()
        out = bytearray()
        try:
            while chunk := channel.recv(65536):
                out += chunk
        except socket.timeout:
            channel.close()
            raise CliError(f"`{shell_text(argv)[:200]}` printed nothing for {timeout:.0f} s on the host; "
                           "stopped waiting") from None
        reader.join(timeout)
        status = channel.recv_exit_status()
        channel.close()
        return Result(tuple(argv), status, out.decode(errors="replace"), err.decode(errors="replace"))

    def follow(self, argv: Sequence[str], on_line: Callable[[str], None]) -> int:
        """Run ``argv`` and hand each line of its output to ``on_line`` as it comes, until the command
        ends (its exit status) or the operator interrupts (Ctrl-C: the channel is closed, 0)."""
        channel = self.client.get_transport().open_session(timeout=15)
        channel.set_combine_stderr(True)
        channel.exec_command(shell_text(argv))
        pending = b""
        try:
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace"))
            if pending:
                on_line(pending.decode(errors="replace"))
            return channel.recv_exit_status()
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            channel.close()

    def check(self, argv: Sequence[str], what: str, timeout: float = 120, stdin: str | None = None) -> Result:
        """Run ``argv``; a non-zero exit is a CliError naming ``what`` with the command's stderr."""
        result = self.run(argv, timeout, stdin)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip() or "no output")[-2000:]
            raise CliError(f"{what} failed on the host (exit {result.exit_status}):\n{detail}")
        return result

    def close(self) -> None:
        self.client.close()


def connect(target: Target) -> Remote:
    """Log in to the VPS with the inventory's SSH settings; only a host key the inventory pins is accepted.

    With a pinned key (``ssh.host_key`` or ``ssh.known_hosts_file``) only that known_hosts file is
    read: an entry for the same host in ~/.ssh/known_hosts cannot stand in for the pin.
    """
    import paramiko

    data, ssh = target.data, target.settings.ssh
    client = paramiko.SSHClient()
    if data.get("ssh_known_hosts_file"):
        client.load_host_keys(str(data["ssh_known_hosts_file"]))
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = data.get("ssh_key")
    try:
        client.connect(hostname=data["ssh_hostname"], port=int(data.get("ssh_port", 22)),
                       username=data.get("ssh_user", "root"), key_filename=key, timeout=15,
                       allow_agent=not key, look_for_keys=not key)
    except paramiko.BadHostKeyException:
        raise CliError(changed_key_message(ssh), EXIT_UNREACHABLE) from None
    except paramiko.SSHException as error:
        if "not found in known_hosts" in str(error):
            raise CliError(unknown_key_message(ssh), EXIT_UNREACHABLE) from None
        raise CliError(f"cannot log in to {target.address}: {error}", EXIT_UNREACHABLE) from None
    except OSError as error:
        raise CliError(f"cannot reach {target.address}: {error.strerror or error}", EXIT_UNREACHABLE) from None
    return Remote(client)


class Session:
    """One invocation: the stage, its inventory loaded and the host connected on first use."""

    def __init__(self, stage: str, inventory: Path, connector: Callable[[Target], Remote] | None = None):
        self.stage, self.inventory = stage, inventory
        self.connector = connector
        self._target: Target | None = None
        self._remote: Remote | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = load_target(self.stage, self.inventory)
        return self._target

    @property
    def remote(self) -> Remote:
        if self._remote is None:
            target = self.target
            self._remote = (self.connector or connect)(target)
        return self._remote

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()

    # -- reads shared by several commands

    def current_release(self) -> str | None:
        link = self.remote.check(commands.current_release(self.target.layout), "reading the current release").stdout
        return link.strip().rstrip("/").rsplit("/", 1)[-1] or None

    def require_release(self) -> str:
        release = self.current_release()
        if release is None:
            raise CliError(f"nothing is deployed on {self.target.host_name}: {self.target.layout.current} is missing; "
                           f"deploy first (scripts/deploy {self.stage})")
        return release

    def database(self, sql: str, variables: Mapping[str, str] | None = None, what: str = "the database read") -> Any:
        result = self.remote.check(commands.database_read(sql, variables), what)
        try:
            return parse_json_document(result.lines)
        except ValueError as error:
            raise CliError(f"{what}: psql's answer is not JSON ({error}): {result.stdout[:300]}") from None

    def containers(self) -> list[dict[str, Any]]:
        return parse_containers(self.remote.check(commands.project_containers_inspected(), "docker inspect").lines)


# --- output -------------------------------------------------------------------------------


def console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as one JSON document, or as the operator reads it."""
    if as_json:
        click.echo(json.dumps(data, default=str, sort_keys=False))
    else:
        render()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if title:
        say(title)
    grid = Table()
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    console().print(grid)


def say(text: str) -> None:
    console().print(text, markup=False)


# --- the commands ---------------------------------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of a table")
SERVICE = click.Choice(LONG_RUNNING_SERVICES)
CHANNEL = click.Choice(CHANNELS)


def limit_option(default: int, what: str):
    return click.option("--limit", type=click.IntRange(1, MAX_ROWS), default=default, show_default=True,
                        help=f"at most this many {what} (1 to {MAX_ROWS})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stage", metavar="STAGE")
@click.option("--inventory", type=click.Path(dir_okay=False, path_type=Path), envvar="RESTO_INVENTORY",
              help="the stage's pyinfra inventory file (default inventory/STAGE.py; env RESTO_INVENTORY)")
@click.pass_context
def cli(ctx: click.Context, stage: str, inventory: Path | None) -> None:
    """The runbook's procedures on STAGE's VPS (local, staging, production).

    Exit status: 0 done, 1 failed on the host, 2 bad input (nothing connected,
    nothing changed), 3 host unreachable or its key not the pinned one, 4 the
    deploy lock is held by someone else.
    """
    session = Session(stage, check_stage(stage, inventory))
    ctx.obj = session
    ctx.call_on_close(session.close)


pass_session = click.pass_obj


@cli.command()
@json_option
@click.option("--check", is_flag=True, help="exit 1 when a service is not running healthy")
@pass_session
def ps(session: Session, as_json: bool, check: bool) -> None:
    """Every service: state, health, start time, restarts (runbook: « État de tous les containers »)."""
    release = session.current_release()
    containers = session.containers()
    missing = unhealthy_services(containers)
    data = {"stage": session.stage, "release": release, "containers": containers, "not_healthy": missing}

    def render():
        table(f"{session.target.host_name}: release {release or '(none)'}",
              ["service", "container", "state", "health", "started at", "restarts", "image"],
              [(c["service"], c["name"], c["state"], c["health"] or "-", c["started_at"], c["restart_count"],
                c["image"]) for c in containers])
        if missing:
            say(f"not running healthy: {', '.join(missing)}")

    emit(as_json, data, render)
    if check and missing:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.argument("service", type=SERVICE, required=False, metavar="[SERVICE]")
@click.option("--tail", type=click.IntRange(1, MAX_LOG_LINES), default=100, show_default=True,
              help=f"the last N lines of each service (1 to {MAX_LOG_LINES})")
@click.option("-f", "--follow", is_flag=True, help="then the new lines as they come, until Ctrl-C "
              "(with --json: one JSON object a line)")
@json_option
@pass_session
def logs(session: Session, service: str | None, tail: int, follow: bool, as_json: bool) -> None:
    """The last log lines of SERVICE (default: every service), timestamped."""
    release_dir = session.target.layout.current
    session.require_release()
    argv = commands.compose_logs_tail(release_dir, [service] if service else [], tail, follow=follow)
    if follow:

        def on_line(line: str) -> None:  # click.echo flushes: each line shows as it comes
            if not as_json:
                click.echo(line)
            elif line.strip():
                click.echo(json.dumps(parse_logs([line])[0]))

        status = session.remote.follow(argv, on_line)
        if status not in (EXIT_OK, None):
            raise CliError(f"docker compose logs --follow ended with exit {status}")
        return
    result = session.remote.check(argv, "docker compose logs", timeout=300)
    if as_json:
        emit(True, {"stage": session.stage, "service": service, "lines": parse_logs(result.lines)}, lambda: None)
    else:
        click.echo(result.stdout, nl=False)


@cli.command()
@json_option
@pass_session
def stats(session: Session, as_json: bool) -> None:
    """CPU, memory, network and disk I/O of each container once, and the disk of the base directory,
    against the runbook's thresholds (monitoring.*)."""
    containers = parse_stats(session.remote.check(commands.project_container_stats(), "docker stats", 120).lines)
    disk = parse_df(session.remote.check(commands.disk_usage(session.target.layout.base_dir), "df").lines)
    alerts = stats_alerts(containers, disk, session.target.settings)
    data = {"stage": session.stage, "containers": containers, "disk": disk, "alerts": alerts}

    def render():
        table("containers", ["container", "CPU %", "memory %", "memory", "net I/O", "block I/O", "pids"],
              [(c["name"], c["cpu_percent"], c["memory_percent"], c["memory_usage"], c["net_io"], c["block_io"],
                c["pids"]) for c in containers])
        if disk:
            say(f"disk {disk['mount']}: {disk['used_percent']}% used, {disk['available_kib'] // 1024} MiB free")
        for alert in alerts:
            say(f"ALERT {alert}")

    emit(as_json, data, render)


def parse_smoke(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The smoke script's ``PASS name detail`` / ``FAIL name detail`` lines -> checks (other lines left out)."""
    checks = []
    for line in lines:
        verdict, _, rest = line.strip().partition(" ")
        if verdict in ("PASS", "FAIL"):
            name, _, detail = rest.partition(" ")
            checks.append({"name": name, "passed": verdict == "PASS", "detail": detail})
    return checks


def smoke_results(session: Session, attempts: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The current release's smoke checks, and the names of those that failed ("(no result)" when none ran)."""
    result = session.remote.check(commands.smoke_checks(session.target.layout.current, attempts), "the smoke checks",
                                  timeout=600)
    checks = parse_smoke(result.lines)
    failed = [check["name"] for check in checks if not check["passed"]] or ([] if checks else ["(no result)"])
    return checks, failed


@cli.command()
@click.option("--attempts", type=click.IntRange(1, 60), default=1, show_default=True,
              help="tries of the first check, 2 s apart (the deploy gives a new release 45)")
@click.option("--meta", is_flag=True, help="the checklist's Meta items instead (handshakes, signatures "
              "refused and recorded, a signed message answered); manual items are not passes")
@json_option
@pass_session
def smoke(session: Session, attempts: int, meta: bool, as_json: bool) -> None:
    """The deploy's smoke checks alone, on the current release: the gateway's /healthz and the Meta
    verify handshake of each channel through Traefik, and the n8n console behind the gateway.
    With --meta, the go-live checklist's Meta items instead. Exit 1 when one fails."""
    if meta:
        return meta_checks(session, as_json)
    release = session.require_release()
    checks, failed = smoke_results(session, attempts)
    data = {"stage": session.stage, "release": release, "checks": checks, "failed": failed}

    def render():
        table(f"smoke checks of {release}", ["check", "result", "detail"],
              [(c["name"], "PASS" if c["passed"] else "FAIL", c["detail"]) for c in checks])
        if failed:
            say(f"failed: {', '.join(failed)}")

    emit(as_json, data, render)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


def meta_checks(session: Session, as_json: bool) -> None:
    """The checklist's Meta items against the stage's host, as ``python -m restobot.golive`` runs them."""
    from restobot import golive
    target = session.target  # the inventory loaded and validated before any check starts
    try:
        rows = golive.run_checklist(session.inventory, modules=[golive.META_CHECKS])
    except golive.ChecklistNotRun as error:
        raise CliError(str(error)) from None
    status = golive.exit_status(rows)
    data = {"stage": session.stage, "host": target.host_name, "items": [dataclasses.asdict(row) for row in rows],
            "failed": [row.item for row in rows if row.outcome in ("FAIL", "ERROR", "skip")],
            "manual": [row.item for row in rows if row.outcome == "manual"]}
    emit(as_json, data, lambda: click.echo(golive.format_table(rows)))
    if status != EXIT_OK:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.group()
def lock() -> None:
    """The deploy lock: who holds it; release one left by a killed run."""


def read_lock(session: Session) -> dict[str, Any]:
    return parse_lock_status(session.remote.check(commands.lock_status(session.target.layout), "reading the lock").lines)


@lock.command("status")
@json_option
@pass_session
def lock_status(session: Session, as_json: bool) -> None:
    """Whether the deploy lock is held, by whom, for what and since when."""
    data = {"stage": session.stage, **read_lock(session)}

    def render():
        if not data["held"]:
            say("the deploy lock is free")
        else:
            say(f"the deploy lock is held: {data['info'] or 'by an unknown holder (no info file)'}")

    emit(as_json, data, render)


@lock.command("release")
@pass_session
def lock_release(session: Session) -> None:
    """Release a deploy lock left by a killed deploy, rollback or command (only when none is running).

    Recorded in the audit log with who held it."""
    from restobot.operations.lock import Actor, audit_line

    held = read_lock(session)
    if not held["held"]:
        say("no deploy lock is held; nothing changed")
        return
    layout = session.target.layout
    info = held["info"] or "unknown holder"
    line = audit_line(Actor.current(), "unlock", "-", f"released lock ({info})")
    session.remote.check(commands.append_to_file(layout.audit_log, line), "appending to the audit log")
    session.remote.check(commands.remove_tree(layout.lock_dir), "removing the lock")
    say(f"released the deploy lock ({info})")


@cli.command()
@click.option("--tail", type=click.IntRange(1, MAX_LOG_LINES), default=20, show_default=True,
              help=f"the last N lines (1 to {MAX_LOG_LINES})")
@json_option
@pass_session
def audit(session: Session, tail: int, as_json: bool) -> None:
    """The last lines of the host's audit log: every deploy, rollback, unlock and command that changed the host."""
    records = parse_audit(session.remote.check(commands.audit_tail(session.target.layout, tail), "reading the audit log").lines)

    def render():
        table("audit log", ["time", "action", "release", "by", "result", "duration"],
              [(r.get("time"), r.get("action", r.get("line")), r.get("release"), r.get("by"), r.get("result"),
                "" if r.get("duration_s") is None else f"{r['duration_s']:.1f}s") for r in records])

    emit(as_json, {"stage": session.stage, "entries": records}, render)


@cli.group()
def migrations() -> None:
    """The database's migrations."""


@migrations.command("status")
@json_option
@pass_session
def migrations_status(session: Session, as_json: bool) -> None:
    """The current release's migrations: applied (when, how long), pending or changed since applied."""
    from restobot.release_archive import MANIFEST

    session.require_release()
    manifest = session.remote.check(commands.read_file(f"{session.target.layout.current}/{MANIFEST}"),
                                    "reading the release manifest").stdout
    result = session.remote.run(commands.database_read(commands.LEDGER_ROWS_SQL))
    if result.ok:
        ledger = parse_json_document(result.lines)
    elif re.search(r'relation "schema_migrations" does not exist', result.stderr):
        ledger = []
    else:
        raise CliError(f"reading schema_migrations failed on the host (exit {result.exit_status}):\n"
                       f"{result.stderr.strip()[-2000:]}")
    data = {"stage": session.stage, **migration_status(manifest, ledger)}

    def render():
        table(f"migrations of release {data['release']}", ["file", "state", "applied at", "ms"],
              [(m["filename"], m["state"], m["applied_at"], m["duration_ms"]) for m in data["migrations"]])
        for name in data["unknown"]:
            say(f"applied but not in this release: {name}")
        for problem in data["problems"]:
            say(f"problem: {problem}")

    emit(as_json, data, render)


@migrations.command("log")
@json_option
@pass_session
def migrations_log(session: Session, as_json: bool) -> None:
    """What the migration runner printed the last time a deploy migrated the database (the deploy keeps
    it on the host, one file per release: BASE_DIR/logs/migrations/RELEASE.log)."""
    layout = session.target.layout
    lines = session.remote.check(commands.latest_migration_log(layout), "reading the migration log").lines
    path = lines[0] if lines else None
    release = path.rsplit("/", 1)[-1].removesuffix(".log") if path else None
    data = {"stage": session.stage, "release": release, "file": path, "lines": lines[1:]}

    def render():
        if path is None:
            say(f"no migration log in {layout.migration_logs_dir}: no deploy has migrated the database since "
                "deploys keep the runner's output")
            return
        say(f"release {release} ({path}):")
        click.echo("\n".join(data["lines"]))

    emit(as_json, data, render)


@migrations.command("apply")
@click.option("--dry-run", is_flag=True, help="list the pending migrations; change nothing (no lock, no audit)")
@json_option
@pass_session
def migrations_apply(session: Session, dry_run: bool, as_json: bool) -> None:
    """Apply the current release's pending migrations with its db-migrate runner, as the deploy does
    (each file in its transaction, stopping at the first failure; the runner's output kept as
    ``migrations log`` shows it). Takes the deploy lock and is audited, unless --dry-run. The deploy's
    backup before the release (``backups/before-RELEASE.dump``) is the way back."""
    layout = session.target.layout
    if dry_run:
        release = session.require_release()
        result = session.remote.check(commands.compose_run_migrations(layout.current, "apply", "--dry-run"),
                                      "the migrations' dry run", timeout=600)
        lines = result.lines
    else:
        outputs: list[list[str]] = []

        def change(release: str) -> str:
            argv = commands.output_kept(layout.migration_log(release),
                                        commands.compose_run_migrations(layout.current, "apply"))
            outputs.append(session.remote.check(argv, "applying the migrations", timeout=1800).lines)
            return "ok " + (outputs[0][-1].strip() if outputs[0] else "")

        release = session.require_release()
        locked_change(session, "migrations apply", change)
        lines = outputs[0]
    data = {"stage": session.stage, "release": release, "dry_run": dry_run, "lines": lines}

    def render():
        click.echo("\n".join(lines))
        if not dry_run:
            say(f"kept in {layout.migration_log(release)}; recorded in {layout.audit_log}")

    emit(as_json, data, render)


@cli.command()
@click.option("--failed", is_flag=True, help="only executions that ended in error or crashed")
@limit_option(20, "executions, newest first")
@json_option
@pass_session
def executions(session: Session, failed: bool, limit: int, as_json: bool) -> None:
    """n8n's executions with their workflow's name (runbook: « exécutions échouées »)."""
    rows = session.database(commands.EXECUTIONS_SQL, {"failed": "yes" if failed else "no", "limit": str(limit)},
                            "reading n8n's executions")

    def render():
        table("failed executions" if failed else "executions",
              ["id", "workflow", "status", "mode", "started", "stopped"],
              [(r["id"], r["workflow_name"] or r["workflow_id"], r["status"], r["mode"], r["started_at"],
                r["stopped_at"]) for r in rows])

    emit(as_json, {"stage": session.stage, "failed_only": failed, "executions": rows}, render)


@cli.command()
@limit_option(20, "messages, newest first")
@json_option
@pass_session
def messages(session: Session, limit: int, as_json: bool) -> None:
    """Outbound replies waiting to be retried (RETRY) or given up (DLQ), with their last error."""
    rows = session.database(commands.OUTBOUND_TROUBLE_SQL, {"limit": str(limit)}, "reading outbound_messages")

    def render():
        table("outbound messages in RETRY or DLQ",
              ["id", "channel", "status", "retries", "next retry", "error", "created"],
              [(r["id"], r["channel"], r["status"], r["retry_count"], r["next_retry_at"],
                " ".join(filter(None, [r["error_code"], r["error_message"]])), r["created_at"]) for r in rows])

    emit(as_json, {"stage": session.stage, "messages": rows}, render)


@cli.command()
@click.option("--since", type=DurationType(), default="1h", show_default=True,
              help="the window: 30s, 5m, 1h, 7d (at most 366d)")
@json_option
@pass_session
def security(session: Session, since: int, as_json: bool) -> None:
    """Security events of the window, by type (signatures, verify tokens, rate limit, replays...)."""
    rows = session.database(commands.SECURITY_EVENTS_SQL, {"seconds": str(since)}, "reading security_events")

    def render():
        table(f"security events of the last {since} s", ["event", "count", "last"],
              [(r["event_type"], r["count"], r["last_at"]) for r in rows])

    emit(as_json, {"stage": session.stage, "since_seconds": since, "events": rows}, render)


@cli.command()
@click.option("--since", type=DurationType(), default="1m", show_default=True,
              help="the window: 30s, 5m, 1h (at most 366d)")
@click.option("--more-than", type=click.IntRange(0, 1_000_000), default=None,
              help="conversations with more messages than this in the window "
                   "(default: pipeline.rate_limit_per_30s scaled to the window)")
@json_option
@pass_session
def flooding(session: Session, since: int, more_than: int | None, as_json: bool) -> None:
    """Conversations that sent more messages in the window than the rate limit lets through."""
    threshold = more_than if more_than is not None else flooding_threshold(
        session.target.settings.pipeline.rate_limit_per_30s, since)
    rows = session.database(commands.FLOODING_SQL, {"seconds": str(since), "more_than": str(threshold)},
                            "reading inbound_messages")

    def render():
        table(f"conversations above {threshold} messages in {since} s", ["conversation", "messages", "last"],
              [(r["conversation_key"], r["count"], r["last_at"]) for r in rows])

    emit(as_json, {"stage": session.stage, "since_seconds": since, "more_than": threshold, "conversations": rows},
         render)


def flooding_threshold(rate_limit_per_30s: int, window_seconds: int) -> int:
    """The messages the rate limit lets through in a window (at least one window of 30 s)."""
    return rate_limit_per_30s * max(1, -(-window_seconds // 30))


@cli.group()
def dlq() -> None:
    """Replies given up after their retries (outbound_messages in DLQ)."""


@dlq.command("count")
@json_option
@pass_session
def dlq_count(session: Session, as_json: bool) -> None:
    """How many replies are in the DLQ, by channel."""
    rows = session.database(commands.DLQ_COUNT_SQL, None, "counting the DLQ")
    by_channel = {channel: 0 for channel in CHANNELS} | {r["channel"]: r["count"] for r in rows}
    data = {"stage": session.stage, "count": sum(by_channel.values()), "by_channel": by_channel}
    emit(as_json, data, lambda: say(
        f"{data['count']} in the DLQ (" + ", ".join(f"{k} {v}" for k, v in by_channel.items()) + ")"))


@dlq.command("list")
@click.option("--channel", type=CHANNEL, default=None, help="only this channel")
@limit_option(20, "messages, newest first")
@json_option
@pass_session
def dlq_list(session: Session, channel: str | None, limit: int, as_json: bool) -> None:
    """The replies in the DLQ, newest first, with their last error."""
    rows = session.database(commands.DLQ_LIST_SQL, {"channel": channel or "", "limit": str(limit)}, "listing the DLQ")

    def render():
        table("DLQ", ["id", "channel", "msg_id", "retries", "error", "created"],
              [(r["id"], r["channel"], r["msg_id"], r["retry_count"],
                " ".join(filter(None, [r["error_code"], r["error_message"]])), r["created_at"]) for r in rows])

    emit(as_json, {"stage": session.stage, "channel": channel, "messages": rows}, render)


MAX_REPLAY = 500  # the admin API's own bound on max_messages (workflows/W9_ADMIN_DLQ_REPLAY.json)
ADMIN_API_HINTS = {
    401: "the admin API does not know ADMIN_API_TOKEN: the deploy stores its hash; deploy with this token "
         "(scripts/deploy STAGE) or use the stage's secrets",
    403: "the admin client lacks the scope admin:dlq: the deploy grants it; deploy again (scripts/deploy STAGE)",
}


def parse_http_answer(stdout: str) -> tuple[int, str]:
    """``admin_api_post``'s output -> (HTTP status, body); ValueError when the status line is missing."""
    body, _, status = stdout.rstrip("\n").rpartition("\n")
    if not re.fullmatch(r"[0-9]{3}", status):
        raise ValueError(f"no HTTP status at the end of curl's output: {stdout[-200:]!r}")
    return int(status), body


def replay_request(dry_run: bool, channel: str | None, max_messages: int) -> str:
    """The body of ``POST /v1/admin/dlq/replay``."""
    return json.dumps({"dry_run": dry_run, "channel": channel, "max_messages": max_messages})


def admin_api(session: Session, path: str, body: str, what: str) -> dict[str, Any]:
    """POST ``body`` to the deployed admin API with the deployed token (on stdin, never in an argv)."""
    settings = session.target.settings
    result = session.remote.check(commands.admin_api_post(settings.domains.api_host, path, body), what, timeout=180,
                                  stdin=commands.admin_token_config(settings.admin.api_token.get_secret_value()))
    try:
        status, text = parse_http_answer(result.stdout)
        answer = json.loads(text) if text.strip() else {}
    except ValueError as error:
        raise CliError(f"{what}: the admin API's answer is not understood ({error})") from None
    if status != 200:
        detail = answer.get("error") if isinstance(answer, dict) else None
        hint = ADMIN_API_HINTS.get(status, f"see: resto {session.stage} logs nginx n8n-main")
        raise CliError(f"{what}: the admin API answered {status} ({detail or text[:200]}); {hint}")
    return answer


@dlq.command("replay")
@click.option("--dry-run", is_flag=True, help="list what would be replayed; change nothing (no lock, no audit)")
@click.option("--channel", type=CHANNEL, default=None, help="only this channel")
@click.option("--max", "max_messages", type=click.IntRange(1, MAX_REPLAY), default=10, show_default=True,
              help=f"at most this many replies, oldest first (1 to {MAX_REPLAY})")
@json_option
@pass_session
def dlq_replay(session: Session, dry_run: bool, channel: str | None, max_messages: int, as_json: bool) -> None:
    """Send the DLQ's replies again through the deployed admin API (POST /v1/admin/dlq/replay with
    ADMIN_API_TOKEN): each goes back to RETRY and the sender sends it at once. Only replies whose
    conversation wrote within Meta's 24 h window are replayed; the others are listed as skipped.
    Takes the deploy lock and is audited, unless --dry-run."""
    body = replay_request(dry_run, channel, max_messages)
    if dry_run:
        answer = admin_api(session, commands.ADMIN_DLQ_REPLAY_PATH, body, "the DLQ replay (dry run)")
    else:
        answers: list[dict[str, Any]] = []

        def change(release: str) -> str:
            answers.append(admin_api(session, commands.ADMIN_DLQ_REPLAY_PATH, body, "the DLQ replay"))
            return f"ok replayed={len(answers[0].get('ids') or [])}"

        locked_change(session, f"dlq replay channel={channel or 'all'} max={max_messages}", change)
        answer = answers[0]
    ids = [int(i) for i in answer.get("ids") or []]
    skipped = [int(i) for i in answer.get("skipped_outside_24h_window") or []]
    data = {"stage": session.stage, "dry_run": dry_run, "channel": channel, "max": max_messages,
            "replayed": [] if dry_run else ids, "would_replay": ids if dry_run else [],
            "skipped_outside_24h_window": skipped}

    def render():
        verb = "would replay" if dry_run else "replayed"
        say(f"{verb} {len(ids)} from the DLQ" + (f" (ids {', '.join(map(str, ids))})" if ids else ""))
        if skipped:
            say(f"skipped {len(skipped)} outside Meta's 24 h window (ids {', '.join(map(str, skipped))})")
        if not dry_run:
            say(f"recorded in {session.target.layout.audit_log}")

    emit(as_json, data, render)


# --- workflows: each release's version, one rolled back -------------------------------------------


def parse_workflow_versions(lines: Sequence[str], current: str | None) -> list[dict[str, Any]]:
    """``workflow_versions``' lines -> one version per release, newest release first; ``same_as_current``
    when its file is byte for byte the current release's."""
    versions = []
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].isdigit():
            versions.append({"release": parts[2], "created_at": utc_iso(int(parts[0])), "mtime": int(parts[0]),
                             "sha256": parts[1], "current": parts[2] == current})
    current_sha = next((v["sha256"] for v in versions if v["current"]), None)
    for version in versions:
        version["same_as_current"] = version["sha256"] == current_sha
    return [{k: v for k, v in version.items() if k != "mtime"}
            for version in sorted(versions, key=lambda v: (v["mtime"], v["release"]), reverse=True)]


def workflow_versions(session: Session, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The current release and NAME's version in each release; UsageProblem when the current one lacks it."""
    if not commands.WORKFLOW_NAME.match(name):
        raise UsageProblem(f"NAME: {name!r} is not a workflow file name (letters, digits, _ and -, without .json, "
                           "such as W2_INBOUND_PROCESS)")
    current = session.require_release()
    result = session.remote.check(commands.workflow_versions(session.target.layout.releases_dir, name),
                                  "reading the workflows of the releases")
    versions = parse_workflow_versions(result.lines, current)
    if not any(v["current"] for v in versions):
        raise UsageProblem(f"NAME: the current release {current} has no workflows/{name}.json; nothing changed. "
                           f"Its workflows are the file names of workflows/ in the repository")
    return current, versions


def workflows_stamp(session: Session, name: str, release: str, back_to_the_release: bool) -> str:
    """What the host's workflow stamp says after a rollback. Back to the current release's own file:
    its workflows' hash (from its manifest), so the next deploy of it changes nothing; another
    release's: a note that matches no release, so the next deploy imports its own workflows again."""
    if not back_to_the_release:
        return f"{name} rolled back to {release}\n"
    from restobot.release_archive import MANIFEST, ReleaseManifest
    text = session.remote.check(commands.read_file(f"{session.target.layout.current}/{MANIFEST}"),
                                "reading the release manifest").stdout
    return ReleaseManifest.from_json(text).workflows_sha256 + "\n"


@cli.group()
def workflow() -> None:
    """The n8n workflows of the releases kept on the host: history, and one rolled back."""


@workflow.command("history")
@click.argument("name", metavar="NAME")
@json_option
@pass_session
def workflow_history(session: Session, name: str, as_json: bool) -> None:
    """NAME's version (workflows/NAME.json) in each release kept on the host, newest first: which
    release runs now, and which releases hold the same file. Read only."""
    current, versions = workflow_versions(session, name)
    data = {"stage": session.stage, "workflow": name, "current": current, "versions": versions}

    def render():
        table(f"workflows/{name}.json in the releases on {session.target.host_name}",
              ["release", "created at", "sha256", ""],
              [(v["release"], v["created_at"], v["sha256"][:12],
                "current" if v["current"] else ("same as current" if v["same_as_current"] else "differs"))
               for v in versions])

    emit(as_json, data, render)


@workflow.command("rollback")
@click.argument("name", metavar="NAME")
@click.option("--to", "release", required=True, metavar="RELEASE",
              help="a release kept on the host (see: workflow history NAME)")
@json_option
@pass_session
def workflow_rollback(session: Session, name: str, release: str, as_json: bool) -> None:
    """Put NAME back to its version in RELEASE, the other workflows as they are: n8n's importer
    imports that one file (n8n main restarted, every webhook waited for), then the smoke checks.
    Takes the deploy lock and is audited. The next deploy imports the release's own version
    again: to keep the old one, release it."""
    layout = session.target.layout
    current, versions = workflow_versions(session, name)
    chosen = next((v for v in versions if v["release"] == release), None)
    if chosen is None:
        raise UsageProblem(f"--to: no release {release!r} on the host holds workflows/{name}.json; nothing changed. "
                           f"See: resto {session.stage} workflow history {name}")
    back_to_the_release = chosen["same_as_current"]
    data = {"stage": session.stage, "workflow": name, "release": current, "to": release,
            "sha256": chosen["sha256"], "back_to_the_release": back_to_the_release, "smoke": []}
    scratch = f"{layout.state_dir}/workflow-rollback"
    chosen_file = f"{layout.release_dir(release)}/workflows/{name}.json"

    def change(_: str) -> str:
        session.remote.check(commands.workflows_with_one_from(scratch, f"{layout.current}/workflows", chosen_file),
                             "preparing the workflows to import")
        # The importer compares with what n8n runs: the version already live is imported again by nobody.
        session.remote.check(commands.workflow_import(layout.current, scratch), f"importing {name} of {release}",
                             timeout=900)
        session.remote.check(commands.write_file(layout.workflows_stamp, workflows_stamp(session, name, release,
                                                                                          back_to_the_release)),
                             "recording the rollback in the workflow stamp")
        session.remote.run(commands.remove_tree(scratch))
        smoke = parse_smoke(session.remote.check(commands.smoke_checks(layout.current, 3), "the smoke checks",
                                                 timeout=600).lines)
        data["smoke"] = smoke
        failed = [check["name"] for check in smoke if not check["passed"]]
        if failed or not smoke:
            raise CliError(f"{name} of {release} is imported but the smoke checks failed ({', '.join(failed) or 'no result'}); "
                           f"put the current version back with: resto {session.stage} workflow rollback {name} --to {current}")
        return f"ok {name}={release} sha256={chosen['sha256'][:12]}"

    locked_change(session, f"workflow rollback {name}", change)

    def render():
        then = ("the release's workflows are all live again" if back_to_the_release
                else f"the next deploy imports {current}'s again")
        say(f"{name}: the version of {release} ({chosen['sha256'][:12]}) is live, the smoke checks pass; {then} "
            f"(recorded in {layout.audit_log})")

    emit(as_json, data, render)


@cli.group()
def db() -> None:
    """The database."""


@db.command("size")
@limit_option(10, "tables, largest first")
@json_option
@pass_session
def db_size(session: Session, limit: int, as_json: bool) -> None:
    """The database's size and its largest tables (indexes and TOAST included)."""
    database = session.database(commands.DATABASE_SIZE_SQL, None, "reading the database size")[0]
    tables = session.database(commands.TABLE_SIZES_SQL, {"limit": str(limit)}, "reading the table sizes")

    def render():
        table(f"database {database['database']}: {database['size']}", ["table", "size", "rows (estimate)"],
              [(t["table"], t["size"], t["rows_estimate"]) for t in tables])

    emit(as_json, {"stage": session.stage, "database": database, "tables": tables}, render)


@cli.group()
def backup() -> None:
    """The backups."""


@backup.group("offsite")
def backup_offsite() -> None:
    """The off-site repository pgBackRest archives to (offsite_backup settings)."""


@backup_offsite.command("info")
@json_option
@click.option("--check", is_flag=True, help="exit 1 when the repository's status is not ok or holds no full backup")
@pass_session
def backup_offsite_info(session: Session, as_json: bool, check: bool) -> None:
    """What the off-site repository holds: its status, the full backups, the WAL archived (read only)."""
    data = offsite_repository(session)

    def render():
        problem = f"{data['problem']}; " if data["problem"] else ""
        say(f"stanza {data['stanza']}: {data['status']} (cipher {data['cipher']}); {problem}"
            f"WAL archived {data['wal_min'] or '-'} .. {data['wal_max'] or '-'}")
        table("backups, oldest first", ["label", "type", "started", "stopped", "database", "in the repository"],
              [(b["label"], b["type"], b["started"], b["stopped"], b["database_bytes"], b["repository_bytes"])
               for b in data["backups"]])

    emit(as_json, data, render)
    if check and not data["healthy"]:
        raise CliError(f"the off-site repository is not healthy: {data['problem'] or data['status']}, "
                       f"{sum(b['type'] == 'full' for b in data['backups'])} full backup(s)")


RECOVERY_TIMEOUT_S = 3600  # the WAL replay of a day's messages takes minutes; a week's, longer


def offsite_repository(session: Session) -> dict[str, Any]:
    """``backup offsite info``'s summary; UsageProblem when off-site backups are disabled."""
    offsite = session.target.settings.offsite_backup
    if not offsite.enabled:
        raise UsageProblem(f"offsite_backup.enabled is false in {session.inventory}: nothing is archived off-site; "
                           "set it to true with its repository (README, Backups) and deploy")
    result = session.remote.check(commands.pgbackrest(offsite.stanza, "--output=json", "info"),
                                  "pgbackrest info in the postgres container")
    try:
        return {"stage": session.stage, **offsite_summary(parse_json_document(result.lines))}
    except (ValueError, KeyError, TypeError) as error:
        raise CliError(f"pgbackrest info: its answer is not the JSON expected ({error}): {result.stdout[:300]}") from None


def wait_until_promoted(session: Session, timeout: float = RECOVERY_TIMEOUT_S) -> None:
    """Poll PostgreSQL until it has left recovery (replayed the archive to the target and promoted)."""
    from restobot.offsite_restore import recovery_finished

    deadline, answer = time.monotonic() + timeout, None
    while True:
        answer = session.remote.run(commands.in_recovery(), timeout=60)
        if answer.ok and recovery_finished(answer.lines):
            return
        if time.monotonic() > deadline:
            raise CliError(f"PostgreSQL has not left recovery after {timeout:.0f} s (last answer: "
                           f"{(answer.stdout or answer.stderr).strip()[-300:]}); see: resto {session.stage} logs postgres")
        time.sleep(3)


def put_back_from_scratch(session: Session, failure: CliError, safety: str) -> CliError:
    """After a failed off-site restore (the data volume may hold half of one): the volume emptied, a new
    cluster initialised, the safety dump restored into it, n8n started again; the error says so."""
    from restobot.operations.database import put_back_by_hand

    layout, settings, remote = session.target.layout, session.target.settings, session.remote
    try:
        remote.check(commands.postgres_stopped(layout.current), "stopping postgres", timeout=300)
        remote.check(commands.data_directory_emptied(layout.current), "emptying postgres's data volume", timeout=600)
        remote.check(commands.postgres_started_again(), "starting postgres on an empty volume", timeout=300)
        wait_until_promoted(session, timeout=300)
        for argv in commands.database_replaced(layout.current, safety, settings.database.name, settings.database.user):
            remote.check(argv, f"putting back the safety dump {safety}", timeout=3600)
        remote.check(commands.n8n_started_again(), "starting n8n again", timeout=300)
    except CliError as second:
        return CliError(f"{failure.format_message()}\n{second.format_message()}\n"
                        f"{put_back_by_hand(layout.current, safety, settings.database.name)}")
    return CliError(f"{failure.format_message()}\nthe database was put back from the safety dump {safety} into a "
                    "new cluster and n8n started again: the data is as it was before the restore (roles other than "
                    f"the stack's own are gone: deploy again)")


@backup_offsite.command("restore")
@click.option("--to", "to", default="latest", show_default=True, metavar="latest|TIME",
              help="the end of the archive, or a point in time (ISO 8601 with its zone: 2026-12-02T08:40:00Z)")
@click.option("--yes", is_flag=True, help="do not ask for a confirmation (needed without a terminal)")
@json_option
@pass_session
def backup_offsite_restore(session: Session, to: str, yes: bool, as_json: bool) -> None:
    """Replace the live database with the off-site repository's, at the end of its archive or at a time.

    Checked first, nothing changed on a refusal (exit 2): off-site enabled, the repository ok with a backup,
    the time in the past and not before its oldest backup ended. What is lost is shown before a confirmation.
    Then, under the deploy lock (audited): n8n stopped, a safety dump (backups/before-restore-TIME.dump;
    the newest 3 kept), postgres stopped, pgBackRest's restore (--delta) from a one-off container of the
    service, postgres started and waited for until it has replayed the archive and promoted, the current
    release's migrations, n8n started and healthy, the smoke checks; on a host without an off-site run yet
    (rebuilt after a loss), the first one. A failure after postgres stopped empties its
    volume, initialises a new cluster and puts the safety dump back (exit 1)."""
    from restobot.offsite_restore import TargetRefused, check_reachable, parse_target, what_is_lost
    from restobot.operations.database import safety_stamp

    layout, offsite = session.target.layout, session.target.settings.offsite_backup
    try:
        target = parse_target(to, datetime.now(timezone.utc))
    except TargetRefused as refused:
        raise UsageProblem(f"--to: {refused}; nothing changed") from None
    summary = offsite_repository(session)
    try:
        check_reachable(target, summary)
    except TargetRefused as refused:
        raise UsageProblem(f"{str(refused).replace('STAGE', session.stage)}; nothing changed") from None
    before = parse_row_counts(session.remote.check(commands.row_counts(layout.current), "counting the rows").lines)
    for line in what_is_lost(target, before, summary):
        tell(as_json, line)
    confirmed(yes, "replace the live database with the off-site repository's?",
              "backup offsite restore replaces the live database",
              f"resto {session.stage} backup offsite restore --to {to} --yes", stdin_is_tty)
    dumps = list_backups(session)
    safety = layout.safety_dump(safety_stamp())
    outcome: dict[str, Any] = {}

    def restored(release: str) -> None:
        remote = session.remote
        writers_stopped_and_dumped(session, safety, as_json)
        try:
            tell(as_json, f"stopping postgres; pgBackRest restores to {target.describe()}")
            remote.check(commands.postgres_stopped(layout.current), "stopping postgres", timeout=300)
            remote.check(commands.offsite_restore(layout.current, offsite.stanza, target.pgbackrest_options),
                         "pgbackrest restore", timeout=RECOVERY_TIMEOUT_S)
            remote.check(commands.postgres_started_again(), "starting postgres", timeout=300)
            tell(as_json, "waiting until PostgreSQL has replayed the archive and promoted")
            wait_until_promoted(session)
            tell(as_json, f"applying the migrations of {release}")
            argv = commands.output_kept(layout.migration_log(release),
                                        commands.compose_run_migrations(layout.current, "apply"))
            outcome["migrations"] = remote.check(argv, "the migrations after the restore", timeout=1800).lines
        except CliError as failure:
            tell(as_json, f"failed; putting back the safety dump {safety} into a new cluster")
            raise put_back_from_scratch(session, failure, safety) from None

    def change(release: str) -> str:
        restored(release)
        outcome["rows_after"], outcome["smoke"] = serving_again(
            session, f"the database is restored to {target.describe()}", safety, as_json)
        outcome["offsite_run"] = first_offsite_run(session, as_json)
        # The drill restores what that run backed up: only after it succeeded here.
        ran = (outcome["offsite_run"] or "").startswith("ok")
        outcome["restore_drill"] = first_restore_drill(session, as_json) if ran else None
        outcome["pruned"] = old_safety_dumps(dumps, keep="")
        for old in outcome["pruned"]:
            session.remote.run(commands.remove_file(old))
        return f"ok restored=offsite:{target.describe()} safety={safety}"

    locked_change(session, f"backup offsite restore --to {to}", change)
    data = {"stage": session.stage, "restored_to": target.describe(), "stanza": offsite.stanza,
            "safety_dump": safety, "rows_before": before, "rows_after": outcome["rows_after"],
            "migrations": outcome["migrations"], "smoke": outcome["smoke"], "offsite_run": outcome["offsite_run"],
            "restore_drill": outcome["restore_drill"], "pruned_safety_dumps": outcome["pruned"]}

    def render():
        say(f"restored from the off-site repository to {target.describe()}; the database as it was is in {safety}")
        say("rows: " + ", ".join(f"{t} {before.get(t)} -> {n}" for t, n in data["rows_after"].items()))
        say("smoke: " + ", ".join(f"{c['name']} PASS" for c in data["smoke"]))
        if data["offsite_run"]:
            say(f"first off-site run on this host: {data['offsite_run']}")
        if data["restore_drill"]:
            say(f"first restore drill on this host: {data['restore_drill']}")
        say(f"recorded in {layout.audit_log}")

    emit(as_json, data, render)


def first_offsite_run(session: Session, as_json: bool) -> str | None:
    """On a host that has no off-site run yet (a VPS rebuilt after a loss, whose deploy left the
    repository alone until this restore): the nightly run now, so that the restored database has a
    backup and a stamp of its own. Its failure is reported, not raised: the restore is done. None: a
    run had succeeded here before."""
    paths = backup_paths(session)
    return run_once(session, paths.offsite_script, paths.offsite_last_success, "off-site run", as_json)


def first_restore_drill(session: Session, as_json: bool) -> str | None:
    """Likewise the restore drill (after the first off-site run, which it restores)."""
    paths = backup_paths(session)
    return run_once(session, paths.drill_script, paths.drill_last_success, "restore drill", as_json)


def run_once(session: Session, script: str, stamp: str, what: str, as_json: bool) -> str | None:
    """Run ``script`` unless its success ``stamp`` exists: ``ok (...)``, ``failed: ...`` or None."""
    if session.remote.run(["test", "-e", stamp]).exit_status == 0:
        return None
    tell(as_json, f"no {what} on this host yet: running {script}")
    result = session.remote.run(commands.run_script(script), timeout=RECOVERY_TIMEOUT_S)
    if result.exit_status == 0:
        return f"ok ({result.stdout.strip().splitlines()[-1] if result.stdout.strip() else 'done'})"
    return f"failed: {result.stderr.strip()[-400:]} (run it again: sudo {script})"


def backup_paths(session: Session) -> BackupPaths:
    return BackupPaths(session.target.layout)


def list_backups(session: Session) -> list[dict[str, Any]]:
    paths = backup_paths(session)
    result = session.remote.check(commands.backups_listed(session.target.layout.backups_dir, paths.directory),
                                  "listing the backups")
    return parse_backups(result.lines, session.target.layout.backups_dir, paths.directory)


def rows_text(rows: Mapping[str, Any] | None) -> str:
    return " ".join(f"{table}={count}" for table, count in rows.items()) if rows else ""


@backup.command("list")
@json_option
@pass_session
def backup_list(session: Session, as_json: bool) -> None:
    """Every dump on the host, newest first: the scheduled backups (bin/backup, with the row counts
    recorded), the pre-deploy dumps (before-RELEASE.dump) and the safety dumps a restore took; size,
    age, mode (0600 expected). Read only."""
    dumps = list_backups(session)
    data = {"stage": session.stage, "backups": dumps}

    def render():
        table(f"dumps on {session.target.host_name}, newest first",
              ["kind", "path", "size", "age", "mode", "rows"],
              [(d["kind"] + (f" {d['release']}" if d["release"] else "")
                + (" (incomplete)" if d["complete"] is False else ""),
                d["path"], human_size(d["size"]), human_age(d["age_seconds"]),
                d["mode"] + ("" if d["mode_ok"] else f" (not {DUMP_MODE})"), rows_text(d["rows"])) for d in dumps])
        if not dumps:
            say(f"no dump in {session.target.layout.backups_dir}: take one with resto {session.stage} backup now")

    emit(as_json, data, render)


def find_dump(dumps: Sequence[Mapping[str, Any]], file: str, stage: str, nothing: str) -> Mapping[str, Any]:
    """The dump FILE names among ``dumps`` (its path, or its file name when one dump has it);
    UsageProblem naming FILE, the rule and ``backup list`` otherwise (``nothing`` says what did not happen)."""
    matches = [d for d in dumps if file in (d["path"], d["path"].rsplit("/", 1)[-1])]
    if len(matches) != 1:
        reason = "is not one of the host's dumps" if not matches else "names several dumps; give its path"
        raise UsageProblem(f"FILE: {file} {reason}; {nothing}. List them with: resto {stage} backup list")
    return matches[0]


def chosen_dump(session: Session, file: str) -> str:
    """The path of FILE among the host's dumps (by path or file name); UsageProblem, before anything
    runs, for a file that is not one, or one verify cannot check (no row counts recorded)."""
    dump = find_dump(list_backups(session), file, session.stage, "nothing was run")
    if dump["kind"] != "scheduled" or not dump["complete"]:
        what = "an incomplete scheduled dump (no metadata)" if dump["kind"] == "scheduled" else f"a {dump['kind']} dump"
        raise UsageProblem(f"FILE: {dump['path']} is {what}: verify compares the row counts recorded with the "
                           f"complete scheduled backups only; nothing was run. Choose one of those in: "
                           f"resto {session.stage} backup list")
    return dump["path"]


@backup.command("verify")
@click.argument("file", required=False, metavar="[FILE]")
@json_option
@pass_session
def backup_verify(session: Session, file: str | None, as_json: bool) -> None:
    """Restore the newest scheduled backup, or FILE (one of those ``backup list`` shows, by path or
    name), into the scratch database restore_check with the host's bin/backup-verify, and compare
    the key tables' row counts with those recorded when it was taken; the scratch database is
    dropped afterwards. Exit 1 unless every count matches. The live database is not touched."""
    dump = chosen_dump(session, file) if file else None
    result = session.remote.run(commands.backup_verified(backup_paths(session).verify_script, dump), timeout=3600)
    try:
        report = json.loads(result.lines[-1])
    except (IndexError, ValueError):
        detail = (result.stderr.strip() or result.stdout.strip() or "no output")[-2000:]
        raise CliError(f"backup-verify failed on the host (exit {result.exit_status}):\n{detail}") from None
    data = {"stage": session.stage, **report}

    def render():
        table(f"restore of {report.get('dump') or '(none)'} into a scratch database",
              ["table", "rows recorded", "rows restored"],
              [(name, pair[0], pair[1]) for name, pair in (report.get("tables") or {}).items()])
        if report.get("ok"):
            say(f"ok: restored in {report['restore_seconds']} s, every count matches "
                f"(the backup is {human_age(report['age_seconds'])} old)")
        else:
            say(f"FAILED: {report.get('error') or 'the counts differ'}")

    emit(as_json, data, render)
    if not report.get("ok") or not result.ok:
        raise click.exceptions.Exit(EXIT_FAILED)


# --- commands that change the host: the deploy lock, then the audit log ------------------------


def wait_until_healthy(session: Session, service: str, timeout: float = HEALTHY_TIMEOUT_S) -> dict[str, Any]:
    """Poll the service's container until it runs healthy (or runs, without a healthcheck)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while True:
        for container in session.containers():
            if container["service"] == service:
                seen = container
        if seen.get("state") == "running" and seen.get("health") in ("healthy", None):
            return seen
        if time.monotonic() > deadline:
            raise CliError(f"{service} is not healthy after {timeout:.0f} s (state {seen.get('state')}, "
                           f"health {seen.get('health')}); see: resto {session.stage} logs {service}")
        time.sleep(2)


def locked_change(session: Session, action: str, change: Callable[[str], str]) -> None:
    """Take the deploy lock, run ``change(release)`` (its return is the audit result), audit, release.

    A lock held by someone else refuses (exit 4) before anything changes; a failing change is
    audited as failed, the lock released, and the error raised."""
    from restobot.operations.lock import Actor, audit_line, lock_info, now

    layout, remote, actor = session.target.layout, session.remote, Actor.current()
    release = session.require_release()
    taken = remote.run(commands.make_directory(layout.lock_dir))
    if not taken.ok:
        held = read_lock(session)
        raise CliError(
            f"the deploy lock is held ({held.get('info') or 'unknown holder'}): a deploy, rollback or command is "
            f"running, or one was killed; nothing changed. If none is running, release it with: "
            f"resto {session.stage} lock release", EXIT_LOCKED)
    started = time.monotonic()
    try:
        remote.check(commands.write_file(layout.lock_info, lock_info(actor, action, release, now())), "writing the lock")
        try:
            result = change(release)
        except BaseException as error:  # audited whatever stopped it (a failure, Ctrl-C), then raised on
            reason = (f"failed: {error.format_message().splitlines()[0][:200]}" if isinstance(error, CliError)
                      else f"interrupted ({type(error).__name__})")
            remote.run(commands.append_to_file(layout.audit_log, audit_line(actor, action, release, reason,
                                                                            time.monotonic() - started)))
            raise
        line = audit_line(actor, action, release, result, time.monotonic() - started)
        remote.check(commands.append_to_file(layout.audit_log, line), "appending to the audit log")
    finally:
        remote.run(commands.remove_tree(layout.lock_dir))


def service_change(session: Session, verb: str, services: Sequence[str]) -> None:
    release_dir = session.target.layout.current
    what = " ".join(services)

    def change(release: str) -> str:
        session.remote.check(commands.compose_service_action(release_dir, verb, *services), f"{verb} {what}",
                             timeout=300)
        if verb == "stop":
            return "ok"
        started = [wait_until_healthy(session, service) for service in services]
        return "ok " + " ".join(f"{c['service']}.started_at={c['started_at']}" if len(services) > 1
                                else f"started_at={c['started_at']}" for c in started)

    locked_change(session, f"{verb} {what}", change)
    state = "stopped" if verb == "stop" else "running healthy"
    say(f"{what}: {state} ({verb} recorded in {session.target.layout.audit_log})")


def chosen_services(session: Session, service: str | None, every: bool) -> list[str]:
    """SERVICE alone, or with --all every long-running service the release runs (its monitoring
    too; never the one-shot db-migrate). Neither or both: bad input, nothing connected."""
    if (service is None) == (not every):
        raise UsageProblem("give one SERVICE or --all (every service of the stack), not both and not neither")
    if service is not None:
        return [service]
    session.require_release()
    present = {c["service"] for c in session.containers()}
    return [name for name in (*LONG_RUNNING_SERVICES, *commands.MONITORING_SERVICES) if name in present]


ALL_OPTION = click.option("--all", "every", is_flag=True,
                          help="every service of the stack (its monitoring too), in compose's dependency order")


@cli.command()
@click.argument("service", type=SERVICE, metavar="SERVICE")
@pass_session
def restart(session: Session, service: str) -> None:
    """Restart SERVICE and wait until it is healthy again (takes the deploy lock, audited)."""
    service_change(session, "restart", [service])


@cli.command()
@click.argument("service", type=SERVICE, required=False, metavar="SERVICE")
@ALL_OPTION
@pass_session
def stop(session: Session, service: str | None, every: bool) -> None:
    """Stop SERVICE, or with --all the whole stack (the runbook's ``down``, containers and data kept);
    takes the deploy lock, audited; ``start`` brings it back. Until README's "Not yet held" gap is
    fixed, stop nginx before n8n-main (--all does: compose stops the edge first)."""
    service_change(session, "stop", chosen_services(session, service, every))


@cli.command()
@click.argument("service", type=SERVICE, required=False, metavar="SERVICE")
@ALL_OPTION
@pass_session
def start(session: Session, service: str | None, every: bool) -> None:
    """Start a stopped SERVICE, or with --all the whole stack, and wait until each is healthy (takes
    the deploy lock, audited)."""
    service_change(session, "start", chosen_services(session, service, every))


@cli.command()
@click.option("--dry-run", is_flag=True, help="count the rows past their retention; delete nothing (no lock, no audit)")
@json_option
@pass_session
def cleanup(session: Session, dry_run: bool, as_json: bool) -> None:
    """Delete the rows kept past their retention: inbound and outbound messages and security events
    (retention.*_days), n8n's ended executions (n8n.executions_max_age_hours; at any age those a restart
    interrupted of a workflow that saves none, whose data holds a request's tokens); prints how many rows of
    each table went. Takes the deploy lock and is audited, unless --dry-run. PostgreSQL reuses the
    space (autovacuum); it does not give it back to the file system."""
    settings = session.target.settings
    from restobot.operations.cleanup import retention_variables
    variables = retention_variables(settings)
    if dry_run:
        rows = session.database(commands.CLEANUP_COUNT_SQL, variables, "counting the rows past their retention")
    else:
        deleted: list[dict[str, int]] = []

        def change(release: str) -> str:
            deleted.append(session.database(commands.CLEANUP_SQL, variables, "deleting the rows past their retention"))
            return "ok deleted " + " ".join(f"{table}={count}" for table, count in deleted[0].items())

        locked_change(session, "cleanup", change)
        rows = deleted[0]
    data = {"stage": session.stage, "dry_run": dry_run, "rows": rows, "total": sum(rows.values()),
            "retention": {"inbound_messages_days": settings.retention.inbound_messages_days,
                          "outbound_messages_days": settings.retention.outbound_messages_days,
                          "security_events_days": settings.retention.security_events_days,
                          "executions_max_age_hours": settings.n8n.executions_max_age_hours}}

    def render():
        table("rows past their retention, " + ("that would be deleted (dry run)" if dry_run else "deleted"),
              ["table", "rows"], [(name, count) for name, count in rows.items()])
        if not dry_run:
            say(f"recorded in {session.target.layout.audit_log}")

    emit(as_json, data, render)


# What W1 stores as inbound_messages.sender: WhatsApp's ``from`` (the international number in
# digits), Messenger's PSID and Instagram's IGSID (Meta's numeric ids, as strings).
SENDER_RULES = {
    "whatsapp": (re.compile(r"^[0-9]{6,15}$"),
                 "the international number in digits as WhatsApp sends it in 'from', 6 to 15 digits, "
                 "without '+', spaces or dashes (e.g. 33612345678)"),
    "messenger": (re.compile(r"^[0-9]{5,32}$"), "the sender's PSID, Meta's numeric id (5 to 32 digits)"),
    "instagram": (re.compile(r"^[0-9]{5,32}$"), "the sender's IGSID, Meta's numeric id (5 to 32 digits)"),
}
MAX_REASON = 200


def check_sender(channel: str, sender: str) -> None:
    """A sender id as W1 stores it for ``channel``; UsageProblem (exit 2) naming the rule otherwise."""
    rule, what = SENDER_RULES[channel]
    if not rule.match(sender):
        raise UsageProblem(f"SENDER: '{sender}' is not a {channel} sender id: {what}; nothing was changed. "
                           f"The ids W1 stored are in inbound_messages.sender")


def check_reason(reason: str | None) -> None:
    if reason is not None and (len(reason) > MAX_REASON or not reason.isprintable()):
        raise UsageProblem(f"--reason: at most {MAX_REASON} printable characters on one line "
                           f"(got {len(reason)}); nothing was changed")


@cli.group()
def quarantine() -> None:
    """Senders whose messages the webhooks refuse: answered 200 (Meta does not retry), not stored,
    not answered, each recorded as a QUARANTINED security event."""


@quarantine.command("add")
@click.argument("channel", type=CHANNEL, metavar="CHANNEL")
@click.argument("sender", metavar="SENDER")
@click.option("--for", "duration", type=DurationType(), default=None,
              help="expire after this long: 30m, 12h, 7d (at most 366d); default: until removed")
@click.option("--reason", default=None, help=f"why, for the next operator (at most {MAX_REASON} characters)")
@json_option
@pass_session
def quarantine_add(session: Session, channel: str, sender: str, duration: int | None, reason: str | None,
                   as_json: bool) -> None:
    """Refuse SENDER's next messages on CHANNEL (the id W1 stores: WhatsApp number in digits, Messenger
    PSID, Instagram IGSID). A sender already quarantined gets the new reason and expiry. Takes the deploy
    lock and is audited."""
    from restobot.operations.lock import Actor

    check_sender(channel, sender)
    check_reason(reason)
    variables = {"channel": channel, "sender": sender, "reason": reason or "", "created_by": str(Actor.current()),
                 "seconds": "" if duration is None else str(duration)}
    written: list[dict[str, Any]] = []

    def change(release: str) -> str:
        written.extend(session.database(commands.QUARANTINE_ADD_SQL, variables, "writing the quarantine"))
        return ("ok added" if written[0]["added"] else "ok replaced") + f" expires_at={written[0]['expires_at']}"

    locked_change(session, f"quarantine add {channel} {sender}", change)
    entry = written[0]

    def render():
        until = f"until {entry['expires_at']}" if entry["expires_at"] else "until removed"
        say(f"{channel} {sender}: quarantined {until} ({'added' if entry['added'] else 'entry replaced'}; "
            f"recorded in {session.target.layout.audit_log})")

    emit(as_json, {"stage": session.stage, **entry}, render)


@quarantine.command("list")
@json_option
@pass_session
def quarantine_list(session: Session, as_json: bool) -> None:
    """The quarantined senders, newest first: expiry, whether expired (no longer refused), and how many
    of their messages were refused since the entry began."""
    rows = session.database(commands.QUARANTINE_LIST_SQL, None, "reading the quarantine")

    def render():
        table("quarantined senders", ["channel", "sender", "since", "by", "expires", "expired", "dropped", "reason"],
              [(r["channel"], r["sender"], r["created_at"], r["created_by"], r["expires_at"] or "never",
                "yes" if r["expired"] else "no", r["dropped"], r["reason"]) for r in rows])

    emit(as_json, {"stage": session.stage, "entries": rows}, render)


@quarantine.command("remove")
@click.argument("channel", type=CHANNEL, metavar="CHANNEL")
@click.argument("sender", metavar="SENDER")
@pass_session
def quarantine_remove(session: Session, channel: str, sender: str) -> None:
    """Let SENDER's messages on CHANNEL through again. Takes the deploy lock and is audited. A sender
    that is not quarantined is not an error (exit 0, nothing changed): after exit 0 it is not."""
    check_sender(channel, sender)
    removed: list[dict[str, Any]] = []

    def change(release: str) -> str:
        removed.extend(session.database(commands.QUARANTINE_REMOVE_SQL, {"channel": channel, "sender": sender},
                                        "removing from the quarantine"))
        return "ok removed" if removed else "ok not quarantined"

    locked_change(session, f"quarantine remove {channel} {sender}", change)
    if removed:
        say(f"{channel} {sender}: no longer quarantined (recorded in {session.target.layout.audit_log})")
    else:
        say(f"{channel} {sender}: was not quarantined; nothing changed")


@backup.command("now")
@json_option
@pass_session
def backup_now(session: Session, as_json: bool) -> None:
    """Take a backup now with the host's bin/backup (the nightly one: pg_dump -Fc and the roles, the
    key tables' row counts, then retention); prints the dump, its size and row counts. Takes the
    deploy lock and is audited; exit 1 with the script's error when it fails."""
    paths = backup_paths(session)
    taken: list[dict[str, Any]] = []

    def change(release: str) -> str:
        lines = session.remote.check(commands.run_script(paths.script), "the backup", timeout=3600).lines
        dump = lines[-1].strip() if lines else ""
        if not dump.endswith(".dump"):
            raise CliError(f"the backup ended without naming its dump (it printed {dump[:200]!r}); "
                           f"see {BACKUP_LOG} on the host")
        metadata = session.remote.check(commands.read_file(dump.removesuffix(".dump") + ".json"),
                                        "reading the backup's metadata").stdout
        try:
            taken.append({"dump": dump, **json.loads(metadata)})
        except ValueError as error:
            raise CliError(f"{dump}: its metadata is not JSON ({error}); see {paths.directory}") from None
        return f"ok dump={dump} size={taken[0].get('size')}"

    locked_change(session, "backup now", change)
    written = taken[0]
    data = {"stage": session.stage, "dump": written["dump"], "size": written.get("size"),
            "created_at": written.get("created_at"), "sha256": written.get("sha256"), "rows": written.get("tables")}

    def render():
        say(f"wrote {data['dump']} ({human_size(int(data['size'] or 0))}, {data['size']} bytes)")
        say(f"rows: {rows_text(data['rows']) or '(none recorded)'}")
        say(f"recorded in {session.target.layout.audit_log}")

    emit(as_json, data, render)


# --- restore: a chosen dump into the live database ----------------------------------------------

RESTORABLE = ("scheduled", "pre-deploy", "safety")
RESTORE_SMOKE_ATTEMPTS = 30  # 2 s apart: n8n main registers its webhooks again after its start
ARCHIVE_TIME = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:UTC|GMT)$")


def restorable_dump(dumps: Sequence[Mapping[str, Any]], file: str, stage: str) -> Mapping[str, Any]:
    """The dump ``restore FILE`` replaces the database with: ``latest`` is the newest complete scheduled
    backup; otherwise a complete scheduled, a pre-deploy or a safety dump ``backup list`` shows, by path
    or file name. UsageProblem (exit 2, nothing changed) for anything else."""
    if file == "latest":
        complete = [d for d in dumps if d["kind"] == "scheduled" and d["complete"]]
        if not complete:
            raise UsageProblem(f"FILE: latest: the host holds no complete scheduled backup; nothing changed. "
                               f"Take one with: resto {stage} backup now, or name a dump of: resto {stage} backup list")
        return complete[0]
    dump = find_dump(dumps, file, stage, "nothing changed")
    if dump["kind"] not in RESTORABLE or (dump["kind"] == "scheduled" and not dump["complete"]):
        what = ("an incomplete scheduled dump (no metadata: bin/backup did not finish it)"
                if dump["kind"] == "scheduled" else f"a {dump['kind']} dump")
        raise UsageProblem(f"FILE: {dump['path']} is {what}: restore takes a complete scheduled backup, a "
                           f"before-RELEASE dump or a before-restore safety dump; nothing changed. Choose one in: "
                           f"resto {stage} backup list")
    return dump


def archive_age(created: str, now: datetime) -> int | None:
    """Seconds since ``pg_restore --list``'s ``Archive created at`` time (``2026-12-01 10:27:01 UTC``),
    None when it is not in UTC (pg_restore prints the container's time zone)."""
    match = ARCHIVE_TIME.match(created)
    if not match:
        return None
    made = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return max(0, int((now - made).total_seconds()))


def parse_row_counts(lines: Sequence[str]) -> dict[str, int]:
    """``commands.row_counts``' ``table<TAB>count`` lines -> ``{table: count}``."""
    counts = {}
    for line in lines:
        table_name, _, count = line.partition("\t")
        if count.strip().isdigit():
            counts[table_name.strip()] = int(count)
    return counts


def what_is_lost(dump: Mapping[str, Any], created: str, age_seconds: int, rows_now: Mapping[str, int]) -> list[str]:
    """The lines shown before a restore asks for confirmation: the dump, when it was made, and the rows
    the database holds now (with those recorded in the dump, when a scheduled backup recorded them)."""
    from restobot.operations.database import describe_age

    recorded = dump.get("rows") or {}
    lines = [f"restore {dump['path']} ({dump['kind']}) into the live database:",
             f"  made {created}, {describe_age(age_seconds)} ago"]
    for table_name, count in rows_now.items():
        then = f" (the dump holds {recorded[table_name]})" if table_name in recorded else ""
        lines.append(f"  {table_name}: {count} rows now{then}")
    lines.append("  every row written since the dump was made is lost (kept only in the safety dump taken first)")
    return lines


def tell(as_json: bool, text: str) -> None:
    """Progress and warnings: on stdout for a human, on stderr under --json (stdout is the one document)."""
    if as_json:
        click.echo(text, err=True)
    else:
        say(text)


def confirmed(yes: bool, question: str, what: str, with_yes: str, is_tty: Callable[[], bool]) -> None:
    """``--yes``, or the operator's yes on a terminal; UsageProblem without a terminal, CliError on a no.

    + what: what the command does, in the refusal without a terminal ("restore replaces the live database")
    + with_yes: the same command line with --yes, shown as the way out"""
    if yes:
        return
    if not is_tty():
        raise UsageProblem(f"{what} and asks for a confirmation, but there is no terminal to ask on; nothing "
                           f"changed. Run it in a terminal, or add --yes: {with_yes}")
    if not click.confirm(question, default=False, err=True):
        raise CliError("not confirmed; nothing changed")


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def put_back(session: Session, failure: CliError, dump: str, safety: str) -> CliError:
    """After a failed restore or migration: the safety dump put back and n8n started again; the error
    names the state the host is left in."""
    from restobot.operations.database import put_back_by_hand

    layout, settings = session.target.layout, session.target.settings
    try:
        for argv in commands.database_replaced(layout.current, safety, settings.database.name, settings.database.user):
            session.remote.check(argv, f"putting back the safety dump {safety}", timeout=3600)
        session.remote.check(commands.n8n_started_again(), "starting n8n again", timeout=300)
    except CliError as second:
        return CliError(f"{failure.format_message()}\n{second.format_message()}\n"
                        f"{put_back_by_hand(layout.current, safety, settings.database.name)}")
    return CliError(f"{failure.format_message()}\nthe database was put back from the safety dump {safety} and n8n "
                    f"started again: the data is as it was before the restore of {dump}")


def old_safety_dumps(dumps: Sequence[Mapping[str, Any]], keep: str) -> list[str]:
    """The safety dumps past the newest ``KEEP_SAFETY_DUMPS`` once a new one is taken (as the rollback
    prunes them), never ``keep`` (the dump just restored)."""
    from restobot.operations.database import KEEP_SAFETY_DUMPS

    older = [d["path"] for d in dumps if d["kind"] == "safety"]
    return [path for path in older[KEEP_SAFETY_DUMPS - 1:] if path != keep]


def writers_stopped_and_dumped(session: Session, safety: str, as_json: bool) -> None:
    """n8n stopped, then the safety dump of the database as it is; a failed dump starts n8n again (nothing
    else changed) and raises."""
    layout, remote = session.target.layout, session.remote
    tell(as_json, "stopping n8n-main and n8n-worker (the database's writers)")
    remote.check(commands.n8n_stopped(layout.current), "stopping n8n", timeout=300)
    try:
        tell(as_json, f"safety dump of the database as it is: {safety}")
        for argv in commands.safety_dump(layout, safety):
            remote.check(argv, f"the safety dump {safety}", timeout=3600)
    except CliError as failure:
        started = remote.run(commands.n8n_started_again(), timeout=300).ok
        raise CliError(f"{failure.format_message()}\nnothing was dropped; n8n was "
                       f"{'started again' if started else 'NOT started again'}") from None


def serving_again(session: Session, done: str, safety: str, as_json: bool) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """After a restore (``done`` says what, for the errors): n8n started and healthy, the rows counted, the
    smoke checks passed; (rows, smoke results)."""
    tell(as_json, "starting n8n-main and n8n-worker; waiting until they are healthy")
    try:
        session.remote.check(commands.n8n_started_again(), "starting n8n again", timeout=300)
        for service in commands.N8N_SERVICES:
            wait_until_healthy(session, service)
    except CliError as failure:
        raise CliError(f"{done} and migrated (the database as it was is in {safety}), but n8n does not run healthy: "
                       f"{failure.format_message()}") from None
    rows = parse_row_counts(
        session.remote.check(commands.row_counts(session.target.layout.current), "counting the rows").lines)
    tell(as_json, "the smoke checks")
    smoke, failed = smoke_results(session, RESTORE_SMOKE_ATTEMPTS)
    if failed:
        raise CliError(f"{done} and n8n runs healthy, but smoke checks failed: {', '.join(failed)}; "
                       f"the database as it was is in {safety}. See: resto {session.stage} smoke")
    return rows, smoke


def replaced_database(session: Session, release: str, dump: str, safety: str, as_json: bool) -> list[str]:
    """With n8n stopped: the safety dump, the dump restored, the release's migrations (their output kept
    as ``migrations log`` shows it). A failure before anything is dropped starts n8n again; a failed
    restore or migration puts the safety dump back. Returns the migration runner's lines."""
    layout, settings, remote = session.target.layout, session.target.settings, session.remote
    writers_stopped_and_dumped(session, safety, as_json)
    try:
        tell(as_json, f"restoring {dump}")
        for argv in commands.database_replaced(layout.current, dump, settings.database.name, settings.database.user):
            remote.check(argv, f"the restore of {dump}", timeout=3600)
        tell(as_json, f"applying the migrations of {release}")
        argv = commands.output_kept(layout.migration_log(release), commands.compose_run_migrations(layout.current,
                                                                                                    "apply"))
        return remote.check(argv, "the migrations after the restore", timeout=1800).lines
    except CliError as failure:
        tell(as_json, f"failed; putting back the safety dump {safety}")
        raise put_back(session, failure, dump, safety) from None


@cli.command()
@click.argument("file", metavar="FILE|latest")
@click.option("--yes", is_flag=True, help="do not ask for a confirmation (needed without a terminal)")
@json_option
@pass_session
def restore(session: Session, file: str, yes: bool, as_json: bool) -> None:
    """Replace the live database with a dump: ``latest`` (the newest complete scheduled backup) or FILE,
    one of those ``backup list`` shows (complete scheduled, before-RELEASE, before-restore safety dumps;
    by path or name). The dump is checked with pg_restore --list and what is lost is shown before a
    confirmation. Then, under the deploy lock (audited): n8n stopped, a safety dump of the database
    (backups/before-restore-TIME.dump, 0600; the newest 3 kept), the restore, the current release's
    migrations, n8n started and healthy, the smoke checks. A failed restore or migration puts the
    safety dump back and starts n8n again (exit 1)."""
    from restobot.operations.database import dump_created, safety_stamp

    layout = session.target.layout
    dumps = list_backups(session)
    dump = restorable_dump(dumps, file, session.stage)
    path = dump["path"]
    listing = session.remote.run(commands.dump_contents(layout.current, path), timeout=600)
    created = dump_created(listing.lines)
    if not listing.ok or created == "at an unknown time":
        detail = (listing.stderr.strip() or "no archive header")[-1000:]
        raise UsageProblem(f"FILE: {path} is not a dump pg_restore can read (pg_restore --list: {detail}); "
                           f"nothing changed. Choose another in: resto {session.stage} backup list")
    age = archive_age(created, datetime.now(timezone.utc))
    age = dump["age_seconds"] if age is None else age
    before = parse_row_counts(session.remote.check(commands.row_counts(layout.current), "counting the rows").lines)
    for line in what_is_lost(dump, created, age, before):
        tell(as_json, line)
    confirmed(yes, "replace the live database with this dump?", "restore replaces the live database",
              f"resto {session.stage} restore {path} --yes", stdin_is_tty)

    safety = layout.safety_dump(safety_stamp())
    outcome: dict[str, Any] = {}

    def change(release: str) -> str:
        outcome["migrations"] = replaced_database(session, release, path, safety, as_json)
        outcome["rows_after"], outcome["smoke"] = serving_again(session, f"{path} is restored",
                                                                safety, as_json)
        outcome["pruned"] = old_safety_dumps(dumps, keep=path)
        for old in outcome["pruned"]:
            session.remote.run(commands.remove_file(old))
        return f"ok restored={path} safety={safety}"

    locked_change(session, f"restore {path}", change)
    data = {"stage": session.stage, "restored": path, "kind": dump["kind"], "dump_created": created,
            "dump_age_seconds": age, "safety_dump": safety, "rows_before": before, "rows_after": outcome["rows_after"],
            "migrations": outcome["migrations"], "smoke": outcome["smoke"], "pruned_safety_dumps": outcome["pruned"]}

    def render():
        say(f"restored {path}; the database as it was is in {safety}")
        say("rows: " + ", ".join(f"{t} {before.get(t)} -> {n}" for t, n in data["rows_after"].items()))
        say("smoke: " + ", ".join(f"{c['name']} PASS" for c in data["smoke"]))
        say(f"recorded in {layout.audit_log}")

    emit(as_json, data, render)


# --- secrets: one rotated, then the same release deployed with it -------------------------------


@cli.group("secrets")
def secrets_group() -> None:
    """Rotate a secret of the stage."""


def new_secret_value(rotation: Rotation, from_stdin: bool, stage: str) -> str:
    if from_stdin:
        return issued_value(rotation.name, sys.stdin.read())
    if not rotation.issued:
        return generated_value(rotation.name)
    if stdin_is_tty():
        return issued_value(rotation.name, click.prompt(f"the new {rotation.name} (not shown)", hide_input=True,
                                                        err=True))
    raise UsageProblem(f"NAME: {rotation.name} is issued by its provider, not generated: paste it on a terminal, "
                       f"or pipe it with --from-stdin: ... | resto {stage} secrets rotate {rotation.name} "
                       "--from-stdin --yes; nothing changed")


def check_new_values(session: Session, name: str, written: Mapping[str, str], path: Path) -> Settings:
    """The stage's settings with the ``written`` lines: the new value meets its field's rules."""
    try:
        return load_settings(session.target.data["resto"], {**read_env_file(path), **os.environ, **written})
    except SettingsError as error:
        raise UsageProblem(f"{name}: the new value is refused by the settings: {error}\nnothing changed") from None


def release_rendered_here(session: Session, settings: Settings, current: str) -> str:
    """The name of the deployed release ``current``, once this checkout renders exactly it (same archive):
    the rotation's deploy then changes the secret and nothing else."""
    from restobot.operations.release import release_id
    from restobot.release_archive import ReleaseError, build_release

    name = current.rsplit("-", 1)[0]
    root = REPO_ROOT
    try:
        mine = release_id(name, build_release(settings, name, root).sha256)
    except ReleaseError as error:
        raise CliError(f"{root}: cannot render release {name} here ({error}); nothing changed") from None
    if mine != current:
        raise CliError(f"{session.target.host_name} runs {current}, but this checkout ({root}) renders {mine}: "
                       "the rotation's deploy would change more than the secret. Check out what is deployed "
                       f"(git checkout {name}) or deploy this checkout first, then rotate; nothing changed")
    return name


def deploy_argv(inventory: Path, release_name: str) -> list[str]:
    """This checkout's deploy.py onto the inventory's host, the release's name kept."""
    return [sys.executable, "-m", "pyinfra", str(inventory.resolve()), str(REPO_ROOT / "deploy.py"), "-y",
            "--data", f"release={release_name}"]


def rotated_in_place(session: Session, rotation: Rotation, written: Mapping[str, str],
                     path: Path) -> Callable[[str], str]:
    """The locked change: the secrets file's ``written`` lines rewritten; for POSTGRES_PASSWORD the
    role's password too (as a SCRAM verifier, on psql's stdin). A failure puts the file back as it was."""
    value = written[rotation.name]

    def change(_: str) -> str:
        before = path.read_text()
        secrets_file_written(path, with_values(before, dict(written)))
        if not rotation.database_role:
            return f"ok {path.name} rewritten; deploy next"
        try:
            sql = role_password_sql(session.target.settings.database.user, scram_sha256_verifier(value))
            session.remote.check(commands.role_password_set(), "changing the database role's password", stdin=sql)
        except BaseException:
            secrets_file_written(path, before)
            raise
        return f"ok {path.name} rewritten, role {session.target.settings.database.user} password changed; deploy next"

    return change


def deployed_showing_output(argv: Sequence[str], cwd: Path, as_json: bool) -> int:
    """Run the deploy, each line of its output shown as it comes (on stderr under --json); its exit status."""
    with subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as deploy:
        for line in deploy.stdout:
            tell(as_json, line.rstrip("\n"))
    return deploy.returncode


@secrets_group.command("rotate")
@click.argument("name", metavar="NAME")
@click.option("--from-stdin", is_flag=True,
              help="read the new value from stdin (a value a provider issues: Meta's app secret and tokens, S3 keys)")
@click.option("--yes", is_flag=True, help="do not ask for a confirmation (needed without a terminal)")
@click.option("--overlap", type=DurationType(), default=None,
              help="META_APP_SECRET only: how long signatures made with the old secret stay accepted "
                   "(default 24h, at most 7d)")
@json_option
@pass_session
def secrets_rotate(session: Session, name: str, from_stdin: bool, yes: bool, overlap: int | None,
                   as_json: bool) -> None:
    """Rotate the secret NAME: a new value (generated, or the one its provider issued) in
    secrets/STAGE.env, then the deployed release deployed again with it (its name kept).

    POSTGRES_PASSWORD changes the database role's password too, before the deploy. The deploy
    renders every file that holds the secret and recreates the services that read it. This
    checkout must render exactly the deployed release (else refused: the deploy would change
    more). Takes the deploy lock and is audited; the value is never printed (it is in the
    secrets file). Releases rendered before hold the old value: deploy, do not roll back to them.

    META_APP_SECRET keeps the old secret accepted on signatures for --overlap (24h by default):
    META_APP_SECRET_PREVIOUS and META_APP_SECRET_PREVIOUS_UNTIL in the secrets file."""
    try:
        rotation = rotation_for(name)
        path = secrets_file(session.stage)
        check_kept_in_file(rotation, path, os.environ)
    except RotationRefused as refused:
        raise UsageProblem(f"{refused}; nothing changed") from None
    if overlap is not None and rotation.previous is None:
        raise UsageProblem(f"--overlap: only META_APP_SECRET keeps its old value accepted, not {name}; nothing changed")
    if overlap is not None and overlap > MAX_OVERLAP_SECONDS:
        raise UsageProblem("--overlap: at most 7d (the old secret is a secret still in force); nothing changed")
    if from_stdin and not yes:
        raise UsageProblem("--from-stdin: stdin holds the value, so there is no answer to read there; "
                           "add --yes; nothing changed")
    try:
        value = new_secret_value(rotation, from_stdin, session.stage)
    except RotationRefused as refused:
        raise UsageProblem(f"{refused}; nothing changed") from None
    old = read_env_file(path)[name]
    if value == old:
        raise UsageProblem(f"{name}: the new value is the one already in {path}; nothing changed")
    written = rotation.lines_written(value, old, datetime.now(timezone.utc),
                                     DEFAULT_OVERLAP_SECONDS if overlap is None else overlap)
    check_new_values(session, name, written, path)
    previous = session.require_release()
    release_name = release_rendered_here(session, session.target.settings, previous)
    database = " and the database role's password" if rotation.database_role else ""
    confirmed(yes, f"rotate {name} on {session.stage}: a new value in {path}{database}, then {release_name} "
                   "deployed again with it?", f"secrets rotate changes {name} on {session.stage}",
              f"resto {session.stage} secrets rotate {name} --yes", stdin_is_tty)

    locked_change(session, f"secrets rotate {name}", rotated_in_place(session, rotation, written, path))
    tell(as_json, f"{name} changed in {path}{database}; deploying {release_name} with it")
    returncode = deployed_showing_output(deploy_argv(session.inventory, release_name), REPO_ROOT, as_json)
    if returncode != 0:
        raise CliError(f"the deploy failed (exit {returncode}; its output is above): {name} is already "
                       f"changed in {path}{database}, the services may still hold the old value. Fix the cause, "
                       f"then deploy again: pyinfra {session.inventory} {REPO_ROOT / 'deploy.py'} --data release={release_name}")
    release = session.require_release()
    data = {"stage": session.stage, "secret": name, "secrets_file": str(path), "previous_release": previous,
            "release": release, "database_role_changed": bool(database), "afterwards": rotation.afterwards,
            "old_value_accepted_until": written.get(f"{rotation.previous}_UNTIL")}

    def render():
        say(f"{name} rotated: the new value is in {path}; {release} serves with it (was {previous})")
        if rotation.afterwards:
            say(f"still to do: {rotation.afterwards}")
        say(f"recorded in {session.target.layout.audit_log}")

    emit(as_json, data, render)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``resto`` console script."""
    try:
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="resto", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted; nothing more was done", err=True)
        return EXIT_FAILED
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    return status if isinstance(status, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
