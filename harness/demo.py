"""The local stage around the demo's VPS: what `scripts/demo` starts, and what it prints.

    python -m harness.demo up     # secrets, the VPS, the local ACME server, the Meta double
    python -m harness.demo info   # loopback URLs and how to send a signed test message
    python -m harness.demo send "Bonjour, vous êtes ouverts ?"   # a signed WhatsApp message
    python -m harness.demo down   # remove all of it
"""

from __future__ import annotations

import argparse
import http.client
import shlex
import socket
import ssl
import sys
from collections.abc import Sequence

from restobot import meta_payloads
from harness import acme, vps
from restobot.secrets import ensure_secrets_file
from restobot.settings import load_inventory, read_env_file, secrets_file

DOMAIN = "resto.localhost.test"


def up() -> None:
    ensure_secrets_file(secrets_file("local"))
    vps.ensure_vps_running()
    acme.ensure_acme_running(vps_container=vps.CONTAINER_NAME)
    try:
        from harness import meta_double
    except ImportError:
        return
    meta_double.ensure_meta_double_running(vps_container=vps.CONTAINER_NAME)


def down() -> None:
    try:
        from harness import meta_double

        meta_double.ensure_meta_double_absent()
    except ImportError:
        pass
    acme.ensure_acme_absent()
    vps.ensure_vps_absent()


def info() -> str:
    endpoint = vps.vps_endpoint()
    https, http_port = endpoint.https_port, endpoint.http_port
    api, console = f"api.{DOMAIN}", f"console.{DOMAIN}"
    resolve = f"--resolve {api}:{https}:127.0.0.1 --resolve {console}:{https}:127.0.0.1"
    token = "$(grep ^META_VERIFY_TOKEN= secrets/local.env | cut -d= -f2-)"
    return "\n".join(
        [
            "The local stage is up (certificates from the local ACME server: add -k, or trust its root).",
            f"  gateway health   curl -k {resolve} https://{api}:{https}/healthz",
            f"  Meta verify      curl -k {resolve} \"https://{api}:{https}/v1/inbound/whatsapp"
            f"?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=hello\"",
            f"  n8n console      curl -k {resolve} https://{console}:{https}/   (allowlisted sources only)",
            f"  plain HTTP       curl -i -H 'Host: {api}' http://127.0.0.1:{http_port}/healthz   (redirects to https)",
            f"  SSH              {shlex.join(endpoint.ssh_argv())}",
            "  signed message   .venv/bin/python -m harness.demo send \"Bonjour, vous êtes ouverts ?\"",
            "  go-live checks   .venv/bin/python -m restobot.golive --inventory inventory/local.py",
        ]
    )


def send(text: str) -> tuple[int, bytes]:
    """POST a signed WhatsApp text message to the local stage, as Meta would."""
    secrets = read_env_file(secrets_file("local"))
    settings_tree = load_inventory("local", secrets)["SETTINGS"]
    body = meta_payloads.encode(meta_payloads.whatsapp_text(text, phone_number_id=settings_tree["meta"]["wa_phone_number_id"]))
    headers = {
        "Host": f"api.{DOMAIN}",
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta_payloads.sign(body, secrets["META_APP_SECRET"]),
    }
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", vps.vps_endpoint().https_port), timeout=10)
    connection = http.client.HTTPConnection(f"api.{DOMAIN}", timeout=20)
    connection.sock = context.wrap_socket(raw, server_hostname=f"api.{DOMAIN}")
    connection.request("POST", "/v1/inbound/whatsapp", body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up")
    commands.add_parser("down")
    commands.add_parser("info")
    sender = commands.add_parser("send")
    sender.add_argument("text")
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "info":
        print(info())
    else:
        status, body = send(args.text)
        print(f"{status} {body.decode(errors='replace')}")
        return 0 if status == 200 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
