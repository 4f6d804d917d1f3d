"""A local stand-in for the production VPS: a Debian 12 container reached over SSH.

The container runs ``restobot-local/vps:bookworm`` (sshd, python3, no docker)
with the flags that let a Docker engine run inside it on this machine (see
HARNESS.md: ``--privileged`` fails here), publishes SSH/HTTP/HTTPS on
127.0.0.1 only, and mounts the image bundles (``docker save`` tars) read-only at
``/var/lib/restobot-bundles`` because no registry is reachable from inside.

Root logs in with an ed25519 key generated once under ``.cache/local-vps/``.
The host key is read from the container through ``docker exec`` (a trusted
channel) and written to ``.cache/local-vps/<container>.known_hosts``, so SSH
clients verify it; the local stage's settings pin it as ``ssh.host_key``
(:func:`recorded_host_key`, used by harness/stage.py).

Docker is run, the container inspected and waited for with harness/sidecar.py's
helpers (the same as the sidecars beside the VPS use).

CLI::

    python -m harness.vps up [--fresh] [--ssh-port N] [--http-port N] [--https-port N]
    python -m harness.vps down
    python -m harness.vps ssh-config
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from harness import images, sidecar

CONTAINER_NAME = "restobot-vps-local"
"""Stable name: one local VPS per machine; ``up`` replaces a stopped leftover."""
VPS_IMAGE = "vps"
"""Name in ``images.LOCAL_IMAGES`` of the image the VPS runs."""
KEY_DIR = images.REPO_ROOT / ".cache" / "local-vps"
BUNDLE_MOUNT = "/var/lib/restobot-bundles"
LOOPBACK = sidecar.LOOPBACK
SPEC_LABEL = "org.restobot.vps-spec"
SSH_USER = "root"
HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
"""The host key the harness pins (sshd makes it at the container's first start)."""

# Flags that let dockerd run inside the container on this machine (HARNESS.md).
DIND_FLAGS: tuple[str, ...] = (
    "--cap-add", "ALL",
    "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
)


@dataclasses.dataclass(frozen=True)
class VpsPorts:
    """Host ports (on 127.0.0.1) published for the VPS's 22, 80 and 443.

    + ssh: host port for 22.
    + http: host port for 80.
    + https: host port for 443.
    """

    ssh: int = 2222
    http: int = 8080
    https: int = 8443


DEFAULT_PORTS = VpsPorts()


@dataclasses.dataclass(frozen=True)
class VpsEndpoint:
    """How to reach a running local VPS."""

    host: str
    ssh_port: int
    http_port: int
    https_port: int
    key_path: Path
    known_hosts_path: Path
    container: str
    user: str = SSH_USER

    @property
    def host_key(self) -> str | None:
        """The host key recorded for this VPS ("ssh-ed25519 AAAA..."); None when none is recorded."""
        return recorded_host_key(self.known_hosts_path)

    def ssh_argv(self, *command: str) -> list[str]:
        """``ssh`` argv for this VPS (host key checked against known_hosts_path)."""
        return [
            "ssh", "-i", str(self.key_path), "-p", str(self.ssh_port),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes",
            f"{self.user}@{self.host}", *command,
        ]

    def ssh_config(self) -> str:
        """An ~/.ssh/config block (``ssh -F FILE restobot-vps-local``)."""
        return (
            f"Host {self.container}\n"
            f"  HostName {self.host}\n"
            f"  Port {self.ssh_port}\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.key_path}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts_path}\n"
            f"  StrictHostKeyChecking yes\n"
        )


class VpsError(RuntimeError):
    pass


def volume_name(container: str) -> str:
    """Named volume holding the inner engine's /var/lib/docker (overlay on overlay is refused)."""
    return f"{container}-docker"


def key_paths(key_dir: Path = KEY_DIR, container: str = CONTAINER_NAME) -> tuple[Path, Path]:
    """(private key, known_hosts file of this container's host key)."""
    return key_dir / "id_ed25519", key_dir / f"{container}.known_hosts"


def ensure_key_pair(key_dir: Path = KEY_DIR) -> Path:
    """Make the root login key pair once (ed25519, private key mode 0600); return its path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    private_path, _ = key_paths(key_dir)
    public_path = private_path.with_suffix(".pub")
    if not private_path.exists():
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH,
        )
        tmp = private_path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(private)
        tmp.replace(private_path)
        public_path.write_bytes(public + b" restobot-local-vps\n")
    private_path.chmod(0o600)
    if not public_path.exists():
        raise VpsError(f"{public_path} is missing: remove {private_path} and run 'up' again")
    return private_path


def run_argv(*, container: str, image_ref: str, ports: VpsPorts, bundle_dir: Path,
             authorized_key: str, spec_hash: str) -> list[str]:
    """The ``docker run`` argv that starts the VPS container (pure: tested by value)."""
    return [
        "docker", "run", "--detach",
        "--name", container,
        "--hostname", container,
        "--label", f"{SPEC_LABEL}={spec_hash}",
        *DIND_FLAGS,
        "--volume", f"{volume_name(container)}:/var/lib/docker",
        "--volume", f"{bundle_dir}:{BUNDLE_MOUNT}:ro",
        "--publish", f"{LOOPBACK}:{ports.ssh}:22",
        "--publish", f"{LOOPBACK}:{ports.http}:80",
        "--publish", f"{LOOPBACK}:{ports.https}:443",
        "--env", f"AUTHORIZED_KEYS={authorized_key}",
        image_ref,
    ]


def _spec_hash(image_id: str, ports: VpsPorts, bundle_dir: Path, authorized_key: str) -> str:
    spec = {"image": image_id, "ports": dataclasses.asdict(ports),
            "bundle_dir": str(bundle_dir), "key": authorized_key}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _remove(container: str, *, volume: bool) -> None:
    sidecar.docker("rm", "--force", "--volumes", container)
    if volume:
        sidecar.docker("volume", "rm", "--force", volume_name(container))


def read_host_key(container: str) -> str | None:
    """The container's ed25519 host key, "ssh-ed25519 AAAA...", read through docker exec (a
    channel that does not depend on the key); None while sshd has not made it yet."""
    proc = sidecar.docker("exec", container, "cat", HOST_KEY_FILE)
    fields = proc.stdout.split()
    return f"{fields[0]} {fields[1]}" if proc.returncode == 0 and len(fields) >= 2 else None


def recorded_host_key(known_hosts: Path) -> str | None:
    """The host key ("ssh-ed25519 AAAA...") that :func:`ensure_vps_running` recorded in
    ``known_hosts``; None when there is no such file (the VPS is not up)."""
    try:
        fields = known_hosts.read_text().split()
    except OSError:
        return None
    return f"{fields[1]} {fields[2]}" if len(fields) >= 3 else None


def _record_host_key(container: str, ports: VpsPorts, known_hosts: Path, deadline: float) -> None:
    """Copy the container's ed25519 host key into known_hosts (read via docker exec)."""
    host_key, _ = sidecar.wait_for_container(container, lambda: read_host_key(container), deadline=deadline,
                                             what=f"{container}'s SSH host key", interval=0.3, error=VpsError)
    known_hosts.write_text(f"[{LOOPBACK}]:{ports.ssh} {host_key}\n")


def _ssh_login_works(endpoint: VpsEndpoint) -> bool:
    """One paramiko login (host key checked) running ``true``; raises while sshd is not ready."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(endpoint.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            endpoint.host, port=endpoint.ssh_port, username=endpoint.user,
            key_filename=str(endpoint.key_path), look_for_keys=False,
            allow_agent=False, timeout=3, banner_timeout=3, auth_timeout=3,
        )
        _, stdout, _ = client.exec_command("true", timeout=5)
        return stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def _wait_for_ssh(endpoint: VpsEndpoint, deadline: float) -> float:
    """Log in with paramiko until it works or the deadline passes; return seconds waited."""
    import paramiko

    _, seconds = sidecar.wait_for_container(
        endpoint.container, lambda: _ssh_login_works(endpoint), deadline=deadline,
        what=f"SSH login on {endpoint.host}:{endpoint.ssh_port}",
        tolerate=(paramiko.SSHException, OSError, EOFError), error=VpsError)
    return seconds


def ensure_vps_running(*, container: str = CONTAINER_NAME, ports: VpsPorts = DEFAULT_PORTS,
                       bundle_dir: Path = images.BUNDLE_DIR, key_dir: Path = KEY_DIR,
                       fresh: bool = False, build: bool = True, timeout: float = 90.0,
                       out: TextIO | None = sys.stdout) -> VpsEndpoint:
    """Ensure the local VPS container runs as specified and answers SSH.

    A running container with the same spec (image id, ports, bundle dir, key) is
    kept; a stopped leftover or one with another spec is replaced.

    + container: container name (the inner /var/lib/docker volume is ``<name>-docker``).
    + ports: host ports on 127.0.0.1 for 22/80/443.
    + bundle_dir: host directory mounted read-only at /var/lib/restobot-bundles.
    + key_dir: where the root key pair and known_hosts live.
    + fresh: remove any existing container and its volume first (a brand new VPS).
    + build: build the vps image first when its inputs changed.
    + timeout: seconds to wait for SSH.

    Examples:
        endpoint = ensure_vps_running()
        subprocess.run(endpoint.ssh_argv("uname", "-a"), check=True)
    """
    say = sidecar.say_to(out)
    if build:
        images.build_images([VPS_IMAGE], out=out)
    image_ref = images.current_ref(VPS_IMAGE)
    image_info = images.inspect_image(image_ref)
    if image_info is None:
        raise VpsError(f"{image_ref} is not built: run 'python -m harness.images build vps'")
    key_path = ensure_key_pair(key_dir)
    _, known_hosts = key_paths(key_dir, container)
    authorized_key = key_path.with_suffix(".pub").read_text().strip()
    bundle_dir = Path(bundle_dir).resolve()
    bundle_dir.mkdir(parents=True, exist_ok=True)
    spec_hash = _spec_hash(image_info["Id"], ports, bundle_dir, authorized_key)
    endpoint = VpsEndpoint(LOOPBACK, ports.ssh, ports.http, ports.https, key_path,
                           known_hosts, container)

    state = sidecar.container_state(container)
    running = sidecar.is_running(state)
    same_spec = bool(state and state["Config"]["Labels"].get(SPEC_LABEL) == spec_hash)
    do_remove = state is not None and (fresh or not running or not same_spec)
    do_start = do_remove or state is None
    deadline = time.monotonic() + timeout
    if do_remove:
        why = ("--fresh" if fresh else "stopped leftover" if not running else "spec changed")
        say(f"Removing {container} ({why}) and its volume {volume_name(container)}...")
        _remove(container, volume=True)
    if do_start:
        say(f"Starting {container} from {image_ref}...")
        proc = sidecar.run_docker(
            run_argv(container=container, image_ref=image_ref, ports=ports,
                     bundle_dir=bundle_dir, authorized_key=authorized_key, spec_hash=spec_hash))
        if proc.returncode != 0:
            raise VpsError(f"docker run {container} failed: {proc.stderr.strip()}")
        _record_host_key(container, ports, known_hosts, deadline)
    else:
        say(f"{container} already running with this spec")
        if not known_hosts.exists():
            _record_host_key(container, ports, known_hosts, deadline)
    waited = _wait_for_ssh(endpoint, deadline)
    say(f"SSH answers ({waited:.1f} s): {shlex.join(endpoint.ssh_argv())}")
    return endpoint


def vps_endpoint(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> VpsEndpoint:
    """The endpoint of an existing VPS container, ports read from docker."""
    state = sidecar.container_state(container)
    if state is None:
        raise VpsError(f"no container {container}: run 'python -m harness.vps up'")
    bindings = state["HostConfig"]["PortBindings"] or {}

    def host_port(port: int) -> int:
        return int(bindings[f"{port}/tcp"][0]["HostPort"])

    key_path, known_hosts = key_paths(key_dir, container)
    return VpsEndpoint(LOOPBACK, host_port(22), host_port(80), host_port(443), key_path,
                       known_hosts, container)


def ensure_vps_absent(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                      out: TextIO | None = sys.stdout) -> bool:
    """Remove the VPS container and its docker volume; return whether anything was there."""
    say = sidecar.say_to(out)
    existed = sidecar.container_state(container) is not None
    _remove(container, volume=True)
    _, known_hosts = key_paths(key_dir, container)
    if existed:
        known_hosts.unlink(missing_ok=True)
        say(f"Removed {container} and volume {volume_name(container)}")
    else:
        say(f"{container} is not there (volume {volume_name(container)} removed if left over)")
    return existed


def container_address(container: str = CONTAINER_NAME) -> str | None:
    """The VPS container's address on docker's default bridge (an "outside" viewpoint)."""
    state = sidecar.container_state(container)
    return ((state or {}).get("NetworkSettings") or {}).get("IPAddress") or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.vps",
        description="Start, stop and describe the local VPS container (a fresh Debian 12 host).",
    )
    parser.add_argument("--name", default=CONTAINER_NAME, help="container name (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the VPS (kept if already running) and wait for SSH")
    up.add_argument("--fresh", action="store_true", help="replace it with a brand new one")
    up.add_argument("--ssh-port", type=int, default=DEFAULT_PORTS.ssh)
    up.add_argument("--http-port", type=int, default=DEFAULT_PORTS.http)
    up.add_argument("--https-port", type=int, default=DEFAULT_PORTS.https)
    up.add_argument("--bundle-dir", type=Path, default=images.BUNDLE_DIR)
    commands.add_parser("down", help="remove the VPS container and its docker volume")
    commands.add_parser("ssh-config", help="print an ssh config block for the VPS")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            ensure_vps_running(
                container=args.name, fresh=args.fresh, bundle_dir=args.bundle_dir,
                ports=VpsPorts(ssh=args.ssh_port, http=args.http_port, https=args.https_port),
            )
        elif args.command == "down":
            ensure_vps_absent(container=args.name)
        else:
            print(vps_endpoint(container=args.name).ssh_config(), end="")
    except (VpsError, images.ImageBuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
