"""A local Meta for the local stage: the Graph API send endpoints and the alert webhook.

Production's n8n sends replies to Meta's Graph API and alerts to a webhook, both
outside the VPS. The local stage gets the same from one container
(``restobot-local/python:3-trixie`` running harness/meta_double_server.py,
which reuses harness/graph_api.py), placed exactly like the local ACME server
(harness/acme.py): a sidecar of the VPS (harness/sidecar.py), OUTSIDE the
VPS, on its own internal docker network ``<container>-net`` (a /28 of 10.213.0.0/16
chosen from the name) at the fixed address ``<subnet>.2``, the VPS connected to it.
The VPS's inner n8n reaches it by egress through the inner engine's NAT, as it
would reach graph.facebook.com; the VPS's firewall applies as in production.

* ``graph_api_base_url`` = ``http://<ip>:8080`` (settings ``meta.graph_api_base_url``),
* ``alert_webhook_url`` = ``http://<ip>:8080/alerts`` (``pipeline.alert_webhook_url``),
* ``control_url`` = ``http://127.0.0.1:<port>/_control``: the control API (recorded
  requests, reset, scripted answers), published on 127.0.0.1 only. Docker cannot
  publish from an internal network, so the container starts on Docker's default
  bridge with only that port published, then joins its own network; the Graph
  listener binds the fixed address only and the control listener refuses requests
  coming through it.

A standalone mode (``vps_container=None``) publishes both ports on 127.0.0.1
(random host ports) for tests that send from this machine.

CLI::

    python -m harness.meta_double up [--vps NAME | --standalone] [--name NAME]
    python -m harness.meta_double down [--name NAME]
    python -m harness.meta_double status [--name NAME] [--exit-code]
    python -m harness.meta_double requests [--name NAME] [--reset]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from harness import images, sidecar
from harness import vps as local_vps
from harness.sidecar import SidecarNetwork

CONTAINER_NAME = "restobot-meta-local"
VPS_CONTAINER_NAME = local_vps.CONTAINER_NAME
KEY_DIR = images.REPO_ROOT / ".cache" / "local-meta"
IMAGE = "python"
"""``restobot-local/python:3-trixie`` (images.LOCAL_IMAGES): python3 is all the server needs."""
GRAPH_PORT = 8080
CONTROL_PORT = 8081
LOOPBACK = sidecar.LOOPBACK
SPEC_LABEL = "org.restobot.meta-spec"
SERVER_DIR_IN_CONTAINER = "/srv/meta-double"
SERVER_FILES = (
    images.REPO_ROOT / "harness" / "meta_double_server.py",
    images.REPO_ROOT / "harness" / "graph_api.py",
)
"""Copied into ``server_dir(container)`` (mounted read-only): edits in the tree reach the
container only through ``up``, which replaces it when they change."""
HTTP_TIMEOUT = 5.0


class MetaDoubleError(sidecar.SidecarError):
    pass


@dataclasses.dataclass(frozen=True)
class LocalMetaDouble:
    """How to use a running Meta double.

    + graph_api_base_url: for settings ``meta.graph_api_base_url`` (no trailing slash).
    + alert_webhook_url: for settings ``pipeline.alert_webhook_url``.
    + control_url: the control API on 127.0.0.1 (``/requests``, ``/reset``, ``/script``).
    + container: the double's container name.
    + host: the address the two settings URLs use (the fixed IP, or 127.0.0.1 standalone).
    + network, subnet: its docker network and subnet; None standalone.
    """

    graph_api_base_url: str
    alert_webhook_url: str
    control_url: str
    container: str
    host: str
    network: str | None = None
    subnet: str | None = None

    def settings(self) -> dict[str, str]:
        """What ``harness.stage.local_stage_tree(meta=...)`` takes."""
        return {"graph_api_base_url": self.graph_api_base_url, "alert_webhook_url": self.alert_webhook_url}

    def requests(self) -> list[dict[str, Any]]:
        """Every request recorded (oldest first): path, authorization, content_type, body, status."""
        return json.loads(_http("GET", f"{self.control_url}/requests"))["requests"]

    def reset(self) -> None:
        """Forget the recorded requests and the scripted answers."""
        _http("POST", f"{self.control_url}/reset", {})

    def script(self, *answers: dict[str, Any]) -> int:
        """Queue answers for the next sends: ``{"status": 429, "code": 130429}``; ``"path"`` targets
        another path (``/alerts``); ``{"status": 0}`` closes the connection. Returns the queue length."""
        return json.loads(_http("POST", f"{self.control_url}/script", {"answers": list(answers)}))["queued"]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LocalMetaDouble:
        data = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _http(method: str, url: str, body: Any = None, timeout: float = HTTP_TIMEOUT) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


# --- pure builders -------------------------------------------------------------------


def graph_api_base_url(host: str, port: int = GRAPH_PORT) -> str:
    return f"http://{host}:{port}"


def alert_webhook_url(host: str, port: int = GRAPH_PORT) -> str:
    return f"http://{host}:{port}/alerts"


def control_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/_control"


def create_argv(*, container: str, image_ref: str, server_dir: Path, spec_hash: str,
                network: SidecarNetwork | None) -> list[str]:
    """The ``docker create`` argv of the double (pure: tested by value).

    + network: the Graph listener binds this network's fixed address (joined after
      create, before start) and only the control port is published, on 127.0.0.1;
      None publishes both ports on 127.0.0.1 (standalone).
    """
    publish = ["--publish", f"{LOOPBACK}::{CONTROL_PORT}"]
    if network is None:
        publish = ["--publish", f"{LOOPBACK}::{GRAPH_PORT}", *publish]
    graph_address = network.pebble_ip if network is not None else "0.0.0.0"
    return [
        "docker", "create",
        "--name", container,
        "--label", f"{SPEC_LABEL}={spec_hash}",
        "--network", "bridge",
        *publish,
        "--volume", f"{server_dir}:{SERVER_DIR_IN_CONTAINER}:ro",
        "--env", "PYTHONUNBUFFERED=1",
        image_ref,
        "python3", f"{SERVER_DIR_IN_CONTAINER}/meta_double_server.py",
        "--graph-port", str(GRAPH_PORT), "--control-port", str(CONTROL_PORT),
        "--graph-address", graph_address,
    ]


def connect_argv(network: SidecarNetwork, container: str) -> list[str]:
    """Join the double to its own network at the fixed address (before it starts)."""
    return ["docker", "network", "connect", "--ip", network.pebble_ip, network.name, container]


# --- start, stop, status -------------------------------------------------------------------


def state_path(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> Path:
    """Where ``up`` records the LocalMetaDouble of ``container``."""
    return key_dir / f"{container}.json"


def server_dir(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> Path:
    """Host directory holding the server's files, mounted read-only into the container."""
    return key_dir / container


def _copy_server_files(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in SERVER_FILES:
        if not source.is_file():
            raise MetaDoubleError(f"{source} is missing: the double's server needs it")
        target = directory / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            sidecar.write_public(target, source.read_bytes())
        copies.append(target)
    return copies


def _wait_until_serving(double: LocalMetaDouble, deadline: float) -> float:
    return sidecar.wait_until_serving(double.container, double.control_url, double.requests, deadline,
                                      retry_on=(OSError, ValueError, urllib.error.URLError), interval=0.2)


def _create_and_start(steps: list[list[str]], container: str) -> None:
    """Run the ``docker create``, ``network connect`` and ``start`` steps; remove the container
    when one fails."""
    for argv in steps:
        proc = sidecar.run_docker(argv)
        if proc.returncode != 0:
            sidecar.docker("rm", "--force", container)
            raise MetaDoubleError(f"{' '.join(argv[:3])} {container} failed: {proc.stderr.strip()}")


def ensure_meta_double_running(*, vps_container: str | None = VPS_CONTAINER_NAME,
                               container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                               build: bool = True, timeout: float = 30.0,
                               out: TextIO | None = sys.stdout) -> LocalMetaDouble:
    """Ensure the Meta double runs and its control API answers; record it in ``state_path``.

    A running container with the same spec (image id, network layout, server files) on
    its network at its address is kept; a stopped one or one with another spec is replaced.

    + vps_container: put the double on its own network ``<container>-net`` (made here)
      and connect this (running) container to it; None: standalone, both ports on 127.0.0.1.
    + container: the double's container name.
    + key_dir: where the server files and the state file live.
    + build: build ``restobot-local/python:3-trixie`` first when its inputs changed.
    + timeout: seconds to wait for the control API to answer.

    Examples:
        meta = ensure_meta_double_running()
        tree = local_stage_tree(endpoint, acme=acme.settings(), meta=meta.settings())
    """
    say = sidecar.say_to(out)
    deadline = time.monotonic() + timeout
    if build:
        images.build_images([IMAGE], out=out)
    image_ref = images.current_ref(IMAGE)
    image_info = images.inspect_image(image_ref)
    if image_info is None:
        raise MetaDoubleError(f"{image_ref} is not built: run 'python -m harness.images build {IMAGE}'")
    sidecar.require_vps_running(vps_container)

    with sidecar.locked(key_dir, "containers"):
        network = sidecar.ensure_placement(container, vps_container, say=say)
        directory = server_dir(container, key_dir)
        spec_hash = sidecar.spec_hash(image_info["Id"], network, _copy_server_files(directory),
                                      ports=[GRAPH_PORT, CONTROL_PORT])
        steps = [create_argv(container=container, image_ref=image_ref, server_dir=directory,
                             spec_hash=spec_hash, network=network)]
        if network is not None:
            steps.append(connect_argv(network, container))
        steps.append(["docker", "start", container])
        state = sidecar.ensure_started(container, image_ref=image_ref, spec_label=SPEC_LABEL, spec=spec_hash,
                                       network=network, start=lambda: _create_and_start(steps, container), say=say)
        host = sidecar.ensure_reachable(vps_container, network, say=say)
        graph_port = GRAPH_PORT if network is not None else sidecar.published_port(state, GRAPH_PORT)
        double = LocalMetaDouble(
            graph_api_base_url=graph_api_base_url(host, graph_port),
            alert_webhook_url=alert_webhook_url(host, graph_port),
            control_url=control_url(sidecar.published_port(state, CONTROL_PORT)),
            container=container,
            host=host,
            network=network.name if network else None,
            subnet=network.subnet if network else None,
        )
        waited = _wait_until_serving(double, deadline)
        sidecar.write_public(state_path(container, key_dir), double.to_json().encode())
    say(f"Meta double answers ({waited:.1f} s): Graph API {double.graph_api_base_url}, "
        f"control {double.control_url}")
    return double


def ensure_meta_double_absent(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                              out: TextIO | None = sys.stdout) -> bool:
    """Remove the double's container, its network (disconnecting the VPS), its server files and
    its state file; return whether a container was there. A network of that name not made here stays."""
    return sidecar.ensure_sidecar_absent(container, key_dir=key_dir, files_dir=server_dir(container, key_dir),
                                         state_file=state_path(container, key_dir), say=sidecar.say_to(out))


@dataclasses.dataclass(frozen=True)
class MetaDoubleStatus:
    """State of a Meta double: status "running", "stopped" or "absent"."""

    container: str
    status: str
    double: LocalMetaDouble | None
    detail: str = ""


def meta_double_status(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> MetaDoubleStatus:
    """Read-only: is the double's container running, and what did ``up`` record for it."""
    status, detail = sidecar.container_status(container)
    return MetaDoubleStatus(container, status,
                            sidecar.read_record(state_path(container, key_dir), LocalMetaDouble.from_json), detail)


def recorded_double(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> LocalMetaDouble:
    """The double the last ``up`` recorded (no docker call); MetaDoubleError when there is none."""
    path = state_path(container, key_dir)
    if not path.exists():
        raise MetaDoubleError(f"no Meta double recorded in {path}: run 'python -m harness.meta_double up'")
    return LocalMetaDouble.from_json(path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.meta_double",
        description="Start, stop and read the local stage's Meta double (Graph API send endpoints, alert sink).",
    )
    parser.add_argument("--name", default=CONTAINER_NAME, help="the double's container (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the double on its own network and connect the VPS (kept if current)")
    where = up.add_mutually_exclusive_group()
    where.add_argument("--vps", default=VPS_CONTAINER_NAME, help="VPS container (default %(default)s)")
    where.add_argument("--standalone", action="store_true", help="no VPS: both ports on 127.0.0.1")
    commands.add_parser("down", help="remove the double's container and network")
    status = commands.add_parser("status", help="show whether the double runs and its URLs")
    status.add_argument("--exit-code", action="store_true", help="exit 1 unless it is running")
    requests = commands.add_parser("requests", help="print the recorded requests (JSON, oldest first)")
    requests.add_argument("--reset", action="store_true", help="then forget them and any scripted answer")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            double = ensure_meta_double_running(vps_container=None if args.standalone else args.vps,
                                                container=args.name)
            print(double.to_json(), end="")
        elif args.command == "down":
            ensure_meta_double_absent(container=args.name)
        elif args.command == "status":
            current = meta_double_status(container=args.name)
            return sidecar.print_status(current.container, current.status, current.detail,
                                        current.double.to_json() if current.double else None,
                                        exit_code=args.exit_code)
        else:
            double = recorded_double(args.name)
            print(json.dumps(double.requests(), indent=2))
            if args.reset:
                double.reset()
    except (sidecar.SidecarError, images.ImageBuildError, urllib.error.URLError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
