"""Facts the deploy reads from the VPS. Read-only; each answers in one command.

A remote command costs about 130 ms (FIELD_NOTES.md), so `DeployState` returns
the whole picture a no-op deploy needs (current release, releases on disk,
lock, imported workflows, the project's containers) in a single round trip.

The commands come from restobot/commands.py; SQL here is fixed text whose
values are psql variables.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from restobot.commands import (
    LONG_RUNNING_SERVICES,
    POSTGRES_CONTAINER,
    HostLayout,
    container_exec,
    container_name,
    project_containers,
    psql,
    service_containers,
    shell_text,
    smoke_checks,
)
from restobot.release_archive import MANIFEST, ReleaseManifest

__all__ = [  # POSTGRES_CONTAINER is imported from here by callers (tests/e2e/test_backup.py)
    "POSTGRES_CONTAINER",
    "ApiClient",
    "ApiClientRow",
    "AppliedMigrations",
    "DatabaseUnreadable",
    "PreDeployDump",
    "PreDeployDumps",
    "Container",
    "DeployState",
    "DockerImages",
    "HostState",
    "LedgerRow",
    "ReleaseManifestOnHost",
    "SafetyDumps",
    "SmokeCheck",
    "SmokeResults",
]


@dataclass(frozen=True)
class Container:
    """One container of the project, as ``docker ps`` shows it.

    + service: its compose service (``nginx``)
    + working_dir: the release directory whose compose file started it
    + state: ``running``, ``exited``...
    + status: ``Up 3 minutes (healthy)``, ``Exited (0) 2 minutes ago``...
    + name: its container name (``resto-nginx-1``); None when not known
    + number: its replica number (``1``)
    """

    service: str
    working_dir: str
    state: str
    status: str
    name: str | None = None
    number: str = "1"

    @property
    def canonical_name(self) -> str:
        return container_name(self.service, self.number)

    @property
    def misnamed(self) -> bool:
        """Compose recreates a container under a temporary name (``<id>_resto-nginx-1``) and renames
        it once the old one is gone; a deploy killed in between leaves the temporary name, and the
        next ``up`` keeps it as long as the configuration is unchanged."""
        return self.name is not None and self.name != self.canonical_name

    @property
    def healthy(self) -> bool:
        return self.state == "running" and "(healthy)" in self.status

    @property
    def exited_cleanly(self) -> bool:
        return self.state == "exited" and self.status.startswith("Exited (0)")


@dataclass(frozen=True)
class HostState:
    """What is deployed on the host, as far as the deploy cares."""

    current: str | None = None
    releases: dict[str, str] = field(default_factory=dict)  # release id -> archive sha256, newest first
    lock: str | None = None
    workflows_sha256: str | None = None
    containers: tuple[Container, ...] = ()

    def serving(self, identifier: str) -> bool:
        """``current`` is this release and every long-running service runs healthy, under
        the name compose gives it (the name operators and the smoke checks use).

        Compose keeps a container whose configuration did not change, whatever
        release directory started it, so the working directory is not compared.
        """
        return self.current == identifier and not self.unhealthy_services() and not self.misnamed_containers()

    def misnamed_containers(self) -> list[Container]:
        return [c for c in self.containers if c.misnamed]

    def unhealthy_services(self) -> list[str]:
        by_service = {c.service: c for c in self.containers}
        return [s for s in LONG_RUNNING_SERVICES if s not in by_service or not by_service[s].healthy]


def deploy_state_script(layout: HostLayout) -> str:
    """One POSIX sh script printing tab-separated records; always exits 0."""
    base = shlex.quote(layout.base_dir)
    containers = shell_text(project_containers())
    return "\n".join(
        [
            f"cd {base} 2>/dev/null || exit 0",
            "printf 'current\\t%s\\n' \"$(readlink current 2>/dev/null)\"",
            # Newest first: pruning keeps the head of this list.
            "for dir in $(ls -1dt releases/*/ 2>/dev/null); do",
            '  dir=${dir%/}',
            '  [ -f "$dir/.release.sha256" ] || continue',
            "  printf 'release\\t%s\\t%s\\n' \"${dir#releases/}\" \"$(cat \"$dir/.release.sha256\")\"",
            "done",
            "[ -f deploy.lock/info ] && printf 'lock\\t%s\\n' \"$(tr '\\n' ' ' < deploy.lock/info)\"",
            "[ -f state/workflows.sha256 ] && printf 'workflows\\t%s\\n' \"$(cat state/workflows.sha256)\"",
            f"command -v docker >/dev/null 2>&1 && {containers} 2>/dev/null | sed 's/^/container\\t/'",
            "exit 0",
        ]
    )


def parse_deploy_state(lines: list[str], layout: HostLayout) -> HostState:
    current = None
    releases: dict[str, str] = {}
    lock = workflows = None
    containers: list[Container] = []
    for line in lines:
        kind, _, rest = line.partition("\t")
        if kind == "current" and rest.strip():
            current = rest.strip().rstrip("/").rsplit("/", 1)[-1]
        elif kind == "release":
            name, _, sha = rest.partition("\t")
            releases[name] = sha.strip()
        elif kind == "lock":
            lock = rest.strip()
        elif kind == "workflows":
            workflows = rest.strip()
        elif kind == "container" and (container := parse_container(rest)):
            containers.append(container)
    return HostState(current, releases, lock, workflows, tuple(containers))


def parse_container(line: str) -> Container | None:
    """One line of ``project_containers()``; None for a line that is not one."""
    parts = line.split("\t")
    return Container(*parts) if len(parts) == 6 else None


class DeployState(FactBase[HostState]):
    """The deploy's view of the host: releases, ``current``, lock, workflows, containers.

    Never None: an empty ``HostState`` means nothing was ever deployed (no base directory).
    """

    def command(self, base_dir: str) -> str:
        return deploy_state_script(HostLayout(base_dir))

    def process(self, output: list[str]) -> HostState:
        return parse_deploy_state(output, HostLayout())

    def default(self) -> HostState:
        return HostState()


class DockerImages(FactBase[set[str]]):
    """Which of the given image references exist in the host's docker engine.

    Never None: an empty set means none, or that docker is not installed yet.
    """

    def command(self, images: tuple[str, ...]) -> str:
        checks = " ".join(shlex.quote(image) for image in images)
        return (
            f"for image in {checks}; do "
            'docker image inspect "$image" >/dev/null 2>&1 && printf "%s\\n" "$image"; '
            "done; exit 0"
        )

    def process(self, output: list[str]) -> set[str]:
        return {line.strip() for line in output if line.strip()}

    def default(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class LedgerRow:
    """One row of ``schema_migrations``: a migration applied to the database.

    + filename: the migration's file name
    + checksum: the hash of the file as it was applied
    + backward_compatible: it was marked ``-- migrate:backward-compatible``
    """

    filename: str
    checksum: str
    backward_compatible: bool = False


API_CLIENT_SQL = "SELECT token_hash, array_to_string(scopes, ','), enabled FROM api_clients WHERE name = :'name'"
LEDGER_SQL = "SELECT filename, checksum, backward_compatible FROM schema_migrations ORDER BY filename"


# What a fresh host answers: the database or the queried table is not created yet.
NOT_CREATED_YET = re.compile(r'FATAL: +database "[^"]*" does not exist|ERROR: +relation "[^"]*" does not exist')


@dataclass(frozen=True)
class DatabaseUnreadable:
    """A database that exists (its container does) but did not answer the probe: still starting,
    stopped, refusing the role or the password...

    + error: what was seen, as psql or docker printed it
    """

    error: str


def psql_probe(sql: str, variables: dict[str, str] | None = None) -> str:
    """A command printing one of:

    + ``rows`` then the query's tab-separated rows;
    + ``none``: no docker or no postgres container (a fresh host);
    + ``container`` then ``name state`` lines: the postgres container is not running under its name;
    + ``error`` then what psql (or ``docker exec``) printed on stderr when the query failed.
    """
    probe = shell_text(container_exec(POSTGRES_CONTAINER, psql(sql, variables, separator="\t")))
    listing = shell_text(service_containers("postgres"))
    return "\n".join(
        [
            "command -v docker >/dev/null 2>&1 || { echo none; exit 0; }",
            # A docker that does not answer runs no container: the deploy starts it before using it.
            f"found=$({listing} 2>/dev/null) || {{ echo none; exit 0; }}",
            '[ -n "$found" ] || { echo none; exit 0; }',
            f"[ \"$found\" = {shlex.quote(POSTGRES_CONTAINER + ' running')} ] "
            "|| { printf 'container\\n%s\\n' \"$found\"; exit 0; }",
            # The rows go to fd 3 (this script's output); stderr is kept for the error case only.
            "exec 3>&1",
            f"err=$({{ out=$({probe}) && printf 'rows\\n%s\\n' \"$out\" >&3; }} 2>&1) "
            "|| printf 'error\\n%s\\n' \"$err\"",
            "exit 0",
        ]
    )


def parse_psql_rows(output: list[str]) -> list[list[str]] | DatabaseUnreadable | None:
    """The rows a ``psql_probe`` printed; None when no database or table exists yet (a fresh host)."""
    marker = output[0].strip() if output else "none"
    if marker == "rows":
        return [line.split("\t") for line in output[1:] if line.strip()]
    details = [line.rstrip() for line in output[1:] if line.strip()]
    if marker == "container":
        return DatabaseUnreadable(f"the postgres container is not running as {POSTGRES_CONTAINER}: "
                                  + "; ".join(details))
    if marker == "error":
        text = "\n".join(details)
        if NOT_CREATED_YET.search(text):
            return None
        return DatabaseUnreadable(text or "psql failed and printed nothing")
    return None


@dataclass(frozen=True)
class ApiClientRow:
    """An API client as the database holds it.

    + token_hash: sha256 hex of its token
    + scopes: its scopes, sorted
    + enabled: whether the admin API accepts it
    """

    token_hash: str
    scopes: tuple[str, ...]
    enabled: bool


class ApiClient(FactBase[ApiClientRow | None]):
    """The named API client.

    None: no such client, or no database answers yet (a fresh host).
    """

    def command(self, client: str) -> str:
        return psql_probe(API_CLIENT_SQL, {"name": client})

    def process(self, output: list[str]) -> ApiClientRow | None:
        rows = parse_psql_rows(output)
        if not isinstance(rows, list) or not rows:  # unreadable: the upsert that follows fails with psql's error
            return None
        token_hash, scopes, enabled = rows[0]
        return ApiClientRow(token_hash, tuple(sorted(filter(None, scopes.split(",")))), enabled == "t")

    def default(self) -> None:
        return None


class AppliedMigrations(FactBase[tuple[LedgerRow, ...] | DatabaseUnreadable | None]):
    """The rows of ``schema_migrations`` in the running PostgreSQL container.

    None means there is no database or no ledger yet (a fresh install: no postgres
    container, no database, no ``schema_migrations`` table). A database that exists
    but could not be read is ``DatabaseUnreadable``, never None: callers refuse it.
    """

    def command(self) -> str:
        return psql_probe(LEDGER_SQL)

    def process(self, output: list[str]) -> tuple[LedgerRow, ...] | DatabaseUnreadable | None:
        rows = parse_psql_rows(output)
        if not isinstance(rows, list):
            return rows
        return tuple(LedgerRow(row[0], row[1], row[2] == "t") for row in rows if len(row) == 3)

    def default(self) -> None:
        return None


@dataclass(frozen=True)
class SmokeCheck:
    """One line of a release's smoke script.

    + name: the check (``healthz``)
    + passed: it printed PASS
    + detail: the rest of its line
    """

    name: str
    passed: bool
    detail: str


class SmokeResults(FactBase[tuple[SmokeCheck, ...]]):
    """The release's smoke checks, run on the host, in the script's order (one per name: the last wins).

    Never None: empty when the release directory has no smoke script.
    """

    def command(self, release_dir: str, attempts: int = 1) -> str:
        checks = smoke_checks(release_dir, attempts)
        return f"[ -x {shlex.quote(checks[0])} ] && {shell_text(checks)}; exit 0"

    def process(self, output: list[str]) -> tuple[SmokeCheck, ...]:
        results: dict[str, SmokeCheck] = {}
        for line in output:
            verdict, _, rest = line.partition(" ")
            if verdict in ("PASS", "FAIL"):
                name, _, detail = rest.partition(" ")
                results[name] = SmokeCheck(name, verdict == "PASS", detail)
        return tuple(results.values())

    def default(self) -> tuple[SmokeCheck, ...]:
        return ()


class ReleaseManifestOnHost(FactBase[ReleaseManifest | None]):
    """The ``RELEASE.json`` of a release directory on the host.

    None: the release is not there (or has no manifest). A manifest that does
    not parse fails the fact with an error naming the file.
    """

    def command(self, release_dir: str) -> str:
        path = shlex.quote(f"{release_dir}/{MANIFEST}")
        return f"cat {path} 2>/dev/null || true"

    def process(self, output: list[str]) -> ReleaseManifest | None:
        text = "\n".join(output).strip()
        return ReleaseManifest.from_json(text, source=f"{MANIFEST} on the host") if text else None

    def default(self) -> None:
        return None


class ConfigDirs(FactBase[set[str]]):
    """The names of the directories under ``configs/`` (the copies containers mount); empty without it.
    A ``.partial`` copy (a deploy killed while copying) is not one."""

    def command(self, configs_dir: str) -> str:
        return f"ls -1 {shlex.quote(configs_dir)} 2>/dev/null || true"

    def process(self, output: list[str]) -> set[str]:
        return {line.strip() for line in output if line.strip() and not line.strip().endswith(".partial")}

    def default(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class PreDeployDump:
    """A pre-deploy backup on the host.

    + path: the dump's path
    + before_release: the release that migrated right after it (``?`` when unknown)
    + applied_migrations: the migrations the database had when it was dumped
    """

    path: str
    before_release: str
    applied_migrations: tuple[str, ...]


class PreDeployDumps(FactBase[list[PreDeployDump]]):
    """The pre-deploy backups on the host, newest first (from their metadata files).

    Never None: empty when there is none; a dump without readable metadata is left out.
    """

    def command(self, backups_dir: str) -> str:
        directory = shlex.quote(backups_dir)
        return (
            f"for meta in $(ls -1t {directory}/*.dump.json 2>/dev/null); do "
            '[ -s "${meta%.json}" ] && printf "%s\\t%s\\n" "${meta%.json}" "$(tr -d \'\\n\' < "$meta")"; '
            "done; exit 0"
        )

    def process(self, output: list[str]) -> list[PreDeployDump]:
        backups = []
        for line in output:
            path, _, meta = line.partition("\t")
            try:
                data = json.loads(meta)
            except json.JSONDecodeError:
                continue
            backups.append(PreDeployDump(path, data.get("before_release", "?"), tuple(data.get("applied_migrations", ()))))
        return backups

    def default(self) -> list[PreDeployDump]:
        return []


class SafetyDumps(FactBase[list[str]]):
    """The safety dumps restores took of the database they replaced (``HostLayout.safety_dumps``), newest first.

    Never None: empty when there is none.
    """

    def command(self, base_dir: str) -> str:
        layout = HostLayout(base_dir)
        pattern = layout.safety_dumps.removeprefix(f"{layout.backups_dir}/")
        return f"ls -1t {shlex.quote(layout.backups_dir)}/{pattern} 2>/dev/null; exit 0"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    def default(self) -> list[str]:
        return []
