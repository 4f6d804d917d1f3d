"""A container beside the local VPS, on its own internal docker network.

The local stage puts what production reaches over the internet (Let's Encrypt:
harness/acme.py; Meta's Graph API: harness/meta_double.py) in
containers OUTSIDE the VPS, so the VPS reaches them by egress and its host
firewall applies as in production. Each such sidecar gets its own user-defined,
internal docker network ``<container>-net`` with a small fixed subnet (a /28 of
10.213.0.0/16 chosen from the name, see ``subnet_candidates``); the sidecar takes
the fixed address ``<subnet>.2`` (known before it starts) and the VPS container
is connected to the same network (a dynamic address from the upper half of the
subnet). The network is internal (no route beyond it).

A standalone sidecar (no VPS) has no network of its own: its ports are published
on 127.0.0.1.

This module holds what both sidecars share: the file lock, the network's layout
and lifecycle, and the steps of ``up`` (keep a current container or replace it),
``down`` and ``status``. Its errors are SidecarError (AcmeError and MetaDoubleError
derive from it). Its docker-CLI helpers (``docker``, ``run_docker``,
``container_state``, ``is_running``, ``container_logs``, ``wait_for_container``) are
the harness's one way to run docker, inspect a container and wait for it: the VPS
container (harness/vps.py) uses them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from harness.poll import PollTimeout, poll

LOOPBACK = "127.0.0.1"
NETWORK_LABEL = "org.restobot.acme-network"
"""On the networks made here: the sidecar container they belong to (``down`` removes only those).

Named after the first sidecar (pebble); kept as it is so networks made before stay recognised."""
NETWORK_POOL = ipaddress.ip_network("10.213.0.0/16")
"""Where per-instance subnets come from: outside Docker's default address pools
(172.17-31.0.0/16, 192.168.0.0/16), so neither the host's engine nor the VPS's
inner engine hands it out by itself."""
NETWORK_PREFIX = 28
"""/28: network, gateway (.1), the sidecar (.2), dynamic addresses .8-.14 (the VPS)."""
NETWORK_ATTEMPTS = 32
"""Candidate subnets tried (one after the other) before giving up."""

Say = Callable[[str], None]
Record = TypeVar("Record")
Answer = TypeVar("Answer")


class SidecarError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class SidecarNetwork:
    """A sidecar's own docker network, which the VPS joins (pure layout, see ``network_layout``).

    + name: the docker network (``<sidecar container>-net``).
    + subnet: its subnet (a /28 of NETWORK_POOL).
    + gateway: the host's address on it (the first one).
    + ip_range: where docker picks dynamic addresses (the VPS's): the upper half,
      so it never hands out the sidecar's.
    + pebble_ip: the sidecar's fixed address (the second one). Named after the
      first sidecar; the field names are part of the sidecars' spec hashes.
    """

    name: str
    subnet: str
    gateway: str
    ip_range: str
    pebble_ip: str


def say_to(out: TextIO | None) -> Say:
    """Print progress lines to ``out``; None: silent."""
    return (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)


# --- files ----------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)
    path.chmod(0o600)


def write_public(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0644) in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


@contextlib.contextmanager
def locked(key_dir: Path, name: str) -> Iterator[None]:
    """Serialise work on ``key_dir`` (mode 0700) between processes (xdist workers, a demo)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    with flocked(key_dir / f".{name}.lock"):
        yield


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(path: Path, parse: Callable[[str], Record]) -> Record | None:
    """What ``up`` recorded in ``path``; None when nothing is."""
    return parse(path.read_text()) if path.exists() else None


def spec_hash(image_id: str, network: SidecarNetwork | None, files: Sequence[Path], **extra: Any) -> str:
    """A short hash of what a sidecar container is made from (its spec label's value).

    + extra: the sidecar's own parts of the spec (environment, ports...).
    """
    spec = {
        "image": image_id,
        "network": dataclasses.asdict(network) if network else {"publish": LOOPBACK},
        **extra,
        "files": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# --- docker ---------------------------------------------------------------------


def docker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``docker ARGS...``, output captured as text; ``check``: CalledProcessError on a non-zero exit."""
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True)


def run_docker(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run an argv a pure builder made (``["docker", "run", ...]``) as :func:`docker` does."""
    if not argv or argv[0] != "docker":
        raise ValueError(f"not a docker argv: {list(argv)[:3]}")
    return docker(*argv[1:])


def docker_unavailable() -> str | None:
    """Why docker cannot be used here, with the command that fixes it; None when the daemon answers."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed: run scripts/setup-host (it installs docker.io)"
    try:
        answered = subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        answered = False
    return None if answered else "the docker daemon does not answer: run scripts/setup-host (it starts dockerd)"


def container_state(container: str) -> dict | None:
    """``docker container inspect`` of ``container``; None when it is not there."""
    proc = docker("container", "inspect", container)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def is_running(state: dict | None) -> bool:
    return bool(state and state["State"]["Running"])


def container_logs(container: str, lines: int = 20) -> str:
    """The container's last ``lines`` log lines (stdout and stderr)."""
    proc = docker("logs", "--tail", str(lines), container)
    return (proc.stdout + proc.stderr).strip()


def wait_for_container(container: str, probe: Callable[[], Answer], *, deadline: float, what: str,
                       until: Callable[[Answer], bool] = bool, tolerate: tuple[type[BaseException], ...] = (),
                       interval: float = 0.5, error: type[Exception] = SidecarError) -> tuple[Answer, float]:
    """Poll ``probe`` (harness.poll) while ``container`` runs; return (its answer, seconds waited).

    + deadline: a ``time.monotonic()`` value.
    + what: what is awaited, for the error.
    + until, tolerate, interval: as in :func:`harness.poll.poll`.
    + error: raised, with the container's last log lines, when the container is not
      running or the deadline passes (VpsError for the VPS).
    """
    started = time.monotonic()

    def ask() -> Answer:
        state = container_state(container)
        if not is_running(state):
            gone = f"exited (code {state['State']['ExitCode']})" if state else "is gone"
            raise error(f"{container} {gone} while waiting for {what}; "
                        f"last log lines:\n{container_logs(container)}")
        return probe()

    try:
        answer = poll(ask, until=until, timeout=max(0.0, deadline - started), what=what, interval=interval,
                      tolerate=tolerate)
    except PollTimeout as timeout:
        raise error(f"{timeout}\nlast log lines of {container}:\n{container_logs(container)}") from None
    return answer, time.monotonic() - started


def container_networks(state: dict | None) -> dict[str, dict]:
    return ((state or {}).get("NetworkSettings") or {}).get("Networks") or {}


def published_port(state: dict, port: int) -> int:
    """The host port on 127.0.0.1 that ``port``/tcp of the container is published on."""
    bindings = (state.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in bindings.get(f"{port}/tcp") or []:
        if binding.get("HostIp") == LOOPBACK:
            return int(binding["HostPort"])
    raise SidecarError(f"{state['Name'].lstrip('/')}: port {port} is not published on {LOOPBACK}")


# --- the sidecar's network (pure builders) --------------------------------------------


def network_name(container: str) -> str:
    """The docker network of the sidecar container ``container``."""
    return f"{container}-net"


def subnet_candidates(name: str, pool: ipaddress.IPv4Network = NETWORK_POOL,
                      prefix: int = NETWORK_PREFIX, count: int = NETWORK_ATTEMPTS,
                      ) -> list[ipaddress.IPv4Network]:
    """Subnets to try for network ``name``, in order (pure: tested by value).

    The first is picked from a hash of the name (stable across runs and machines,
    spread between instances); the next ones follow it, wrapping around the pool.
    """
    subnets = 2 ** (prefix - pool.prefixlen)
    size = 2 ** (pool.max_prefixlen - prefix)
    start = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % subnets
    return [ipaddress.ip_network((int(pool.network_address) + ((start + i) % subnets) * size, prefix))
            for i in range(min(count, subnets))]


def network_layout(name: str, subnet: str | ipaddress.IPv4Network) -> SidecarNetwork:
    """Gateway, the sidecar's address and the dynamic range within ``subnet`` (pure)."""
    net = ipaddress.ip_network(subnet)
    if net.version != 4 or net.prefixlen > 29:
        raise SidecarError(f"{net}: a sidecar's network needs an IPv4 subnet of /29 or larger")
    _, upper = net.subnets(prefixlen_diff=1)
    return SidecarNetwork(name=name, subnet=str(net), gateway=str(net.network_address + 1),
                          ip_range=str(upper), pebble_ip=str(net.network_address + 2))


def network_create_argv(network: SidecarNetwork, container: str) -> list[str]:
    """The ``docker network create`` argv of a sidecar's network (pure: tested by value).

    Internal: no route beyond it.
    """
    return [
        "docker", "network", "create",
        "--driver", "bridge", "--internal",
        "--subnet", network.subnet,
        "--gateway", network.gateway,
        "--ip-range", network.ip_range,
        "--label", f"{NETWORK_LABEL}={container}",
        network.name,
    ]


def placement(network: SidecarNetwork | None) -> str:
    """Where a sidecar listens, for progress lines."""
    return f"{network.pebble_ip} on {network.name}" if network is not None else f"{LOOPBACK} only"


# --- the sidecar's network (docker) ----------------------------------------------------


def network_state(name: str) -> dict | None:
    """``docker network inspect`` of ``name``; None when it is not there."""
    proc = docker("network", "inspect", name)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def _host_routes(path: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """This host's IPv4 routes but the default one: a sidecar's subnet must not shadow any."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = ipaddress.IPv4Address(struct.pack("<I", int(fields[1], 16)))
            mask = ipaddress.IPv4Address(struct.pack("<I", int(fields[7], 16)))
            route = ipaddress.ip_network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue
        if route.prefixlen:
            routes.append(route)
    return routes


def _network_matches(state: dict, layout: SidecarNetwork) -> bool:
    configs = (state.get("IPAM") or {}).get("Config") or []
    return (len(configs) == 1 and bool(state.get("Internal"))
            and configs[0].get("Subnet") == layout.subnet
            and configs[0].get("Gateway") == layout.gateway
            and configs[0].get("IPRange") == layout.ip_range)


def remove_network(name: str) -> bool:
    """Disconnect every container from network ``name`` and remove it; return whether it was there."""
    state = network_state(name)
    if state is None:
        return False
    for endpoint in (state.get("Containers") or {}).values():
        docker("network", "disconnect", "--force", name, endpoint["Name"])
    proc = docker("network", "rm", name)
    if proc.returncode != 0 and network_state(name) is not None:
        raise SidecarError(f"docker network rm {name} failed: {proc.stderr.strip()}")
    return True


def _made_for(state: dict | None, container: str) -> bool:
    return state is not None and (state.get("Labels") or {}).get(NETWORK_LABEL) == container


def _owned_network(container: str) -> dict | None:
    """The sidecar's network when it exists and was made for ``container``; SidecarError if another's."""
    name = network_name(container)
    state = network_state(name)
    if state is not None and not _made_for(state, container):
        raise SidecarError(f"docker network {name} exists but was not made for {container} "
                           f"(no label {NETWORK_LABEL}={container}): remove it or use another --name")
    return state


def ensure_network(container: str, *, say: Say = lambda line: None) -> SidecarNetwork:
    """Ensure the sidecar's network ``<container>-net`` exists; return its layout.

    An existing one (made here, see NETWORK_LABEL) keeps its subnet when its layout is
    the expected one. A new one takes the first of ``subnet_candidates`` that neither
    overlaps a route of this host nor makes docker answer "Pool overlaps".
    """
    name = network_name(container)
    state = _owned_network(container)
    if state is not None:
        configs = (state.get("IPAM") or {}).get("Config") or []
        with contextlib.suppress(SidecarError, KeyError, ValueError, IndexError):
            layout = network_layout(name, configs[0]["Subnet"])
            if _network_matches(state, layout):
                return layout
        say(f"Removing docker network {name} (not the expected layout)...")
        remove_network(name)
    routes = _host_routes()
    skipped: list[str] = []
    for subnet in subnet_candidates(name):
        if any(subnet.overlaps(route) for route in routes):
            skipped.append(f"{subnet} (a host route)")
            continue
        layout = network_layout(name, subnet)
        proc = run_docker(network_create_argv(layout, container))
        if proc.returncode == 0:
            say(f"Created docker network {name} ({layout.subnet}, {container} at {layout.pebble_ip})")
            return layout
        if "overlap" not in proc.stderr.lower():
            raise SidecarError(f"docker network create {name} --subnet {subnet} failed: {proc.stderr.strip()}")
        skipped.append(f"{subnet} (docker: {proc.stderr.strip()})")
    raise SidecarError(f"no free subnet for {name} in {NETWORK_POOL}; tried: {'; '.join(skipped)}")


def ensure_vps_connected(vps_container: str, network: SidecarNetwork) -> bool:
    """Connect the VPS container to the sidecar's network unless it is; return whether it changed."""
    if network.name in container_networks(container_state(vps_container)):
        return False
    proc = docker("network", "connect", network.name, vps_container)
    if proc.returncode != 0:
        raise SidecarError(f"docker network connect {network.name} {vps_container} failed: "
                           f"{proc.stderr.strip()}")
    return True


# --- up ------------------------------------------------------------------------------


def require_vps_running(vps_container: str | None) -> None:
    """SidecarError unless the VPS container runs (None: standalone, nothing to check)."""
    if vps_container is not None and not is_running(container_state(vps_container)):
        raise SidecarError(f"the VPS container {vps_container} is not running: "
                           "run 'python -m harness.vps up' first")


def ensure_placement(container: str, vps_container: str | None, *, say: Say) -> SidecarNetwork | None:
    """Ensure the sidecar's own network for a VPS, or none when it is standalone; return it.

    Standalone, a network left from a run for a VPS (made here) is removed, and the
    container on it with it.
    """
    if vps_container is not None:
        return ensure_network(container, say=say)
    name = network_name(container)
    if _made_for(network_state(name), container):
        say(f"Removing docker network {name} ({container} now runs standalone)...")
        docker("rm", "--force", container)
        remove_network(name)
    return None


def _reason_to_replace(state: dict, spec_label: str, spec: str, network: SidecarNetwork | None) -> str | None:
    """Why an existing container must go (pure); None when it runs with this spec on its network."""
    if not is_running(state):
        return "stopped leftover"
    if (state["Config"]["Labels"] or {}).get(spec_label) != spec:
        return "spec changed"
    if network is not None and (
            container_networks(state).get(network.name) or {}).get("IPAddress") != network.pebble_ip:
        return f"not on {network.name} at its address"
    return None


def ensure_current_or_absent(container: str, *, spec_label: str, spec: str,
                             network: SidecarNetwork | None, say: Say) -> dict | None:
    """Afterwards the container either runs with this spec (label ``spec_label`` = ``spec``)
    on ``network`` at its fixed address, and its state is returned, or it is absent (None)."""
    state = container_state(container)
    if state is None:
        return None
    why = _reason_to_replace(state, spec_label, spec, network)
    if why is None:
        return state
    say(f"Removing {container} ({why})...")
    docker("rm", "--force", container)
    return None


def ensure_started(container: str, *, image_ref: str, spec_label: str, spec: str,
                   network: SidecarNetwork | None, start: Callable[[], None], say: Say) -> dict:
    """Ensure the container runs with this spec: keep a current one, else (re)create it with
    ``start`` (which raises on failure); return its state."""
    state = ensure_current_or_absent(container, spec_label=spec_label, spec=spec, network=network, say=say)
    if state is not None:
        say(f"{container} already running with this spec")
        return state
    say(f"Starting {container} from {image_ref} ({placement(network)})...")
    start()
    state = container_state(container)
    if state is None:
        raise SidecarError(f"{container} is not there after it was started")
    return state


def ensure_reachable(vps_container: str | None, network: SidecarNetwork | None, *, say: Say) -> str:
    """Connect the VPS to the sidecar's network; return the address the sidecar's URLs use
    (its fixed address, or 127.0.0.1 standalone)."""
    if network is None:
        return LOOPBACK
    assert vps_container is not None
    if ensure_vps_connected(vps_container, network):
        say(f"Connected {vps_container} to {network.name}")
    return network.pebble_ip


def wait_until_serving(container: str, url: str, probe: Callable[[], object], deadline: float, *,
                       retry_on: tuple[type[BaseException], ...], interval: float) -> float:
    """Call ``probe`` (which asks ``url``) until it returns; return the seconds it took.

    SidecarError, with the container's last log lines, when the container exits or
    the deadline passes (``retry_on``: the errors meaning "not yet").
    """
    def answered() -> bool:
        probe()
        return True

    _, seconds = wait_for_container(container, answered, deadline=deadline, what=f"{url} answering",
                                    tolerate=retry_on, interval=interval)
    return seconds


# --- down, status -----------------------------------------------------------------------


def ensure_sidecar_absent(container: str, *, key_dir: Path, files_dir: Path, state_file: Path,
                          say: Say) -> bool:
    """Remove the sidecar's container, its network (disconnecting the VPS), ``files_dir`` and
    ``state_file``; return whether a container was there. A network of that name not made
    here stays."""
    with locked(key_dir, "containers"):
        existed = container_state(container) is not None
        docker("rm", "--force", container)
        name = network_name(container)
        state = network_state(name)
        if _made_for(state, container):
            remove_network(name)
            say(f"Removed docker network {name}")
        elif state is not None:
            say(f"Left docker network {name} alone (not made for {container})")
        shutil.rmtree(files_dir, ignore_errors=True)
        state_file.unlink(missing_ok=True)
    say(f"Removed {container}" if existed else f"{container} is not there")
    return existed


def container_status(container: str) -> tuple[str, str]:
    """Read-only: ("running" | "stopped" | "absent", detail: a stopped one's exit code and last logs)."""
    state = container_state(container)
    if state is None:
        return "absent", ""
    if not state["State"]["Running"]:
        return "stopped", (f"exit code {state['State']['ExitCode']}; "
                           f"last log lines:\n{container_logs(container)}")
    return "running", ""


def print_status(container: str, status: str, detail: str, record: str | None, *, exit_code: bool) -> int:
    """The ``status`` command's output; return 1 when ``exit_code`` and it is not running."""
    print(f"{container}: {status}")
    if detail:
        print(detail)
    if record is not None:
        print(record, end="")
    return 1 if exit_code and status != "running" else 0
