"""Remote commands as data: pure builders that return argv lists.

Each builder is tested by exact value; `shell()` turns an argv into a pyinfra
command with every part quoted. No command is glued together by hand.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra.api import QuoteString, StringCommand

COMPOSE_PROJECT = "resto"
LONG_RUNNING_SERVICES = ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik")


def shell(argv: Sequence[str]) -> StringCommand:
    """A pyinfra command running ``argv`` with every argument shell-quoted."""
    return StringCommand(*(QuoteString(part) for part in argv))


def shell_text(argv: Sequence[str]) -> str:
    return shlex.join(argv)


@dataclass(frozen=True)
class HostLayout:
    """Where things live on the VPS."""

    base_dir: str = "/opt/resto"

    @property
    def releases_dir(self) -> str:
        return f"{self.base_dir}/releases"

    @property
    def incoming_dir(self) -> str:
        return f"{self.base_dir}/incoming"

    @property
    def current(self) -> str:
        return f"{self.base_dir}/current"

    @property
    def backups_dir(self) -> str:
        return f"{self.base_dir}/backups"

    @property
    def state_dir(self) -> str:
        return f"{self.base_dir}/state"

    @property
    def lock_dir(self) -> str:
        return f"{self.base_dir}/deploy.lock"

    @property
    def audit_log(self) -> str:
        return f"{self.base_dir}/audit.log"

    def release_dir(self, name: str) -> str:
        return f"{self.releases_dir}/{name}"


def compose(release_dir: str, *args: str) -> list[str]:
    """``docker compose`` for one release directory of the single project."""
    return [
        "docker", "compose",
        "--project-name", COMPOSE_PROJECT,
        "--project-directory", release_dir,
        "--file", f"{release_dir}/compose.yml",
        *args,
    ]


def compose_up(release_dir: str, *services: str, timeout: int = 300) -> list[str]:
    """Start (or converge) services and wait until they are healthy or completed."""
    return compose(release_dir, "up", "--detach", "--wait", "--wait-timeout", str(timeout), "--remove-orphans", *services)


def compose_run_migrations(release_dir: str, *args: str) -> list[str]:
    """Run the release's db-migrate once, outside ``up``, so a failure leaves n8n untouched."""
    return compose(release_dir, "run", "--rm", "--no-TTY", "db-migrate", *args)


def compose_build_migrate(release_dir: str) -> list[str]:
    # Compose would hand the build to buildx (bake), which Debian's docker.io lacks.
    return ["env", "COMPOSE_BAKE=false", *compose(release_dir, "build", "--quiet", "db-migrate")]


def compose_logs(release_dir: str, service: str, lines: int = 30) -> list[str]:
    return compose(release_dir, "logs", "--no-color", "--tail", str(lines), service)


def compose_ps(release_dir: str) -> list[str]:
    return compose(release_dir, "ps", "--all", "--format", "json")


def project_containers() -> list[str]:
    """Every container of the project, whatever release directory started it."""
    fields = "\t".join(
        [
            '{{.Label "com.docker.compose.service"}}',
            '{{.Label "com.docker.compose.project.working_dir"}}',
            "{{.State}}",
            "{{.Status}}",
        ]
    )
    return ["docker", "ps", "--all", "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}", "--format", fields]


def psql(release_dir: str, sql: str) -> list[str]:
    """Run one SQL statement in the postgres container, unaligned tuples only."""
    return compose(
        release_dir, "exec", "-T", "postgres",
        "sh", "-c", 'exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"', sql,
    )


def pg_dump(release_dir: str) -> list[str]:
    """A custom-format dump on stdout (no TTY: -t would corrupt the binary output)."""
    return compose(
        release_dir, "exec", "-T", "postgres",
        "sh", "-c", 'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"',
    )


def pg_restore(release_dir: str) -> list[str]:
    """Restore a custom-format dump read from stdin, replacing existing objects."""
    return compose(
        release_dir, "exec", "-T", "postgres",
        "sh", "-c",
        'exec pg_restore --clean --if-exists --exit-on-error --no-owner -U "$POSTGRES_USER" -d "$POSTGRES_DB"',
    )


def image_present(images: Sequence[str]) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{index .RepoTags 0}}", *images]


def image_load(path: str) -> list[str]:
    return ["docker", "load", "--quiet", "--input", path]


def image_pull(image: str) -> list[str]:
    return ["docker", "pull", "--quiet", image]


def bundle_file_name(image: str) -> str:
    """The file a local image bundle is saved under: ``repo/name:tag`` -> ``repo_name_tag.tar``."""
    return image.replace("/", "_").replace(":", "_") + ".tar"
