"""Provision a brand new VPS container with the real pyinfra CLI over real SSH.

The first run takes a fresh Debian 12 container (root by key, nothing else) to a
hardened Docker host; the second run must change nothing (Molecule's
idempotence step). The checks then look at the host the way an operator would:
``sshd -T``, ``fail2ban-client``, ``apt-config dump``, ``docker compose version``,
and TCP connections from outside the container for the firewall.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from harness.deploys import (
    PROVISION_DEPLOY_BODY as DEPLOY_BODY,
)
from harness.deploys import (
    endpoint_settings,
    run_pyinfra,
    vps_exec,
    write_deploy,
    write_inventory,
)
from harness.poll import poll
from restobot.operations.provision import (
    COMPOSE_PLUGIN_PATH,
    release_directories,
    sshd_effective_values,
)
from restobot.settings import COMPOSE_SHA256, HostSettings

pytestmark = pytest.mark.e2e

VPS_NAME = "restobot-vps-provision-test"
HOST = HostSettings()


@pytest.fixture(scope="module")
def fresh_vps(own_vps):
    """A brand new VPS container of this module's own (removed afterwards)."""
    return own_vps(VPS_NAME)


@pytest.fixture(scope="module")
def provision_files(fresh_vps, tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("provision")
    inventory = write_inventory(directory / "inventory.py", endpoint_settings(fresh_vps),
                                known_hosts=fresh_vps.known_hosts_path)
    return inventory, write_deploy(directory / "deploy.py", DEPLOY_BODY)


@pytest.fixture(scope="module")
def first_run(provision_files):
    run = run_pyinfra(*provision_files)
    assert run.returncode == 0, f"provisioning the fresh VPS failed\n{run.output_tail()}"
    return run


@pytest.fixture(scope="module")
def second_run(first_run, provision_files):
    run = run_pyinfra(*provision_files, "-v")  # -v: noop messages are printed
    assert run.returncode == 0, f"re-provisioning failed\n{run.output_tail()}"
    return run


@pytest.fixture(scope="module")
def provisioned(first_run, fresh_vps):
    """The VPS after the first run (tests below only read it)."""
    return fresh_vps


def test_first_run_changes_the_fresh_host_without_errors(first_run):
    totals = first_run.results["totals"]
    assert totals["error"] == 0, first_run.output_tail()
    assert totals["success"] > 0


def test_second_run_changes_nothing(second_run):
    # No operation is excluded: the only non-idempotent ones (server.shell waits
    # and checks) run only `_if` an earlier operation changed something.
    assert second_run.results["totals"]["success"] == 0, f"changed on the second run: {second_run.changed}"
    assert second_run.results["totals"]["error"] == 0


@pytest.mark.parametrize(
    "message",
    [
        "noop: ufw is active, denies incoming traffic and allows TCP 22, 80, 443 only",
        f"noop: {COMPOSE_PLUGIN_PATH} has sha256 {COMPOSE_SHA256}",
        "noop: service docker is running",
        "noop: service fail2ban is running",
    ],
)
def test_second_run_says_what_is_already_true(second_run, message):
    assert message in second_run.stderr, second_run.output_tail()


def test_docker_daemon_answers(provisioned):
    assert vps_exec(provisioned, "docker", "info", "--format", "{{.ServerVersion}}").stdout.strip()


def test_docker_compose_is_the_pinned_version(provisioned):
    assert vps_exec(provisioned, "docker", "compose", "version", "--short").stdout.strip() == "2.40.3"


def test_compose_plugin_has_the_pinned_hash(provisioned):
    assert vps_exec(provisioned, "sha256sum", COMPOSE_PLUGIN_PATH).stdout.split()[0] == COMPOSE_SHA256


def test_docker_rotates_container_logs(provisioned):
    log_config = vps_exec(provisioned, "docker", "info", "--format", "{{.LoggingDriver}}").stdout.strip()
    assert log_config == "json-file"
    assert '"max-size": "10m"' in vps_exec(provisioned, "cat", "/etc/docker/daemon.json").stdout


@pytest.mark.parametrize(("keyword", "value"), sorted(sshd_effective_values(HOST.permit_root_login).items()))
def test_sshd_effective_config(provisioned, keyword, value):
    effective = vps_exec(provisioned, "sshd", "-T").stdout.splitlines()
    assert f"{keyword} {value}" in effective, [line for line in effective if line.startswith(keyword)]


def test_sshd_offers_no_password_method(provisioned):
    proc = subprocess.run(
        ["ssh", "-p", str(provisioned.ssh_port), "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive",
         "-o", f"UserKnownHostsFile={provisioned.known_hosts_path}", "-o", "StrictHostKeyChecking=yes",
         f"root@{provisioned.host}", "true"],
        text=True, capture_output=True, timeout=30,
    )
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr, proc.stderr


def test_fail2ban_sshd_jail_is_active(provisioned):
    status = vps_exec(provisioned, "fail2ban-client", "status", "sshd").stdout
    assert "Status for the jail: sshd" in status
    assert "/var/log/auth.log" in status, status


def test_sshd_logins_reach_fail2ban_log(provisioned):
    assert "sshd[" in vps_exec(provisioned, "tail", "-n", "50", "/var/log/auth.log").stdout


@pytest.mark.parametrize(
    "line", ['APT::Periodic::Unattended-Upgrade "1";', 'APT::Periodic::Update-Package-Lists "1";'],
)
def test_unattended_upgrades_are_enabled(provisioned, line):
    assert line in vps_exec(provisioned, "apt-config", "dump").stdout.splitlines()


def test_daily_apt_job_has_cron_running(provisioned):
    vps_exec(provisioned, "/etc/init.d/cron", "status")


def test_deploy_user_is_in_the_docker_group(provisioned):
    assert "docker" in vps_exec(provisioned, "id", "-nG", HOST.deploy_user).stdout.split()


def test_deploy_user_has_roots_key(provisioned):
    root_keys = vps_exec(provisioned, "cat", "/root/.ssh/authorized_keys").stdout
    deploy_keys = vps_exec(provisioned, "cat", f"/home/{HOST.deploy_user}/.ssh/authorized_keys").stdout
    assert deploy_keys.split() == root_keys.split()


def test_deploy_user_logs_in_with_the_key_and_uses_docker(provisioned):
    proc = subprocess.run(
        ["ssh", "-i", str(provisioned.key_path), "-p", str(provisioned.ssh_port), "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={provisioned.known_hosts_path}",
         "-o", "StrictHostKeyChecking=yes", f"{HOST.deploy_user}@{provisioned.host}",
         "docker", "info", "--format", "{{.ServerVersion}}"],
        text=True, capture_output=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("directory", release_directories(HOST), ids=lambda spec: spec.path)
def test_release_directory_owner_and_mode(provisioned, directory):
    stat = vps_exec(provisioned, "stat", "-c", "%U %G %a", directory.path).stdout.strip()
    assert stat == f"{HOST.deploy_user} {HOST.deploy_user} {directory.mode}"


def test_firewall_is_active_with_default_deny(provisioned):
    status = vps_exec(provisioned, "ufw", "status", "verbose").stdout
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing)" in status, status


def test_firewall_allows_only_the_open_ports(provisioned):
    added = vps_exec(provisioned, "ufw", "show", "added").stdout.splitlines()[1:]
    assert added == [f"ufw allow {port}/tcp" for port in HOST.open_ports]


def container_ip(name: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        text=True, capture_output=True, check=True,
    ).stdout.strip()


def connects(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_firewall_drops_a_listening_port_that_is_not_open(provisioned):
    # A listener on 8081 inside the VPS, reached from this machine through the
    # container's own address (the test created that container).
    vps_exec(provisioned, "sh", "-c",
             "nohup timeout 30 python3 -m http.server --bind 0.0.0.0 8081 >/dev/null 2>&1 &")
    probe = "import socket; socket.create_connection(('127.0.0.1', 8081), 2)"
    poll(lambda: vps_exec(provisioned, "python3", "-c", probe, check=False).returncode, until=lambda code: code == 0,
         timeout=20, what="the listener on 8081 inside the VPS")
    address = container_ip(VPS_NAME)
    assert connects(address, 22), "SSH (allowed) does not answer on the container's address"
    assert not connects(address, 8081), "port 8081 answered although the firewall should drop it"


class ConnectionCounter:
    """A TCP listener on 127.0.0.1 recording the peer of every connection it accepts, in order."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                connection, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer)
            connection.close()

    def connections_before_a_sentinel(self) -> int:
        """Connect once ourselves and wait until that connection is accepted: the connections accepted
        before it (the queue is first come, first served, so any earlier one is already counted)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sentinel:
            ours = sentinel.getsockname()
            poll(lambda: ours in self.peers, timeout=10, interval=0.05, what="the sentinel connection")
        return self.peers.index(ours)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_wrong_setting_fails_before_any_connection(local_secrets, tmp_path):
    # The "VPS" is a listener that counts TCP connections: a run that opened SSH
    # (or even a TCP connection) before validating would show up in the count.
    counter = ConnectionCounter()
    try:
        settings = endpoint_settings(
            type("Endpoint", (), {"host": "127.0.0.1", "ssh_port": counter.port, "user": "root",
                                  "key_path": Path("/nonexistent-key")})(),
            host={"permit_root_login": "yes"},
        )
        inventory = write_inventory(tmp_path / "inventory.py", settings)
        run = run_pyinfra(inventory, write_deploy(tmp_path / "deploy.py", DEPLOY_BODY))
        connections = counter.connections_before_a_sentinel()
    finally:
        counter.close()
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "invalid settings for stage 'local'" in output, run.output_tail()
    assert "host.permit_root_login: must be 'prohibit-password' (root by key only) or 'no'" in output
    assert "Connecting to hosts" not in output
    assert connections == 0


# --- drift: hand edits on the host are put back by the next run ------------
# (Last in this module: the fixture below changes the host the tests above read.)

DRIFT = {
    "an extra firewall rule": ["ufw", "allow", "5432/tcp"],
    "a loosened backups directory": ["chmod", "755", f"{HOST.base_dir}/backups"],
    "a stopped fail2ban": ["/etc/init.d/fail2ban", "stop"],
    "a deleted compose plugin": ["rm", "-f", COMPOSE_PLUGIN_PATH],
}


@pytest.fixture(scope="module")
def repair_run(second_run, provisioned, provision_files):
    for argv in DRIFT.values():
        vps_exec(provisioned, *argv)
    run = run_pyinfra(*provision_files)
    assert run.returncode == 0, f"the repairing run failed\n{run.output_tail()}"
    return run


def test_repairing_run_changes_only_what_drifted(repair_run):
    assert sorted(name.rsplit(" | ", 1)[-1] for name in repair_run.changed) == [
        "Ensure /opt/resto/backups is deploy's, mode 700",
        "Ensure fail2ban is running",
        "Ensure the pinned docker compose v2.40.3 plugin is installed",
        "Ensure ufw denies incoming traffic except TCP 22, 80, 443",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ufw", "show", "added"], "ufw allow 22/tcp\nufw allow 80/tcp\nufw allow 443/tcp"),
        (["stat", "-c", "%a", f"{HOST.base_dir}/backups"], "700"),
        (["docker", "compose", "version", "--short"], "2.40.3"),
    ],
    ids=["firewall rules", "backups mode", "compose plugin"],
)
def test_repairing_run_restores(repair_run, provisioned, argv, expected):
    assert vps_exec(provisioned, *argv).stdout.strip().endswith(expected)


def test_repairing_run_restarts_fail2ban(repair_run, provisioned):
    assert "Status for the jail: sshd" in vps_exec(provisioned, "fail2ban-client", "status", "sshd").stdout
