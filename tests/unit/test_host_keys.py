"""SSH host keys are pinned: the settings rule, the known_hosts file the inventory
writes or checks (never connecting), the advice under pyinfra's host key errors,
and scripts/deploy's SSH_KNOWN_HOSTS."""

from __future__ import annotations

import base64
import hashlib
import inspect
import logging
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from restobot import hosts
from harness import stage, vps
from restobot.hosts import HostKeyAdvice, InventoryError
from restobot.settings import REPO_ROOT, SettingsError, SshTarget, load_settings

RECORD = "record the key on purpose: run `ssh-keyscan -t ed25519 -p {port} {host} > hostkey.txt`"


def new_host_key() -> str:
    """A fresh ed25519 public key line, "ssh-ed25519 AAAA..."."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def problems_of(data: dict, environ: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(data, environ)
    return caught.value.problems


def unpinned(data: dict, stage_name: str) -> dict:
    data["stage"] = stage_name
    data["ssh"] = {key: value for key, value in data["ssh"].items() if key not in ("host_key", "known_hosts_file")}
    return data


@pytest.fixture
def private_dir(tmp_path, monkeypatch) -> Path:
    """Where vps() writes known_hosts files during a test (instead of this process's temp dir)."""
    directory = tmp_path / "known-hosts"
    directory.mkdir(mode=0o700)
    monkeypatch.setattr(hosts, "private_directory", lambda: directory)
    return directory


@pytest.fixture
def advice(monkeypatch) -> HostKeyAdvice:
    """A fresh log filter (the module's one is shared by the process)."""
    fresh = HostKeyAdvice()
    monkeypatch.setattr(hosts, "HOST_KEY_ADVICE", fresh)
    yield fresh
    logging.getLogger("pyinfra").removeFilter(fresh)


# --- the settings rule --------------------------------------------------------------------


@pytest.mark.parametrize("stage_name", ["production", "staging"])
def test_production_and_staging_require_a_pinned_host_key(production_data, secret_env, stage_name):
    [problem] = problems_of(unpinned(production_data, stage_name), secret_env)
    assert problem.startswith(
        f"ssh.host_key: required in {stage_name} (an unknown or changed host key must stop the deploy before "
        "anything is sent; a known_hosts file in ssh.known_hosts_file pins it too); "
        + RECORD.format(port=22, host="203.0.113.10")
    ), problem
    assert "ssh-keygen -lf hostkey.txt" in problem
    assert "provider's console" in problem
    assert "SSH_KNOWN_HOSTS secret that scripts/deploy reads" in problem


def test_the_way_out_names_the_port(production_data, secret_env):
    production_data = unpinned(production_data, "production")
    production_data["ssh"]["port"] = 2202
    [problem] = problems_of(production_data, secret_env)
    assert RECORD.format(port=2202, host="203.0.113.10") in problem


def test_local_stage_may_leave_the_host_key_out(production_data, secret_env):
    data = unpinned(production_data, "local")
    data["acme"] = {"email": "ops@resto.example.com"}
    data["meta"]["signature_required"] = "enforce"
    assert load_settings(data, secret_env).ssh.host_key is None


def test_a_known_hosts_file_is_enough(production_data, secret_env, tmp_path):
    data = unpinned(production_data, "production")
    data["ssh"]["known_hosts_file"] = str(tmp_path / "known_hosts")
    assert load_settings(data, secret_env).ssh.known_hosts_file == tmp_path / "known_hosts"


def test_ssh_known_hosts_file_in_the_environment_pins_it(production_data, secret_env, tmp_path):
    data = unpinned(production_data, "production")
    settings = load_settings(data, {**secret_env, "SSH_KNOWN_HOSTS_FILE": str(tmp_path / "prod.known_hosts")})
    assert settings.ssh.known_hosts_file == tmp_path / "prod.known_hosts"


def test_an_empty_ssh_known_hosts_file_is_not_a_pin(production_data, secret_env):
    data = unpinned(production_data, "production")
    [problem] = problems_of(data, {**secret_env, "SSH_KNOWN_HOSTS_FILE": ""})
    assert problem.startswith("ssh.host_key: required in production")


def test_shipped_inventories_pin_a_host_key(production_data, secret_env):
    settings = load_settings(production_data, secret_env)
    assert settings.ssh.host_key.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")


# --- the host key's form -------------------------------------------------------------------


def test_host_key_keeps_type_and_key_without_the_comment():
    key = new_host_key()
    assert SshTarget(host="203.0.113.10", host_key=f"{key} root@vps").host_key == key


def test_an_ssh_keyscan_line_is_refused_with_the_fix():
    with pytest.raises(ValueError) as caught:
        SshTarget(host="203.0.113.10", host_key=f"[203.0.113.10]:2222 {new_host_key()}")
    assert ("starts with a host name ('[203.0.113.10]:2222'): keep only the key, 'ssh-ed25519 AAAA...' "
            "(an ssh-keyscan line without its first field)") in str(caught.value)


@pytest.mark.parametrize("bad", ["AAAAC3NzaC1lZDI1NTE5", "ssh-dss AAAAB3NzaC1kc3M=", "-----BEGIN OPENSSH PRIVATE KEY-----"])
def test_what_is_not_a_public_host_key_is_refused(production_data, secret_env, bad):
    production_data["ssh"]["host_key"] = bad
    [problem] = problems_of(production_data, secret_env)
    assert problem.startswith("ssh.host_key: must be an OpenSSH public host key such as 'ssh-ed25519 AAAA...'")
    assert bad not in problem


def test_a_key_of_another_type_than_named_is_refused(production_data, secret_env):
    production_data["ssh"]["host_key"] = "ssh-rsa " + new_host_key().split()[1]
    assert problems_of(production_data, secret_env) == [
        "ssh.host_key: the base64 part is not a ssh-rsa key (copied incompletely?)"
    ]


def test_a_truncated_key_is_refused(production_data, secret_env):
    production_data["ssh"]["host_key"] = new_host_key()[:30]
    [problem] = problems_of(production_data, secret_env)
    assert problem == "ssh.host_key: the base64 part is not a ssh-ed25519 key (copied incompletely?)"


# --- vps(): the known_hosts file written from ssh.host_key ---------------------------------


@pytest.mark.parametrize(("port", "name"), [(22, "203.0.113.10"), (2222, "[203.0.113.10]:2222")])
def test_host_key_becomes_a_private_known_hosts_file(production_data, with_secrets, private_dir, advice, port, name):
    key = new_host_key()
    production_data["ssh"].update(host_key=key, port=port)
    _, data = hosts.vps(production_data)
    path = Path(data["ssh_known_hosts_file"])
    assert path.parent == private_dir
    assert path.read_text() == f"{name} {key}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data["ssh_strict_host_key_checking"] == "yes"


def test_the_private_directory_is_the_users_only():
    directory = hosts.private_directory()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert hosts.private_directory() == directory


def test_paramiko_finds_the_written_key(production_data, with_secrets, private_dir, advice):
    key = new_host_key()
    production_data["ssh"].update(host_key=key, port=2222)
    _, data = hosts.vps(production_data)
    [found] = hosts.pinned_host_keys(Path(data["ssh_known_hosts_file"]), "[203.0.113.10]:2222")
    assert found.asbytes() == base64.b64decode(key.split()[1])
    assert hosts.pinned_host_keys(Path(data["ssh_known_hosts_file"]), "203.0.113.10") == []


def test_unpinned_local_host_gets_no_known_hosts_data(production_data, with_secrets, advice):
    data = unpinned(production_data, "local")
    data["acme"] = {"email": "ops@resto.example.com"}
    _, host_data = hosts.vps(data)
    assert "ssh_known_hosts_file" not in host_data
    assert "ssh_strict_host_key_checking" not in host_data


# --- vps(): a known_hosts file must name the host, checked without connecting ------------


@pytest.fixture
def listener():
    """A TCP listener standing in for the VPS: it counts the connections it was offered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.settimeout(0.2)

    def accepted() -> int:
        count = 0
        while True:
            try:
                sock.accept()[0].close()
                count += 1
            except OSError:
                return count

    yield sock.getsockname()[1], accepted
    sock.close()


def known_hosts_settings(production_data, port: int, path: Path) -> dict:
    data = unpinned(production_data, "production")
    data["ssh"].update(host="127.0.0.1", port=port, known_hosts_file=str(path))
    return data


def test_known_hosts_file_without_the_host_stops_before_connecting(production_data, with_secrets, tmp_path,
                                                                    listener, advice):
    port, accepted = listener
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:1 {new_host_key()}\n127.0.0.1 {new_host_key()}\n")
    with pytest.raises(InventoryError) as caught:
        hosts.vps(known_hosts_settings(production_data, port, path))
    assert str(caught.value) == (
        f"ssh.known_hosts_file: {path} holds no host key for [127.0.0.1]:{port} (ssh.host and ssh.port), so the "
        "host cannot be verified; nothing was sent to it; "
        f"{SshTarget(host='127.0.0.1', port=port).how_to_record_key()}"
    )
    assert RECORD.format(port=port, host="127.0.0.1") in str(caught.value)
    assert accepted() == 0


def test_a_hashed_entry_names_the_host(production_data, with_secrets, tmp_path, listener, advice):
    port, accepted = listener
    path = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{port}")
    path.write_text(f"{hashed} {new_host_key()}\n")
    _, data = hosts.vps(known_hosts_settings(production_data, port, path))
    assert data["ssh_known_hosts_file"] == str(path)
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert accepted() == 0


def test_a_missing_known_hosts_file_is_named(production_data, with_secrets, tmp_path, advice):
    path = tmp_path / "absent"
    with pytest.raises(InventoryError) as caught:
        hosts.vps(known_hosts_settings(production_data, 2222, path))
    assert str(caught.value).startswith(f"ssh.known_hosts_file: cannot read {path} (No such file or directory); "
                                        "nothing was sent to [127.0.0.1]:2222;")


def test_host_key_and_known_hosts_file_must_agree(production_data, with_secrets, tmp_path, advice):
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:2222 {new_host_key()}\n")
    data = known_hosts_settings(production_data, 2222, path)
    data["ssh"]["host_key"] = new_host_key()
    with pytest.raises(InventoryError) as caught:
        hosts.vps(data)
    assert str(caught.value).startswith(
        f"ssh.host_key: not among the keys {path} (ssh.known_hosts_file) holds for [127.0.0.1]:2222, so one of "
        "them is stale; nothing was sent to it; record the key on purpose")


def test_host_key_and_known_hosts_file_that_agree_use_the_file(production_data, with_secrets, tmp_path, advice):
    key = new_host_key()
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:2999 {new_host_key()}\n[127.0.0.1]:2222 {key}\n")
    data = known_hosts_settings(production_data, 2222, path)
    data["ssh"]["host_key"] = key
    _, host_data = hosts.vps(data)
    assert host_data["ssh_known_hosts_file"] == str(path)


# --- the advice under pyinfra's host key errors -------------------------------------------


def pyinfra_record(message: str, *args, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("pyinfra", level, __file__, 1, message, args, None)


def test_pyinfra_still_logs_the_lines_the_advice_rewrites():
    from pyinfra.connectors import ssh as pyinfra_ssh
    from pyinfra.connectors.sshuserclient import client

    source = inspect.getsource(pyinfra_ssh.SSHConnector._connect)
    assert f'logger.warning("{HostKeyAdvice.REMOVE_INTRO}")' in source
    assert 'logger.warning(f"    ssh-keygen -R {remove_entry}")' in source
    assert 'logger.error("No host key for %s found in known_hosts", hostname)' in inspect.getsource(client.StrictPolicy)


def test_changed_key_advice_replaces_ssh_keygen_r(advice):
    ssh = SshTarget(host="127.0.0.1", port=2222, host_key=new_host_key())
    advice.pin(ssh)
    assert advice in logging.getLogger("pyinfra").filters
    intro = pyinfra_record(HostKeyAdvice.REMOVE_INTRO)
    remove = pyinfra_record("    ssh-keygen -R [127.0.0.1]:2222")
    assert advice.filter(intro) is False
    assert advice.filter(remove) is True
    assert remove.getMessage() == hosts.changed_key_message(ssh)
    assert remove.levelno == logging.ERROR
    assert remove.getMessage().startswith(
        "[127.0.0.1]:2222 presented a host key that is not the one pinned for it (ssh.host_key or "
        "ssh.known_hosts_file); the login was not attempted and nothing was sent. If you rebuilt the VPS or "
        "replaced its host keys, record the key on purpose: run "
        "`ssh-keyscan -t ed25519 -p 2222 127.0.0.1 > hostkey.txt`")
    assert remove.getMessage().endswith("; if not, do not deploy: the connection may be intercepted")


def test_unknown_key_advice(advice):
    ssh = SshTarget(host="203.0.113.10", host_key=new_host_key())
    advice.pin(ssh)
    record = pyinfra_record("No host key for %s found in known_hosts", "203.0.113.10", level=logging.ERROR)
    assert advice.filter(record) is True
    assert record.getMessage() == (
        "203.0.113.10: no host key pinned for it; the login was not attempted and nothing was sent; "
        + ssh.how_to_record_key())


def test_advice_leaves_other_hosts_and_lines_alone(advice):
    advice.pin(SshTarget(host="127.0.0.1", port=2222, host_key=new_host_key()))
    for message in ("    ssh-keygen -R [127.0.0.1]:2223", "--> Connecting to hosts...", "No host key for x found"):
        record = pyinfra_record(message)
        assert advice.filter(record) is True
        assert record.getMessage() == message


def test_without_pinned_hosts_pyinfras_advice_stays(advice):
    assert advice.filter(pyinfra_record(HostKeyAdvice.REMOVE_INTRO)) is True


# --- the local stage pins the key the harness read from the container -----------------------


def harness_endpoint(tmp_path: Path, host_key: str | None) -> vps.VpsEndpoint:
    known_hosts = tmp_path / "c.known_hosts"
    if host_key:
        known_hosts.write_text(f"[127.0.0.1]:2299 {host_key}\n")
    return vps.VpsEndpoint("127.0.0.1", 2299, 8099, 8499, tmp_path / "id_ed25519", known_hosts, "c")


def test_local_stage_tree_pins_the_endpoints_recorded_key(tmp_path):
    key = new_host_key()
    ssh = stage.ssh_settings(harness_endpoint(tmp_path, key))
    assert ssh == {"host": "127.0.0.1", "port": 2299, "user": "root", "key_path": str(tmp_path / "id_ed25519"),
                   "host_key": key}


def test_an_endpoint_without_a_recorded_key_is_refused(tmp_path):
    with pytest.raises(vps.VpsError) as caught:
        stage.ssh_settings(harness_endpoint(tmp_path, None))
    assert str(caught.value) == (f"c: no host key recorded in {tmp_path / 'c.known_hosts'}; "
                                 "start it with 'python -m harness.vps --name c up'")


def test_default_local_vps_pins_its_key_only_while_recorded(tmp_path, monkeypatch):
    known_hosts = tmp_path / "restobot-vps-local.known_hosts"
    monkeypatch.setattr(vps, "key_paths", lambda: (tmp_path / "id_ed25519", known_hosts))
    assert "host_key" not in stage.ssh_settings()
    key = new_host_key()
    known_hosts.write_text(f"[127.0.0.1]:2222 {key}\n")
    assert stage.ssh_settings()["host_key"] == key


# --- scripts/deploy: SSH_KNOWN_HOSTS from the CI's secret store ----------------------------

FAKE_PYINFRA = """#!/bin/sh
# Stands in for the venv's pyinfra: records what scripts/deploy handed it.
{
  echo "argv=$*"
  echo "SSH_KNOWN_HOSTS_FILE=${SSH_KNOWN_HOSTS_FILE-<unset>}"
} > "$RECORD"
"""


@pytest.fixture
def deploy_tree(tmp_path) -> Path:
    """The real scripts/deploy in a copy of the repository's layout, with a pyinfra that only records."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "inventory").mkdir()
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "scripts" / "deploy", root / "scripts" / "deploy")
    (root / "scripts" / "setup-host").write_text("#!/bin/sh\nexit 0\n")
    (root / "inventory" / "staging.py").write_text("")
    # A venv already installed from this pyproject.toml: scripts/deploy installs nothing.
    (root / "pyproject.toml").write_text("[project]\n")
    (root / ".venv" / ".deploy-installed-from").write_text(hashlib.sha256(b"[project]\n").hexdigest() + "\n")
    pyinfra = root / ".venv" / "bin" / "pyinfra"
    pyinfra.write_text(FAKE_PYINFRA)
    for path in (pyinfra, root / "scripts" / "setup-host"):
        path.chmod(0o755)
    return root


def run_deploy(root: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    record = tmp_path / "record"
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "RECORD": str(record), **env}
    proc = subprocess.run([str(root / "scripts" / "deploy"), "staging", "--dry"], check=False, env=environ,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc, dict(line.split("=", 1) for line in record.read_text().splitlines())


def test_deploy_writes_ssh_known_hosts_privately_and_pins_it(deploy_tree, tmp_path):
    lines = f"203.0.113.20 {new_host_key()}\n|1|c2FsdA==|aGFzaA== {new_host_key()}"
    proc, seen = run_deploy(deploy_tree, tmp_path, SSH_KNOWN_HOSTS=lines, CI="true")
    written = deploy_tree / "secrets" / "staging.known_hosts"
    assert seen["SSH_KNOWN_HOSTS_FILE"] == str(written)
    assert written.read_text() == lines + "\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert seen["argv"] == "inventory/staging.py deploy.py -y --dry"
    for line in lines.splitlines():
        assert line.split()[1] not in proc.stdout + proc.stderr


def test_deploy_rewrites_a_loose_known_hosts_file_as_private(deploy_tree, tmp_path):
    (deploy_tree / "secrets").mkdir()
    old = deploy_tree / "secrets" / "staging.known_hosts"
    old.write_text("stale\n")
    old.chmod(0o644)
    run_deploy(deploy_tree, tmp_path, SSH_KNOWN_HOSTS=f"203.0.113.20 {new_host_key()}")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert "stale" not in old.read_text()


def test_deploy_without_ssh_known_hosts_sets_nothing(deploy_tree, tmp_path):
    _, seen = run_deploy(deploy_tree, tmp_path)
    assert seen["SSH_KNOWN_HOSTS_FILE"] == "<unset>"
    assert not (deploy_tree / "secrets" / "staging.known_hosts").exists()
