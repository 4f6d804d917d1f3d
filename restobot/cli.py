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
``lock release``) take the lock first (or
release it, on purpose) and append one line to the host's audit log.

Exit status, for scripts:

    0  done (a read command read the host, whatever it found)
    1  the host answered with a failure (a command failed on it, a service did not
       become healthy, ``ps --check`` found a service not running healthy)
    2  bad input or settings: unknown stage, service, channel, count or duration;
       invalid inventory or secrets. Nothing was connected to, nothing changed
    3  the VPS could not be reached, or its host key is not the pinned one
    4  refused: the deploy lock is held by someone else (nothing changed)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import runpy
import socket
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
from restobot.settings import CHANNELS, REPO_ROOT, Settings, SettingsError, Stage, load_settings

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
    """The one JSON document a ``json_rows`` query printed."""
    text = "\n".join(lines).strip()
    if not text:
        raise ValueError("psql printed nothing")
    return json.loads(text)


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
    status = stanza["status"]
    return {
        "stanza": stanza["name"],
        "status": status["message"],
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


@contextlib.contextmanager
def project_importable(inventory: Path):
    """The checkout holding ``inventory/`` first on ``sys.path`` while the inventory runs, as under
    ``pyinfra`` or ``python -m`` from that checkout: the ``resto`` script runs from any directory,
    and an inventory may import its checkout's modules (``inventory/local.py`` imports ``harness``)."""
    folder = inventory.resolve().parent
    root = str(folder.parent if folder.name == "inventory" else folder)
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


@cli.command()
@click.option("--attempts", type=click.IntRange(1, 60), default=1, show_default=True,
              help="tries of the first check, 2 s apart (the deploy gives a new release 45)")
@json_option
@pass_session
def smoke(session: Session, attempts: int, as_json: bool) -> None:
    """The deploy's smoke checks alone, on the current release: the gateway's /healthz and the Meta
    verify handshake of each channel through Traefik, and the n8n console behind the gateway.
    Exit 1 when one fails."""
    release = session.require_release()
    result = session.remote.check(commands.smoke_checks(session.target.layout.current, attempts), "the smoke checks",
                                  timeout=600)
    checks = parse_smoke(result.lines)
    failed = [check["name"] for check in checks if not check["passed"]] or ([] if checks else ["(no result)"])
    data = {"stage": session.stage, "release": release, "checks": checks, "failed": failed}

    def render():
        table(f"smoke checks of {release}", ["check", "result", "detail"],
              [(c["name"], "PASS" if c["passed"] else "FAIL", c["detail"]) for c in checks])
        if failed:
            say(f"failed: {', '.join(failed)}")

    emit(as_json, data, render)
    if failed:
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
    offsite = session.target.settings.offsite_backup
    if not offsite.enabled:
        raise UsageProblem(f"offsite_backup.enabled is false in {session.inventory}: nothing is archived off-site; "
                           "set it to true with its repository (README, Backups) and deploy")
    result = session.remote.check(commands.pgbackrest(offsite.stanza, "--output=json", "info"),
                                  "pgbackrest info in the postgres container")
    try:
        data = {"stage": session.stage, **offsite_summary(parse_json_document(result.lines))}
    except (ValueError, KeyError, TypeError) as error:
        raise CliError(f"pgbackrest info: its answer is not the JSON expected ({error}): {result.stdout[:300]}") from None

    def render():
        say(f"stanza {data['stanza']}: {data['status']} (cipher {data['cipher']}); "
            f"WAL archived {data['wal_min'] or '-'} .. {data['wal_max'] or '-'}")
        table("backups, oldest first", ["label", "type", "started", "stopped", "database", "in the repository"],
              [(b["label"], b["type"], b["started"], b["stopped"], b["database_bytes"], b["repository_bytes"])
               for b in data["backups"]])

    emit(as_json, data, render)
    if check and not data["healthy"]:
        raise CliError(f"the off-site repository is not healthy: {data['status']}, "
                       f"{sum(b['type'] == 'full' for b in data['backups'])} full backup(s)")


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


def service_change(session: Session, verb: str, service: str) -> None:
    release_dir = session.target.layout.current

    def change(release: str) -> str:
        session.remote.check(commands.compose_service_action(release_dir, verb, service), f"{verb} {service}",
                             timeout=300)
        if verb == "stop":
            return "ok"
        container = wait_until_healthy(session, service)
        return f"ok started_at={container['started_at']}"

    locked_change(session, f"{verb} {service}", change)
    state = "stopped" if verb == "stop" else "running healthy"
    say(f"{service}: {state} ({verb} recorded in {session.target.layout.audit_log})")


@cli.command()
@click.argument("service", type=SERVICE, metavar="SERVICE")
@pass_session
def restart(session: Session, service: str) -> None:
    """Restart SERVICE and wait until it is healthy again (takes the deploy lock, audited)."""
    service_change(session, "restart", service)


@cli.command()
@click.argument("service", type=SERVICE, metavar="SERVICE")
@pass_session
def stop(session: Session, service: str) -> None:
    """Stop SERVICE (takes the deploy lock, audited); ``start`` brings it back.

    Until README's "Not yet held" gap is fixed, stop nginx before n8n-main."""
    service_change(session, "stop", service)


@cli.command()
@click.argument("service", type=SERVICE, metavar="SERVICE")
@pass_session
def start(session: Session, service: str) -> None:
    """Start a stopped SERVICE and wait until it is healthy (takes the deploy lock, audited)."""
    service_change(session, "start", service)


def retention_variables(settings: Settings) -> dict[str, str]:
    """The ages past which ``cleanup`` deletes, as ``commands.PAST_RETENTION``'s psql variables."""
    return {"inbound_days": str(settings.retention.inbound_messages_days),
            "outbound_days": str(settings.retention.outbound_messages_days),
            "security_days": str(settings.retention.security_events_days),
            "executions_hours": str(settings.n8n.executions_max_age_hours)}


@cli.command()
@click.option("--dry-run", is_flag=True, help="count the rows past their retention; delete nothing (no lock, no audit)")
@json_option
@pass_session
def cleanup(session: Session, dry_run: bool, as_json: bool) -> None:
    """Delete the rows kept past their retention: inbound and outbound messages and security events
    (retention.*_days), n8n's ended executions (n8n.executions_max_age_hours); prints how many rows of
    each table went. Takes the deploy lock and is audited, unless --dry-run. PostgreSQL reuses the
    space (autovacuum); it does not give it back to the file system."""
    settings = session.target.settings
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
