"""The local stage's settings tree, composed from what the harness built and started.

`inventory/local.py` uses it for the demo's VPS; the e2e tests use it for VPS
containers of their own. Image names come from the harness's image list, the
SSH endpoint from the VPS harness, the ACME directory from the local ACME
server: nothing is written twice.
"""

from __future__ import annotations

from typing import Any

from harness import acme, images, meta_double, vps
from restobot.hosts import InventoryError

BUNDLE_DIR_ON_VPS = vps.BUNDLE_MOUNT


def local_image_refs() -> dict[str, str]:
    """Settings key -> locally built image reference."""
    ref = {image.name: f"{image.repository}:{image.tag}" for image in images.LOCAL_IMAGES if image.tag}
    return {
        "traefik": ref["traefik"],
        "nginx": ref["nginx"],
        "n8n": ref["n8n"],
        "postgres": ref["postgres"],
        "redis": ref["redis"],
        "migrate_base": ref["python"],
        "prometheus": ref["prometheus"],
        "alertmanager": ref["alertmanager"],
        "node_exporter": ref["node-exporter"],
        "postgres_exporter": ref["postgres-exporter"],
        "redis_exporter": ref["redis-exporter"],
        "blackbox_exporter": ref["blackbox-exporter"],
        "bundle_dir": BUNDLE_DIR_ON_VPS,
    }


def ssh_settings(endpoint: vps.VpsEndpoint | None = None) -> dict[str, Any]:
    """SSH settings of a VPS endpoint; without one, the default local VPS's.

    ``host_key`` pins the key the harness read from the container (docker exec) when
    it started it. An endpoint must have one; the default VPS has none while it is
    not up (the tree still validates: the local stage does not require a pin).
    """
    if endpoint is None:
        key_path, known_hosts = vps.key_paths()
        values = {"host": vps.LOOPBACK, "port": vps.DEFAULT_PORTS.ssh, "user": "root", "key_path": str(key_path)}
        host_key = vps.recorded_host_key(known_hosts)
        return {**values, "host_key": host_key} if host_key else values
    if endpoint.host_key is None:
        raise vps.VpsError(f"{endpoint.container}: no host key recorded in {endpoint.known_hosts_path}; "
                           f"start it with 'python -m harness.vps --name {endpoint.container} up'")
    return {"host": endpoint.host, "port": endpoint.ssh_port, "user": endpoint.user,
            "key_path": str(endpoint.key_path), "host_key": endpoint.host_key}


def local_stage_tree(endpoint: vps.VpsEndpoint | None = None, acme: dict[str, str] | None = None,
                     checks: dict[str, Any] | None = None,
                     meta: dict[str, str] | None = None) -> dict[str, Any]:
    """The local stage's settings (non-secret part).

    + endpoint: the VPS to deploy onto (default: the demo's ``restobot-vps-local``)
    + acme: ``directory_url`` and ``ca_certificates_path`` of the local ACME server;
      none leaves only the e-mail, which is enough for provisioning-only runs
    + checks: the go-live checklist's section, merged over the local defaults
      (``public_address``/``public_http_address`` from ``endpoint``'s published
      ports, test recipients the local Graph API double accepts)
    + meta: ``graph_api_base_url`` and ``alert_webhook_url`` of the local Meta double
      (``harness.meta_double.LocalMetaDouble.settings()``); they become
      ``meta.graph_api_base_url`` and ``pipeline.alert_webhook_url``
    """
    tree = {
        "stage": "local",
        "ssh": ssh_settings(endpoint),
        "domains": {"domain": "resto.localhost.test"},
        "acme": {"email": "ops@resto.localhost.test", **(acme or {})},
        "images": local_image_refs(),
        # Until a local Graph API double is given, replies go to a closed port on the
        # container's own loopback: nothing may leave this machine.
        "meta": {"signature_required": "enforce", "wa_phone_number_id": "100000000000099",
                 "graph_api_base_url": "http://127.0.0.1:9"},
        "restaurant": {
            "name": "Chez Resto (local)",
            "address": "1 rue de l'Exemple, 75001 Paris",
            "hours": "Tue-Sat 12:00-14:30, 19:00-22:30",
            "menu_url": "https://resto.localhost.test/menu",
        },
        "database": {},
        "n8n": {"owner_email": "owner@resto.localhost.test"},
        "redis": {},
        "admin": {},
        # The VPS's own docker networks: smoke checks and the demo reach the console from there.
        "console": {"ip_allowlist": ["127.0.0.1/32", "172.16.0.0/12"]},
        # A container has no swap of its own to manage.
        "host": {"manage_swap": False},
    }
    tree["checks"] = {**local_checks(endpoint), **(checks or {})}
    if meta:
        tree["meta"]["graph_api_base_url"] = meta["graph_api_base_url"]
        tree["pipeline"] = {**tree.get("pipeline", {}), "alert_webhook_url": meta["alert_webhook_url"]}
    return tree


def local_checks(endpoint: vps.VpsEndpoint | None = None) -> dict[str, Any]:
    """The checklist's section for a local VPS: its 80/443 are published on 127.0.0.1."""
    values: dict[str, Any] = {
        "test_recipients": {"whatsapp": "33600000099", "instagram": "1000000000000099",
                            "messenger": "2000000000000099"},
    }
    if endpoint is not None:
        values["public_address"] = f"{endpoint.host}:{endpoint.https_port}"
        values["public_http_address"] = f"{endpoint.host}:{endpoint.http_port}"
    else:
        values["public_address"] = f"{vps.LOOPBACK}:{vps.DEFAULT_PORTS.https}"
        values["public_http_address"] = f"{vps.LOOPBACK}:{vps.DEFAULT_PORTS.http}"
    return values


def running_acme() -> dict[str, str]:
    """The local ACME server's directory URL and CA path, as the harness recorded them."""
    try:
        return acme.local_acme_settings()
    except acme.AcmeError as error:
        raise InventoryError(
            f"acme: the local ACME server is not running ({error}); "
            "start it with scripts/demo or: .venv/bin/python -m harness.acme up"
        ) from None


def running_meta() -> dict[str, str]:
    """The local Meta double's Graph API and alert URLs, as the harness recorded them."""
    try:
        return meta_double.recorded_double().settings()
    except meta_double.MetaDoubleError as error:
        raise InventoryError(
            f"meta: the local Meta double is not running ({error}); start it with scripts/demo"
        ) from None


def running_checks() -> dict[str, str]:
    """What the go-live checks need beyond DNS on the local stage: pebble's root, the VPS's address."""
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
