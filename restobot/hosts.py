"""Inventory helpers: turn a stage's settings into a pyinfra host entry.

Validation happens here, while pyinfra loads the inventory file, so a bad
setting stops the run before any SSH connection is opened.

The VPS's SSH host key is pinned here too: ``ssh.host_key`` becomes a known_hosts
file of its own (mode 0600 in a private directory), ``ssh.known_hosts_file`` must
already name the host; either way pyinfra connects with strict host key checking,
so an unknown or changed key stops the run after the key exchange, before any
login or command. pyinfra's own advice on a changed key (``ssh-keygen -R`` on
~/.ssh/known_hosts, which a pinned host does not use) is replaced by the way to
record the key on purpose.
"""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import paramiko
from pyinfra.api.exceptions import PyinfraError

from restobot.settings import SettingsError, SshTarget, load_settings


class InventoryError(PyinfraError):
    """The inventory's settings are invalid; raised before connecting."""


def vps(settings: dict[str, Any], name: str | None = None) -> tuple[str, dict[str, Any]]:
    """A pyinfra host entry for the VPS described by ``settings``.

    + settings: the stage's settings tree (non-secret part; secrets come from
      the environment or secrets/<stage>.env)
    + name: the host's name in pyinfra's output (defaults to the SSH host)
    """
    try:
        validated = load_settings(settings)
    except SettingsError as error:
        raise InventoryError(str(error)) from None
    ssh = validated.ssh
    data: dict[str, Any] = {
        "ssh_hostname": ssh.host,
        "ssh_port": ssh.port,
        "ssh_user": ssh.user,
        "resto": settings,
    }
    if ssh.key_path is not None:
        data["ssh_key"] = str(ssh.key_path)
    data.update(host_key_data(ssh))
    return (name or ssh.host, data)


# --- the SSH host key -----------------------------------------------------


def host_key_data(ssh: SshTarget, directory: Path | None = None) -> dict[str, str]:
    """pyinfra data that pins the host key of ``ssh``: a known_hosts file and strict checking.

    + ssh: the validated SSH target (``host_key`` and/or ``known_hosts_file``)
    + directory: where the known_hosts file made from ``host_key`` goes; default a
      private directory of this process, removed when it exits

    Returns {} when nothing pins the key (a local stage whose VPS is not up).
    Raises InventoryError, without connecting, when ``known_hosts_file`` does not
    name the host or disagrees with ``host_key``.
    """
    if ssh.known_hosts_file is not None:
        require_known_host(ssh)
        path = ssh.known_hosts_file
    elif ssh.host_key is not None:
        path = write_known_hosts(ssh, directory or private_directory())
    else:
        return {}
    HOST_KEY_ADVICE.pin(ssh)
    return {"ssh_known_hosts_file": str(path), "ssh_strict_host_key_checking": "yes"}


def known_hosts_line(ssh: SshTarget) -> str:
    """``ssh.host_key`` as a known_hosts line: ``host KEY`` on port 22, ``[host]:port KEY`` otherwise."""
    assert ssh.host_key is not None
    return f"{ssh.known_hosts_name} {ssh.host_key}\n"


def write_known_hosts(ssh: SshTarget, directory: Path) -> Path:
    """Write the known_hosts file of ``ssh.host_key`` (mode 0600) in ``directory``; return its path."""
    line = known_hosts_line(ssh)
    stem = re.sub(r"[^A-Za-z0-9.-]", "_", ssh.host)
    path = directory / f"{stem}-{ssh.port}-{hashlib.sha256(line.encode()).hexdigest()[:12]}.known_hosts"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(line)
    path.chmod(0o600)
    return path


@functools.cache
def private_directory() -> Path:
    """A directory only this user can enter (mode 0700), removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="restobot-known-hosts-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def key_blob(host_key: str) -> bytes:
    """The binary key of an OpenSSH public key line ("ssh-ed25519 AAAA...")."""
    return base64.b64decode(host_key.split()[1])


def pinned_host_keys(path: Path, name: str) -> list[paramiko.PKey]:
    """The keys the known_hosts file ``path`` holds for ``name`` (hashed entries too); [] for none.

    As paramiko reads it (so as pyinfra checks): the first entry of each key type.
    """
    keys = paramiko.HostKeys(str(path)).lookup(name)
    return list(keys.values()) if keys else []


def require_known_host(ssh: SshTarget) -> None:
    """Refuse, without connecting, a known_hosts file that does not pin ``ssh``'s host (or disagrees with host_key)."""
    path, name = ssh.known_hosts_file, ssh.known_hosts_name
    assert path is not None
    try:
        keys = pinned_host_keys(path, name)
    except OSError as error:
        raise InventoryError(
            f"ssh.known_hosts_file: cannot read {path} ({error.strerror or error}); nothing was sent to {name}; "
            "point it at an existing known_hosts file (scripts/deploy writes one from SSH_KNOWN_HOSTS), "
            "or set ssh.host_key instead"
        ) from None
    if not keys:
        raise InventoryError(
            f"ssh.known_hosts_file: {path} holds no host key for {name} (ssh.host and ssh.port), so the host "
            f"cannot be verified; nothing was sent to it; {ssh.how_to_record_key()}"
        )
    if ssh.host_key is not None and key_blob(ssh.host_key) not in [key.asbytes() for key in keys]:
        raise InventoryError(
            f"ssh.host_key: not among the keys {path} (ssh.known_hosts_file) holds for {name}, so one of them is "
            f"stale; nothing was sent to it; {ssh.how_to_record_key()}, and correct or remove the other"
        )


def changed_key_message(ssh: SshTarget) -> str:
    """What an operator reads when ``ssh``'s host presents another key than the pinned one."""
    return (
        f"{ssh.known_hosts_name} presented a host key that is not the one pinned for it (ssh.host_key or "
        "ssh.known_hosts_file); the login was not attempted and nothing was sent. If you rebuilt the VPS or "
        f"replaced its host keys, {ssh.how_to_record_key()}; if not, do not deploy: the connection "
        "may be intercepted"
    )


def unknown_key_message(ssh: SshTarget) -> str:
    """What an operator reads when the known_hosts file used holds no key for ``ssh``'s host."""
    return (
        f"{ssh.known_hosts_name}: no host key pinned for it; the login was not attempted and nothing was sent; "
        f"{ssh.how_to_record_key()}"
    )


class HostKeyAdvice(logging.Filter):
    """Puts the way out under pyinfra's host key errors for the hosts this process pinned.

    pyinfra 3.10 logs a changed key as four warnings ending in "If this is expected,
    you can remove the bad key using:" / "    ssh-keygen -R ENTRY" (advice about
    ~/.ssh/known_hosts, which a pinned host does not read), then "SSH host key error
    (Host key for HOST does not match.)"; an unknown key as "No host key for ENTRY
    found in known_hosts". For a pinned ENTRY the ``ssh-keygen -R`` advice becomes
    :func:`changed_key_message` and the unknown key gets :func:`unknown_key_message`.
    """

    REMOVE_INTRO = "If this is expected, you can remove the bad key using:"
    REMOVE = re.compile(r"\s*ssh-keygen -R (?P<name>\S+)\s*")
    UNKNOWN = re.compile(r"No host key for (?P<name>\S+) found in known_hosts")

    def __init__(self) -> None:
        super().__init__("restobot.host_keys")
        self.pinned: dict[str, SshTarget] = {}

    def pin(self, ssh: SshTarget) -> None:
        """Remember ``ssh`` as pinned and listen to pyinfra's log (once per process)."""
        self.pinned[ssh.known_hosts_name] = ssh
        logging.getLogger("pyinfra").addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.pinned or not isinstance(record.msg, str):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is the handler's to report, not ours
            return True
        if message == self.REMOVE_INTRO:
            return False
        removed, unknown = self.REMOVE.fullmatch(message), self.UNKNOWN.fullmatch(message)
        if removed and removed["name"] in self.pinned:
            self._replace(record, changed_key_message(self.pinned[removed["name"]]))
        elif unknown and unknown["name"] in self.pinned:
            self._replace(record, unknown_key_message(self.pinned[unknown["name"]]))
        return True

    @staticmethod
    def _replace(record: logging.LogRecord, message: str) -> None:
        record.msg, record.args = message, ()
        record.levelno, record.levelname = logging.ERROR, "ERROR"


HOST_KEY_ADVICE = HostKeyAdvice()
