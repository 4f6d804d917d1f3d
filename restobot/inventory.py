"""Inventory helpers: turn a stage's settings into a pyinfra host entry.

Validation happens here, while pyinfra loads the inventory file, so a bad
setting stops the run before any SSH connection is opened.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api.exceptions import PyinfraError

from restobot.settings import SettingsError, load_settings


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
    if ssh.known_hosts_file is not None:
        data["ssh_known_hosts_file"] = str(ssh.known_hosts_file)
        data["ssh_strict_host_key_checking"] = "yes"
    return (name or ssh.host, data)


def local_acme() -> dict[str, str]:
    """The local ACME server's directory URL and CA path, as the harness recorded them."""
    from restobot.harness.acme import AcmeError, local_acme_settings

    try:
        return local_acme_settings()
    except AcmeError as error:
        raise InventoryError(
            f"acme: the local ACME server is not running ({error}); "
            "start it with scripts/demo or: .venv/bin/python -m restobot.harness.acme up"
        ) from None


def local_meta() -> dict[str, str]:
    """The local Meta double's Graph API and alert URLs, as the harness recorded them."""
    from restobot.harness.meta_double import MetaDoubleError, recorded_double

    try:
        return recorded_double().settings()
    except MetaDoubleError as error:
        raise InventoryError(
            f"meta: the local Meta double is not running ({error}); start it with scripts/demo"
        ) from None


def local_checks() -> dict[str, str]:
    """What the go-live checks need beyond DNS on the local stage: pebble's root, the VPS's address."""
    from restobot.harness import acme, vps

    values: dict[str, str] = {}
    try:
        recorded = acme.LocalAcme.from_json(acme.state_path(acme.CONTAINER_NAME).read_text())
        values["ca_bundle"] = str(acme.issuing_root(recorded))
    except (OSError, ValueError, acme.AcmeError):
        pass  # the checks report the chain as unverifiable rather than the inventory failing
    address = vps.container_address(vps.CONTAINER_NAME)
    if address:
        values["exposure_address"] = address
    return values
