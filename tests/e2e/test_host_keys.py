"""SSH host keys are pinned, over real SSH to a VPS container of this module's own.

A changed key stops ``pyinfra INVENTORY deploy.py`` after the key exchange, before
any login or command, and says how to record the key on purpose; a known_hosts
file that does not name the host stops it before SSH is even attempted; the
right key connects; the go-live checklist reports the pinned key's fingerprint.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.deploys import (
    endpoint_settings,
    run_pyinfra,
    vps_exec,
    write_deploy,
    write_inventory,
)
from restobot import golive
from restobot.hosts import changed_key_message
from restobot.settings import REPO_ROOT, SshTarget

pytestmark = pytest.mark.e2e

VPS_NAME = f"restobot-vps-hostkey-{os.getpid()}"
HOST_NAME = "hostkey-vps"
AUDIT_LOG = "/opt/resto/audit.log"


def new_host_key() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def hostkey_vps(own_vps):
    """A brand new VPS container (removed afterwards); its host key recorded by the harness."""
    return own_vps(VPS_NAME)


def marker_deploy(directory: Path, marker: str) -> Path:
    """A cheap deploy: one file on the VPS, the proof that the run got that far."""
    return write_deploy(directory / "deploy.py", [
        "from pyinfra.operations import files",
        f"files.file(name='Ensure the marker {marker}', path={marker!r}, present=True)",
    ])


def exists_on_vps(endpoint, path: str) -> bool:
    return vps_exec(endpoint, "test", "-e", path, check=False).returncode == 0


def inventory_with(endpoint, directory: Path, **ssh) -> Path:
    settings = endpoint_settings(endpoint)
    settings["ssh"] = {**settings["ssh"], **ssh}
    return write_inventory(directory / "inventory.py", settings, name=HOST_NAME)


def run_checklist_item(inventory: Path) -> golive.Row:
    junit = inventory.with_suffix(".xml")
    proc = subprocess.run(
        [sys.executable, "-m", "restobot.golive", "--inventory", str(inventory), "--junit", str(junit),
         "-k", "ssh_host_key_is_pinned"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    rows = golive.rows_from_junit(junit) if junit.exists() else []
    assert len(rows) == 1, f"want one item, got {rows}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return rows[0]


def test_the_harness_recorded_the_key_the_vps_presents(hostkey_vps):
    transport = paramiko.Transport((hostkey_vps.host, hostkey_vps.ssh_port))
    try:
        transport.start_client(timeout=10)
        presented = transport.get_remote_server_key()
    finally:
        transport.close()
    assert f"{presented.get_name()} {presented.get_base64()}" == hostkey_vps.host_key


def test_a_changed_host_key_stops_the_deploy_before_anything_is_sent(hostkey_vps, tmp_path):
    wrong = new_host_key()
    inventory = inventory_with(hostkey_vps, tmp_path, host_key=wrong)

    run = run_pyinfra(inventory, REPO_ROOT / "deploy.py", timeout=300)

    output = run.stdout + run.stderr
    assert run.returncode != 0, run.output_tail()
    assert "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!" in output
    assert f"[{HOST_NAME}] SSH host key error (Host key for 127.0.0.1 does not match.)" in output
    pinned = SshTarget(host="127.0.0.1", port=hostkey_vps.ssh_port, host_key=wrong)
    assert changed_key_message(pinned) in output, run.output_tail()
    assert f"ssh-keyscan -t ed25519 -p {hostkey_vps.ssh_port} 127.0.0.1" in output
    assert "ssh-keygen -R" not in output  # pyinfra's advice, about a file a pinned host does not use
    assert f"[{HOST_NAME}] Connected" not in output
    assert "No hosts remaining!" in output
    assert not exists_on_vps(hostkey_vps, AUDIT_LOG), "the deploy ran on a host with a changed key"


def test_a_known_hosts_file_without_the_host_stops_before_ssh(hostkey_vps, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:1 {hostkey_vps.host_key}\n{paramiko.HostKeys.hash_host('127.0.0.1')} "
                           f"{hostkey_vps.host_key}\n")
    inventory = inventory_with(hostkey_vps, tmp_path, host_key=None, known_hosts_file=str(known_hosts))
    marker = "/root/hostkey-unknown-marker"

    run = run_pyinfra(inventory, marker_deploy(tmp_path, marker), timeout=300)

    output = run.stdout + run.stderr
    assert run.returncode != 0, run.output_tail()
    assert (f"ssh.known_hosts_file: {known_hosts} holds no host key for [127.0.0.1]:{hostkey_vps.ssh_port} "
            "(ssh.host and ssh.port), so the host cannot be verified; nothing was sent to it; "
            "record the key on purpose") in output, run.output_tail()
    assert f"ssh-keyscan -t ed25519 -p {hostkey_vps.ssh_port} 127.0.0.1" in output
    assert "Connecting to hosts" not in output
    assert not exists_on_vps(hostkey_vps, marker)


def test_the_pinned_host_key_connects(hostkey_vps, tmp_path):
    inventory = inventory_with(hostkey_vps, tmp_path)  # ssh.host_key as the harness read it
    marker = "/root/hostkey-pinned-marker"

    run = run_pyinfra(inventory, marker_deploy(tmp_path, marker), timeout=300)

    assert run.returncode == 0, run.output_tail()
    assert f"[{HOST_NAME}] Connected" in run.stdout + run.stderr
    assert exists_on_vps(hostkey_vps, marker)


def test_a_hashed_known_hosts_entry_connects(hostkey_vps, tmp_path):
    """The CI route: known_hosts lines (here hashed, as `ssh-keyscan -H` writes them) in a file."""
    known_hosts = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{hostkey_vps.ssh_port}")
    known_hosts.write_text(f"{hashed} {hostkey_vps.host_key}\n")
    inventory = inventory_with(hostkey_vps, tmp_path, host_key=None, known_hosts_file=str(known_hosts))
    marker = "/root/hostkey-hashed-marker"

    run = run_pyinfra(inventory, marker_deploy(tmp_path, marker), timeout=300)

    assert run.returncode == 0, run.output_tail()
    assert exists_on_vps(hostkey_vps, marker)


def test_checklist_reports_the_pinned_keys_fingerprint(hostkey_vps, tmp_path):
    key = paramiko.Ed25519Key(data=base64.b64decode(hostkey_vps.host_key.split()[1]))
    row = run_checklist_item(inventory_with(hostkey_vps, tmp_path))
    assert row.outcome == "pass", row
    assert row.reason == f"ssh-ed25519 {key.fingerprint} pinned, strict checking"


def test_checklist_fails_a_changed_key_with_the_way_out(hostkey_vps, tmp_path):
    row = run_checklist_item(inventory_with(hostkey_vps, tmp_path, host_key=new_host_key()))
    assert row.outcome == "FAIL", row
    assert "presented a host key that is not the one pinned for it" in row.reason
    assert f"ssh-keyscan -t ed25519 -p {hostkey_vps.ssh_port} 127.0.0.1" in row.reason
