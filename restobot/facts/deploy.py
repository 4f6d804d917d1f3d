"""Facts the deploy reads from the VPS. Read-only; each answers in one command.

A remote command costs about 130 ms (FIELD_NOTES.md), so `DeployState` returns
the whole picture a no-op deploy needs (current release, releases on disk,
lock, imported workflows, the project's containers) in a single round trip.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from restobot.commands import (
    COMPOSE_PROJECT,
    LONG_RUNNING_SERVICES,
    HostLayout,
    shell_text,
)

POSTGRES_CONTAINER = f"{COMPOSE_PROJECT}-postgres-1"


@dataclass(frozen=True)
class Container:
    service: str
    working_dir: str
    state: str
    status: str

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
        """``current`` is this release and every long-running service runs healthy.

        Compose keeps a container whose configuration did not change, whatever
        release directory started it, so the working directory is not compared.
        """
        return self.current == identifier and not self.unhealthy_services()

    def unhealthy_services(self) -> list[str]:
        by_service = {c.service: c for c in self.containers}
        return [s for s in LONG_RUNNING_SERVICES if s not in by_service or not by_service[s].healthy]


def deploy_state_script(layout: HostLayout) -> str:
    """One POSIX sh script printing tab-separated records; always exits 0."""
    base = shlex.quote(layout.base_dir)
    containers = shell_text(
        [
            "docker", "ps", "--all",
            "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}",
            "--format",
            '{{.Label "com.docker.compose.service"}}\t{{.Label "com.docker.compose.project.working_dir"}}'
            "\t{{.State}}\t{{.Status}}",
        ]
    )
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
        elif kind == "container":
            parts = rest.split("\t")
            if len(parts) == 4:
                containers.append(Container(*parts))
    return HostState(current, releases, lock, workflows, tuple(containers))


class DeployState(FactBase):
    """The deploy's view of the host: releases, ``current``, lock, workflows, containers.

    An empty ``HostState`` means nothing was ever deployed (no base directory).
    """

    def command(self, base_dir: str) -> str:
        return deploy_state_script(HostLayout(base_dir))

    def process(self, output: list[str]) -> HostState:
        return parse_deploy_state(output, HostLayout())

    def default(self) -> HostState:
        return HostState()


class DockerImages(FactBase):
    """Which of the given image references exist in the host's docker engine.

    An empty set means none, or that docker is not installed yet.
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
    filename: str
    checksum: str
    backward_compatible: bool = False


def psql_probe(sql: str) -> str:
    """A command printing ``rows`` then the query's tab-separated rows, or ``none`` when no database answers."""
    probe = shell_text(
        [
            "docker", "exec", POSTGRES_CONTAINER, "sh", "-c",
            'psql -X -At -F "$(printf \'\\t\')" -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"', sql,
        ]
    )
    return f"if out=$({probe} 2>/dev/null); then printf 'rows\\n%s\\n' \"$out\"; else echo none; fi"


def parse_psql_rows(output: list[str]) -> list[list[str]] | None:
    if not output or output[0].strip() != "rows":
        return None
    return [line.split("\t") for line in output[1:] if line.strip()]


class ApiClient(FactBase):
    """The (token_hash, scopes, enabled) of the named API client; None when absent or no database."""

    def command(self, client: str) -> str:
        name = client.replace("'", "''")
        return psql_probe(
            "SELECT token_hash, array_to_string(scopes, ','), enabled FROM api_clients "
            f"WHERE name = '{name}'"
        )

    def process(self, output: list[str]) -> tuple[str, tuple[str, ...], bool] | None:
        rows = parse_psql_rows(output)
        if not rows:
            return None
        token_hash, scopes, enabled = rows[0]
        return token_hash, tuple(sorted(filter(None, scopes.split(",")))), enabled == "t"

    def default(self) -> None:
        return None


class AppliedMigrations(FactBase):
    """The rows of ``schema_migrations`` in the running PostgreSQL container.

    None means there is no running database or no ledger yet (a fresh install).
    """

    def command(self) -> str:
        return psql_probe(
            "SELECT filename, checksum, backward_compatible FROM schema_migrations ORDER BY filename"
        )

    def process(self, output: list[str]) -> tuple[LedgerRow, ...] | None:
        rows = parse_psql_rows(output)
        if rows is None:
            return None
        return tuple(LedgerRow(row[0], row[1], row[2] == "t") for row in rows if len(row) == 3)

    def default(self) -> None:
        return None


class SmokeResults(FactBase):
    """The release's smoke checks, run on the host: name -> (passed, detail).

    Empty when the release directory has no smoke script.
    """

    def command(self, release_dir: str, attempts: int = 1) -> str:
        script = f"{release_dir}/bin/smoke"
        return f"[ -x {shlex.quote(script)} ] && {shell_text([script, str(attempts)])}; exit 0"

    def process(self, output: list[str]) -> dict[str, tuple[bool, str]]:
        results: dict[str, tuple[bool, str]] = {}
        for line in output:
            verdict, _, rest = line.partition(" ")
            if verdict in ("PASS", "FAIL"):
                name, _, detail = rest.partition(" ")
                results[name] = (verdict == "PASS", detail)
        return results

    def default(self) -> dict[str, tuple[bool, str]]:
        return {}


class ReleaseManifest(FactBase):
    """A release's RELEASE.json on the host; None when the release is not there."""

    def command(self, release_dir: str) -> str:
        path = shlex.quote(f"{release_dir}/RELEASE.json")
        return f"cat {path} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict | None:
        text = "\n".join(output).strip()
        return json.loads(text) if text else None

    def default(self) -> None:
        return None


@dataclass(frozen=True)
class Backup:
    path: str
    before_release: str
    applied_migrations: tuple[str, ...]


class Backups(FactBase):
    """The pre-deploy backups on the host, newest first (from their metadata files)."""

    def command(self, backups_dir: str) -> str:
        directory = shlex.quote(backups_dir)
        return (
            f"for meta in $(ls -1t {directory}/*.dump.json 2>/dev/null); do "
            '[ -s "${meta%.json}" ] && printf "%s\\t%s\\n" "${meta%.json}" "$(tr -d \'\\n\' < "$meta")"; '
            "done; exit 0"
        )

    def process(self, output: list[str]) -> list[Backup]:
        backups = []
        for line in output:
            path, _, meta = line.partition("\t")
            try:
                data = json.loads(meta)
            except json.JSONDecodeError:
                continue
            backups.append(Backup(path, data.get("before_release", "?"), tuple(data.get("applied_migrations", ()))))
        return backups

    def default(self) -> list[Backup]:
        return []
