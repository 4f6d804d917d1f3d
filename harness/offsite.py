"""The off-site backup's local stand-ins: PostgreSQL with pgBackRest, and an SFTP-only host.

Built like the images in ``images.LOCAL_IMAGES`` (same inputs-label cache rule), on demand by the
tests that use them; not bundled for the VPS (the deploy builds its own postgres image with pgBackRest).

``start_offsite_host`` runs the SFTP-only host on a docker network of its own, as a storage box reached
over the internet, and returns the ``offsite_backup`` settings that reach it; ``attached_to`` is
``deploys.bring_up_stack``'s ``prepare`` that joins a VPS to that network (tests/e2e/test_offsite_backup.py,
bench/bench_restore.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from harness import images
from harness.deploys import HarnessError
from harness.poll import poll
from harness.sidecar import docker

REPOSITORY_PATH = "/srv/offsite/restobot"

POSTGRES_PGBACKREST_IMAGE = images.LocalImage(
    name="postgres-pgbackrest", tag="17",
    official="(postgres:17 plus pgBackRest: not built for production yet)",
    parent="postgres:17", inputs=(("harness/dockerfiles/postgres-pgbackrest", "."),),
)
SFTP_IMAGE = images.LocalImage(
    name="sftp", tag="bookworm",
    official="(none: the off-site host, a storage box or a second VPS, is the operator's)",
    parent="debian:bookworm", inputs=(("harness/dockerfiles/sftp", "."),),
)


def build_offsite_images(out: TextIO | None = None) -> tuple[str, str]:
    """Build both images when their inputs changed; return their refs (postgres, sftp)."""
    images.build_images([POSTGRES_PGBACKREST_IMAGE, SFTP_IMAGE], out=out)
    return images.image_ref(POSTGRES_PGBACKREST_IMAGE), images.image_ref(SFTP_IMAGE)


@dataclasses.dataclass(frozen=True)
class OffsiteHost:
    container: str
    network: str
    settings: dict[str, Any]  # the offsite_backup section that reaches it


def checked_docker(*args: str) -> str:
    result = docker(*args)
    if result.returncode != 0:
        raise HarnessError(f"docker {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr.strip()[-1000:]}")
    return result.stdout


def login_key(directory: Path) -> Path:
    """pgBackRest's login key on the off-site host (ed25519, no passphrase); its .pub is authorised there."""
    key = directory / "offsite-login"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgbackrest", "-f", str(key)],
                   check=True, timeout=60)
    return key


def ecdsa_host_key(container: str) -> str:
    """The host's ECDSA key, read out of band (as from a provider's console): the one pgBackRest's libssh2
    negotiates (README, Backups)."""
    public = poll(lambda: docker("exec", container, "cat", "/etc/ssh/ssh_host_ecdsa_key.pub"),
                  until=lambda result: result.returncode == 0 and result.stdout.startswith("ecdsa-sha2-"),
                  timeout=30, what="the off-site host's ECDSA host key")
    return " ".join(public.stdout.split()[:2])


def address_on(container: str, network: str) -> str:
    return checked_docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                          container).strip()


def start_offsite_host(network: str, workdir: Path, archive_timeout_seconds: int) -> OffsiteHost:
    """The SFTP-only host ``{network}-sftp`` on ``network`` (created), its login key in ``workdir``."""
    _, sftp_image = build_offsite_images()
    key = login_key(workdir)
    container = f"{network}-sftp"
    checked_docker("network", "create", network)
    checked_docker("run", "-d", "--name", container, "--network", network,
                   "-e", f"AUTHORIZED_KEYS={key.with_suffix('.pub').read_text().strip()}", sftp_image)
    settings = {
        "enabled": True,
        "sftp": {"host": address_on(container, network), "user": "offsite", "path": REPOSITORY_PATH,
                 "host_key": ecdsa_host_key(container), "key_path": str(key)},
        "archive_timeout_seconds": archive_timeout_seconds,
    }
    return OffsiteHost(container, network, settings)


def remove_offsite_host(network: str) -> None:
    """The host and its network (remove the VPS containers that joined it first)."""
    docker("rm", "-f", "-v", f"{network}-sftp")
    docker("network", "rm", network)


def attached_to(host: OffsiteHost) -> Callable[[Any], dict]:
    """bring_up_stack's ``prepare``: the VPS joins the off-site host's network; its settings reach it."""

    def attach(endpoint) -> dict:
        # Joining a user-defined network points the VPS's resolv.conf at docker's embedded 127.0.0.11, which
        # the VPS's own docker engine cannot hand to its containers (it falls back to public resolvers,
        # unreachable here, and the postgres image's apt-get fails): the VPS keeps the resolver it had, as a
        # real VPS would.
        resolver = checked_docker("exec", endpoint.container, "cat", "/etc/resolv.conf")
        checked_docker("network", "connect", host.network, endpoint.container)
        subprocess.run(["docker", "exec", "-i", endpoint.container, "sh", "-c", "cat > /etc/resolv.conf"],
                       input=resolver, text=True, check=True, timeout=60)
        return {"offsite_backup": host.settings}

    return attach
