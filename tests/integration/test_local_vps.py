"""Docker in Docker on the local VPS: a fresh Debian 12 container reached over
SSH gets docker.io from apt, starts dockerd without systemd, loads an image
bundle and runs it. This is the path the deploy takes on a real VPS.

Takes 2-4 minutes (apt-get install docker.io inside is most of it). Timings
are printed with a TIMING prefix (run with -s to see them).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko
import pytest

from harness import images, vps
from harness.poll import PollTimeout, poll

pytestmark = pytest.mark.integration

REDIS = images.local_image("redis")
REDIS_REF = images.image_ref(REDIS)
REDIS_BUNDLE = f"{vps.BUNDLE_MOUNT}/{images.bundle_file_name(REDIS_REF)}"


@dataclass
class Shell:
    """Runs commands on the VPS over one paramiko connection."""

    client: paramiko.SSHClient

    def run(self, command: str, *, timeout: float = 60) -> tuple[int, str, str]:
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err

    def check(self, command: str, *, timeout: float = 60) -> str:
        code, out, err = self.run(command, timeout=timeout)
        assert code == 0, f"{command!r} exited {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
        return out


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[vps.VpsEndpoint]:
    images.build_images(["vps", "redis"], out=None)
    images.bundle_images(["redis"], out=None)
    name = f"restobot-vps-test-{secrets.token_hex(4)}"
    ports = vps.VpsPorts(ssh=_free_loopback_port(), http=_free_loopback_port(),
                         https=_free_loopback_port())
    started = time.monotonic()
    try:
        found = vps.ensure_vps_running(container=name, ports=ports, fresh=True, build=False,
                                       out=None)
        print(f"\nTIMING vps up (container start + SSH answers) {time.monotonic() - started:.1f} s")
        yield found
    finally:
        vps.ensure_vps_absent(container=name, out=None)


@pytest.fixture(scope="module")
def shell(endpoint: vps.VpsEndpoint) -> Iterator[Shell]:
    client = paramiko.SSHClient()
    client.load_host_keys(str(endpoint.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(endpoint.host, port=endpoint.ssh_port, username=endpoint.user,
                   key_filename=str(endpoint.key_path), look_for_keys=False, allow_agent=False,
                   timeout=10)
    yield Shell(client)
    client.close()


@dataclass
class DockerStart:
    """How dockerd came up inside the VPS: method is "service" or "start-stop-daemon"."""

    running_after_apt: bool
    method: str
    service_output: str
    seconds: float
    storage_driver: str


def _docker_answers(shell: Shell, seconds: float) -> bool:
    """Whether ``docker info`` succeeds inside the VPS within ``seconds``."""
    try:
        poll(lambda: shell.run("docker info >/dev/null 2>&1", timeout=20)[0] == 0, timeout=seconds, interval=1,
             what="docker info inside the VPS")
    except PollTimeout:
        return False
    return True


# What Debian's /etc/init.d/docker runs, minus its `ulimit -n 1048576` / `ulimit -u
# unlimited`, which need CAP_SYS_RESOURCE when the hard limits are lower (20000 here).
START_STOP_DOCKERD = (
    "start-stop-daemon --start --background --no-close --make-pidfile"
    " --pidfile /var/run/docker-ssd.pid --exec /usr/sbin/dockerd -- -p /var/run/docker.pid"
    " >>/var/log/docker.log 2>&1"
)


@pytest.fixture(scope="module")
def docker_inside(shell: Shell) -> DockerStart:
    """apt-get install docker.io, then `service docker start`, else start-stop-daemon."""
    started = time.monotonic()
    shell.check("DEBIAN_FRONTEND=noninteractive apt-get update -qq", timeout=300)
    shell.check("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/tmp/apt.log 2>&1"
                " || { tail -30 /tmp/apt.log; exit 1; }", timeout=600)
    print(f"\nTIMING apt-get install docker.io inside the VPS {time.monotonic() - started:.1f} s")
    running_after_apt = shell.run("docker info >/dev/null 2>&1")[0] == 0
    started = time.monotonic()
    code, out, err = shell.run("service docker start", timeout=120)
    method = "service"
    if not (code == 0 and _docker_answers(shell, 60)):
        method = "start-stop-daemon"
        shell.check(START_STOP_DOCKERD)
        assert _docker_answers(shell, 60), shell.run("tail -30 /var/log/docker.log")[1]
    seconds = time.monotonic() - started
    driver = shell.check("docker info --format '{{.Driver}}'").strip()
    print(f"TIMING dockerd answering {seconds:.1f} s after start via {method} "
          f"(running right after apt: {running_after_apt}; storage driver {driver}; "
          f"service output: {(out + err).strip()!r})")
    return DockerStart(running_after_apt, method, out + err, seconds, driver)


def test_sshd_refuses_passwords(shell: Shell) -> None:
    assert "passwordauthentication no" in shell.check("sshd -T").splitlines()


def test_root_login_is_key_only(shell: Shell) -> None:
    assert "permitrootlogin without-password" in shell.check("sshd -T").splitlines()


def test_fresh_vps_has_python3(shell: Shell) -> None:
    assert shell.check("python3 --version").startswith(f"Python {images.BOOKWORM_PYTHON}.")


def test_ports_are_published_on_loopback_only(endpoint: vps.VpsEndpoint) -> None:
    proc = subprocess.run(["docker", "inspect", endpoint.container], check=True, text=True,
                          capture_output=True)
    bindings = json.loads(proc.stdout)[0]["HostConfig"]["PortBindings"]
    assert {port: [b["HostIp"] for b in bound] for port, bound in bindings.items()} == {
        "22/tcp": ["127.0.0.1"], "80/tcp": ["127.0.0.1"], "443/tcp": ["127.0.0.1"]}


def test_bundles_are_mounted_read_only(shell: Shell) -> None:
    assert shell.run(f"touch {vps.BUNDLE_MOUNT}/probe")[0] != 0
    shell.check(f"test -s {REDIS_BUNDLE}")


def test_dockerd_starts_without_systemd(docker_inside: DockerStart) -> None:
    assert docker_inside.method in ("service", "start-stop-daemon")
    assert docker_inside.storage_driver == "overlay2"


def test_service_docker_start_starts_dockerd(docker_inside: DockerStart) -> None:
    """Whether the deploy can use Debian's init script on a host without systemd."""
    if docker_inside.method != "service" and "ulimit" in docker_inside.service_output:
        pytest.xfail("Debian's /etc/init.d/docker raises ulimits, which needs CAP_SYS_RESOURCE "
                     f"(absent on this machine): {docker_inside.service_output.strip()}")
    assert docker_inside.method == "service", docker_inside.service_output


def test_inner_docker_loads_a_bundle(shell: Shell, docker_inside: DockerStart) -> None:
    started = time.monotonic()
    out = shell.check(f"docker load -i {REDIS_BUNDLE}", timeout=300)
    print(f"\nTIMING docker load of the redis bundle inside {time.monotonic() - started:.1f} s")
    assert f"Loaded image: {REDIS_REF}" in out


def test_inner_docker_runs_the_loaded_image(shell: Shell, docker_inside: DockerStart) -> None:
    shell.check(f"docker image inspect {REDIS_REF} >/dev/null 2>&1 || docker load -i {REDIS_BUNDLE}",
                timeout=300)
    started = time.monotonic()
    out = shell.check(f"docker run --rm {REDIS_REF} redis-server --version", timeout=120)
    print(f"\nTIMING inner docker run {time.monotonic() - started:.1f} s")
    assert f"v={REDIS.version}." in out
