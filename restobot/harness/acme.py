"""A local ACME server for the local stage: Let's Encrypt's pebble, in a container.

Let's Encrypt cannot be reached from the test machines, so the local stage gets
its certificates from pebble through the very same Traefik resolver production
uses; only two settings differ (``acme.directory_url`` and
``acme.ca_certificates_path``, see ``local_acme_settings``).

Placement: pebble runs in ``restobot-local/pebble:2.4`` OUTSIDE the VPS, as
Let's Encrypt does in production, so the VPS reaches it by egress and the VPS's
host firewall (default-deny INPUT, see restobot/operations/provision.py) applies
exactly as it does in production. Each ACME instance gets its own user-defined,
internal docker network ``<container>-net`` with a small fixed subnet (a /28 of
10.213.0.0/16 chosen from the name, see ``subnet_candidates``); pebble takes the
fixed address ``<subnet>.2`` (known before it starts, so its HTTPS certificate
names it), and the VPS container is connected to the same network (``docker
network connect``, a dynamic address from the upper half of the subnet). The VPS
routes to pebble on that link; the Traefik container of the VPS's inner Docker
engine reaches ``https://<pebble ip>:14000/dir`` through the inner engine's NAT
(FORWARD + MASQUERADE, never the VPS's INPUT chain). The network is internal (no
route beyond it) and nothing is published on the host. With
``PEBBLE_VA_ALWAYS_VALID=1`` pebble validates no challenge, so no traffic goes
anywhere but between these containers.

(Before 2026-11 pebble joined the VPS's network namespace and listened on the
VPS's own address: the deploy's firewall then dropped Traefik's requests in the
VPS's INPUT chain, ``dial tcp <vps ip>:14000: i/o timeout``.)

Trust: pebble's HTTPS listener (ACME on 14000, management on 15000) uses a
certificate from a local CA made here once (``.cache/local-acme/ca.pem``, key
beside it, mode 0600). ``up`` copies the CA certificate (never its key) into the
VPS at ``/etc/restobot/acme-ca.pem`` with ``docker cp``: the compose file mounts
that path into Traefik as LEGO_CA_CERTIFICATES. It is the only change made to
the VPS, which otherwise stays as the provider hands it over. Pebble's own
issuing root is new at every start; fetch it from ``roots_url`` to verify issued
chains.

A standalone mode (``vps_container=None``) publishes the two ports on
127.0.0.1 (random host ports) for tests that run Traefik on the host.

CLI::

    python -m restobot.harness.acme up [--vps NAME] [--name NAME]
    python -m restobot.harness.acme down [--name NAME]
    python -m restobot.harness.acme status [--name NAME] [--exit-code]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from restobot.harness import images
from restobot.harness import vps as local_vps

CONTAINER_NAME = "restobot-acme-local"
"""Stable name: one local ACME server per local VPS; ``up`` replaces a stale one."""
VPS_CONTAINER_NAME = local_vps.CONTAINER_NAME
"""The local VPS container connected to pebble's network (restobot.harness.vps)."""
KEY_DIR = images.REPO_ROOT / ".cache" / "local-acme"
CA_PATH_ON_VPS = "/etc/restobot/acme-ca.pem"
"""Where ``up`` copies the CA certificate inside the VPS (settings.acme.ca_certificates_path)."""
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
CONFIG_DIR_IN_CONTAINER = "/etc/pebble-local"
LOOPBACK = "127.0.0.1"
SPEC_LABEL = "org.restobot.acme-spec"
NETWORK_LABEL = "org.restobot.acme-network"
"""On the networks made here: the pebble container they belong to (``down`` removes only those)."""
NETWORK_POOL = ipaddress.ip_network("10.213.0.0/16")
"""Where per-instance subnets come from: outside Docker's default address pools
(172.17-31.0.0/16, 192.168.0.0/16), so neither the host's engine nor the VPS's
inner engine hands it out by itself."""
NETWORK_PREFIX = 28
"""/28: network, gateway (.1), pebble (.2), dynamic addresses .8-.14 (the VPS)."""
NETWORK_ATTEMPTS = 32
"""Candidate subnets tried (one after the other) before giving up."""
# Pebble's knobs: skip challenge validation (nothing leaves these containers), no
# random validation delay, no deliberately rejected nonces (deterministic runs).
PEBBLE_ENV: tuple[tuple[str, str], ...] = (
    ("PEBBLE_VA_ALWAYS_VALID", "1"),
    ("PEBBLE_VA_NOSLEEP", "1"),
    ("PEBBLE_WFE_NONCEREJECT", "0"),
)

PEBBLE_IMAGE = images.LocalImage(
    name="pebble", tag="2.4",
    official="(none: Let's Encrypt's ACME test server, local stage only)",
    parent="debian:bookworm", inputs=(("harness/images/pebble", "."),),
)
"""Built like the images in ``images.LOCAL_IMAGES`` (same inputs-label cache rule)."""

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=30)


class AcmeError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class LocalAcme:
    """How to use a running local ACME server.

    + directory_url: ACME directory for Traefik's resolver (settings.acme.directory_url).
    + roots_url: pebble's issuing root (PEM), to verify issued chains.
    + ca_pem_path_on_host: the CA certificate that signs pebble's HTTPS certificate.
    + ca_pem_path_on_vps: the same file inside the VPS (settings.acme.ca_certificates_path);
      None in standalone mode.
    + container: pebble's container name.
    + host: the address both URLs use (pebble's fixed IP on its network, or
      127.0.0.1 standalone).
    + network: pebble's docker network (the VPS is connected to it); None standalone.
    + subnet: that network's subnet (CIDR); None standalone.
    """

    directory_url: str
    roots_url: str
    ca_pem_path_on_host: Path
    ca_pem_path_on_vps: str | None
    container: str
    host: str
    network: str | None = None
    subnet: str | None = None

    def settings(self) -> dict[str, str]:
        """The ``acme`` settings that differ from production for the local stage."""
        values = {"directory_url": self.directory_url}
        if self.ca_pem_path_on_vps is not None:
            values["ca_certificates_path"] = self.ca_pem_path_on_vps
        return values

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["ca_pem_path_on_host"] = str(self.ca_pem_path_on_host)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LocalAcme":
        data = json.loads(text)
        data["ca_pem_path_on_host"] = Path(data["ca_pem_path_on_host"])
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclasses.dataclass(frozen=True)
class AcmeNetwork:
    """Pebble's own docker network, which the VPS joins (pure layout, see ``network_layout``).

    + name: the docker network (``<pebble container>-net``).
    + subnet: its subnet (a /28 of NETWORK_POOL).
    + gateway: the host's address on it (the first one).
    + ip_range: where docker picks dynamic addresses (the VPS's): the upper half,
      so it never hands out pebble's.
    + pebble_ip: pebble's fixed address (the second one), in its certificate.
    """

    name: str
    subnet: str
    gateway: str
    ip_range: str
    pebble_ip: str


# --- the local CA ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaFiles:
    """The local CA: certificate (shareable) and private key (mode 0600)."""

    cert_path: Path
    key_path: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)
    path.chmod(0o600)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


@contextlib.contextmanager
def _lock(key_dir: Path, name: str) -> Iterator[None]:
    """Serialise CA and container work between processes (xdist workers, a demo)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    with _flock(key_dir / f".{name}.lock"):
        yield


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _load_cert(path: Path):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def ensure_local_ca(key_dir: Path = KEY_DIR) -> CaFiles:
    """Make the local CA once (EC P-256, ten years); remake it only when it nears expiry.

    + key_dir: where ``ca.pem`` (mode 0644) and ``ca-key.pem`` (mode 0600) live.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = CaFiles(key_dir / "ca.pem", key_dir / "ca-key.pem")
    with _lock(key_dir, "ca"):
        cert = _load_cert(files.cert_path)
        if (cert is not None and files.key_path.exists()
                and cert.not_valid_after_utc - _now() > RENEW_BEFORE):
            files.key_path.chmod(0o600)
            return files
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "restobot local stage"),
            x509.NameAttribute(NameOID.COMMON_NAME, "restobot local ACME server CA"),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(files.key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_public(files.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return files


def _san_entries(names: Sequence[str]):
    from cryptography import x509

    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def ensure_server_certificate(ca: CaFiles, names: Sequence[str], cert_path: Path,
                              key_path: Path) -> bool:
    """Issue pebble's HTTPS certificate from the local CA unless a fitting one exists.

    A fitting one has exactly these SANs, was signed by this CA and is not near expiry.
    Returns whether a new certificate was written.

    + ca: the local CA.
    + names: DNS names and IP addresses for the SAN.
    + cert_path: where the certificate goes (mode 0644).
    + key_path: where its key goes (mode 0600).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = _load_cert(ca.cert_path)
    if ca_cert is None:
        raise AcmeError(f"{ca.cert_path}: no CA certificate; run 'python -m restobot.harness.acme up'")
    wanted = set(_san_entries(names))
    existing = _load_cert(cert_path)
    if existing is not None and key_path.exists():
        try:
            sans = set(existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = set()
        fits = (sans == wanted and existing.issuer == ca_cert.subject
                and existing.not_valid_after_utc - _now() > RENEW_BEFORE)
        if fits:
            try:
                existing.verify_directly_issued_by(ca_cert)
            except Exception:  # noqa: BLE001 - any verification failure means: issue anew
                fits = False
        if fits:
            return False
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "restobot local ACME server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return True


# --- pure builders -----------------------------------------------------------------


def pebble_config(config_dir: str = CONFIG_DIR_IN_CONTAINER) -> dict:
    """Pebble's configuration file (pure: tested by value).

    httpPort/tlsPort are where pebble would validate challenges; with
    PEBBLE_VA_ALWAYS_VALID=1 it never connects to them.
    """
    return {
        "pebble": {
            "listenAddress": f"0.0.0.0:{ACME_PORT}",
            "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
            "certificate": f"{config_dir}/server.pem",
            "privateKey": f"{config_dir}/server-key.pem",
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


def network_name(container: str) -> str:
    """The docker network of the pebble container ``container``."""
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


def network_layout(name: str, subnet: str | ipaddress.IPv4Network) -> AcmeNetwork:
    """Gateway, pebble's address and the dynamic range within ``subnet`` (pure)."""
    net = ipaddress.ip_network(subnet)
    if net.version != 4 or net.prefixlen > 29:
        raise AcmeError(f"{net}: pebble's network needs an IPv4 subnet of /29 or larger")
    _, upper = net.subnets(prefixlen_diff=1)
    return AcmeNetwork(name=name, subnet=str(net), gateway=str(net.network_address + 1),
                       ip_range=str(upper), pebble_ip=str(net.network_address + 2))


def network_create_argv(network: AcmeNetwork, container: str) -> list[str]:
    """The ``docker network create`` argv of pebble's network (pure: tested by value).

    Internal: pebble gets no route beyond it (it validates no challenge anyway).
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


def run_argv(*, container: str, image_ref: str, config_dir: Path, spec_hash: str,
             network: AcmeNetwork | None) -> list[str]:
    """The ``docker run`` argv that starts pebble (pure: tested by value).

    + network: attach pebble to this network at its fixed address (nothing
      published); None publishes the ACME and management ports on 127.0.0.1
      (random host ports).
    """
    if network is not None:
        network_args = ["--network", network.name, "--ip", network.pebble_ip]
    else:
        network_args = ["--publish", f"{LOOPBACK}::{ACME_PORT}",
                        "--publish", f"{LOOPBACK}::{MANAGEMENT_PORT}"]
    env: list[str] = []
    for name, value in PEBBLE_ENV:
        env += ["--env", f"{name}={value}"]
    return [
        "docker", "run", "--detach",
        "--name", container,
        "--label", f"{SPEC_LABEL}={spec_hash}",
        *network_args,
        "--volume", f"{config_dir}:{CONFIG_DIR_IN_CONTAINER}:ro",
        *env,
        image_ref,
        "-config", f"{CONFIG_DIR_IN_CONTAINER}/pebble-config.json",
    ]


def directory_url(host: str, port: int = ACME_PORT) -> str:
    return f"https://{_url_host(host)}:{port}/dir"


def roots_url(host: str, port: int = MANAGEMENT_PORT) -> str:
    return f"https://{_url_host(host)}:{port}/roots/0"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- docker helpers -----------------------------------------------------------------


def _docker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True)


def _container_state(container: str) -> dict | None:
    proc = _docker("container", "inspect", container)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def _logs(container: str, lines: int = 20) -> str:
    proc = _docker("logs", "--tail", str(lines), container)
    return (proc.stdout + proc.stderr).strip()


def _container_networks(state: dict | None) -> dict[str, dict]:
    return ((state or {}).get("NetworkSettings") or {}).get("Networks") or {}


def _published_port(state: dict, port: int) -> int:
    bindings = (state.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in bindings.get(f"{port}/tcp") or []:
        if binding.get("HostIp") == LOOPBACK:
            return int(binding["HostPort"])
    raise AcmeError(f"{state['Name'].lstrip('/')}: port {port} is not published on {LOOPBACK}")


# --- pebble's network -------------------------------------------------------------------


def _network_state(name: str) -> dict | None:
    proc = _docker("network", "inspect", name)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def _host_routes(path: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """This host's IPv4 routes but the default one: pebble's subnet must not shadow any."""
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


def _network_matches(state: dict, layout: AcmeNetwork) -> bool:
    configs = (state.get("IPAM") or {}).get("Config") or []
    return (len(configs) == 1 and bool(state.get("Internal"))
            and configs[0].get("Subnet") == layout.subnet
            and configs[0].get("Gateway") == layout.gateway
            and configs[0].get("IPRange") == layout.ip_range)


def _remove_network(name: str) -> bool:
    """Disconnect every container from network ``name`` and remove it; return whether it was there."""
    state = _network_state(name)
    if state is None:
        return False
    for endpoint in (state.get("Containers") or {}).values():
        _docker("network", "disconnect", "--force", name, endpoint["Name"])
    proc = _docker("network", "rm", name)
    if proc.returncode != 0 and _network_state(name) is not None:
        raise AcmeError(f"docker network rm {name} failed: {proc.stderr.strip()}")
    return True


def _owned_network(container: str) -> dict | None:
    """Pebble's network when it exists and was made for ``container``; AcmeError if another's."""
    name = network_name(container)
    state = _network_state(name)
    if state is not None and (state.get("Labels") or {}).get(NETWORK_LABEL) != container:
        raise AcmeError(f"docker network {name} exists but was not made for {container} "
                        f"(no label {NETWORK_LABEL}={container}): remove it or use another --name")
    return state


def ensure_network(container: str, *, say=lambda line: None) -> AcmeNetwork:
    """Ensure pebble's network ``<container>-net`` exists; return its layout.

    An existing one (made here, see NETWORK_LABEL) keeps its subnet when its layout is
    the expected one. A new one takes the first of ``subnet_candidates`` that neither
    overlaps a route of this host nor makes docker answer "Pool overlaps".
    """
    name = network_name(container)
    state = _owned_network(container)
    if state is not None:
        configs = (state.get("IPAM") or {}).get("Config") or []
        with contextlib.suppress(AcmeError, KeyError, ValueError, IndexError):
            layout = network_layout(name, configs[0]["Subnet"])
            if _network_matches(state, layout):
                return layout
        say(f"Removing docker network {name} (not the expected layout)...")
        _remove_network(name)
    routes = _host_routes()
    skipped: list[str] = []
    for subnet in subnet_candidates(name):
        if any(subnet.overlaps(route) for route in routes):
            skipped.append(f"{subnet} (a host route)")
            continue
        layout = network_layout(name, subnet)
        proc = subprocess.run(network_create_argv(layout, container), text=True, capture_output=True)
        if proc.returncode == 0:
            say(f"Created docker network {name} ({layout.subnet}, pebble at {layout.pebble_ip})")
            return layout
        if "overlap" not in proc.stderr.lower():
            raise AcmeError(f"docker network create {name} --subnet {subnet} failed: {proc.stderr.strip()}")
        skipped.append(f"{subnet} (docker: {proc.stderr.strip()})")
    raise AcmeError(f"no free subnet for {name} in {NETWORK_POOL}; tried: {'; '.join(skipped)}")


def ensure_vps_connected(vps_container: str, network: AcmeNetwork) -> bool:
    """Connect the VPS container to pebble's network unless it is; return whether it changed."""
    if network.name in _container_networks(_container_state(vps_container)):
        return False
    proc = _docker("network", "connect", network.name, vps_container)
    if proc.returncode != 0:
        raise AcmeError(f"docker network connect {network.name} {vps_container} failed: "
                        f"{proc.stderr.strip()}")
    return True


def _inputs_label(info: dict | None) -> str | None:
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    return labels.get(images.INPUTS_LABEL)


def ensure_pebble_image(*, force: bool = False, out: TextIO | None = sys.stdout) -> str:
    """Build ``restobot-local/pebble:2.4`` unless an image with the same inputs exists.

    The rule of ``images.build_images``: the image carries the label
    ``org.restobot.inputs`` = ``images.inputs_key`` (its build context files and its
    parent's image id); a matching label means "up to date". Returns the image ref.

    + force: rebuild even when up to date.
    + out: where progress lines go (None: silent).
    """
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    assert PEBBLE_IMAGE.parent is not None
    images.build_images([PEBBLE_IMAGE.parent], out=out)
    parent_ref = images.current_ref(PEBBLE_IMAGE.parent)
    parent_info = images.inspect_image(parent_ref)
    if parent_info is None:
        raise AcmeError(f"{parent_ref} is missing after build")
    ref = images.image_ref(PEBBLE_IMAGE)
    with _flock(images.CACHE_DIR / "locks" / f"image-{PEBBLE_IMAGE.name}-{PEBBLE_IMAGE.tag}.lock"):
        started = time.monotonic()
        key = images.inputs_key(PEBBLE_IMAGE, parent_info["Id"])
        existing = images.inspect_image(ref)
        if not force and _inputs_label(existing) == key:
            say(f"{ref:40} up to date ({time.monotonic() - started:.1f} s)")
            return ref
        log_dir = images.CACHE_DIR / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{PEBBLE_IMAGE.name}_{PEBBLE_IMAGE.tag}.log"
        say(f"{ref:40} building (log: {log_path.relative_to(images.REPO_ROOT)})")
        context = images.REPO_ROOT / PEBBLE_IMAGE.inputs[0][0]
        argv = [
            "docker", "build",
            "--file", str(context / PEBBLE_IMAGE.dockerfile),
            "--tag", ref,
            "--label", f"{images.INPUTS_LABEL}={key}",
            "--label", f"{images.NAME_LABEL}={PEBBLE_IMAGE.name}",
            "--build-arg", f"BASE_IMAGE={parent_ref}",
            str(context),
        ]
        with log_path.open("w") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            # apt only (plain HTTP): no CA bundle needed; legacy builder as in images.py.
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise AcmeError(f"docker build {ref} failed (exit {proc.returncode}); "
                            f"full log: {log_path}\n{tail}")
        if _inputs_label(images.inspect_image(ref)) != key:
            raise AcmeError(f"{ref}: built, but it does not carry {images.INPUTS_LABEL}={key}")
        say(f"{ref:40} built in {time.monotonic() - started:.1f} s")
        return ref


# --- the CA inside the VPS -------------------------------------------------------------


def ensure_ca_on_vps(vps_container: str, ca_pem: Path, path_on_vps: str = CA_PATH_ON_VPS) -> bool:
    """Ensure ``path_on_vps`` inside the VPS holds ``ca_pem`` (root-owned, mode 0644).

    Copied with ``docker cp`` (a trusted channel, not the deploy). Returns whether it changed.
    """
    wanted = ca_pem.read_bytes()
    current = subprocess.run(["docker", "exec", vps_container, "cat", path_on_vps],
                             capture_output=True)
    if current.returncode == 0 and current.stdout == wanted:
        return False
    if subprocess.run(["docker", "exec", vps_container, "test", "-d", path_on_vps]).returncode == 0:
        # Docker makes a missing bind-mount source a directory: the deploy ran first.
        raise AcmeError(f"{vps_container}:{path_on_vps} is a directory (a deploy mounted it before "
                        "'acme up' ran): stop the stack, remove it, and run 'acme up' before the deploy")
    directory = os.path.dirname(path_on_vps)
    steps = [
        ["docker", "exec", vps_container, "install", "-d", "-m", "0755", directory],
        ["docker", "cp", str(ca_pem), f"{vps_container}:{path_on_vps}"],
        ["docker", "exec", vps_container, "chown", "root:root", path_on_vps],
        ["docker", "exec", vps_container, "chmod", "0644", path_on_vps],
    ]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AcmeError(f"{' '.join(argv[:3])} ... failed: {proc.stderr.strip()}")
    return True


# --- start, stop, status -----------------------------------------------------------------


def state_path(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> Path:
    """Where ``up`` records the LocalAcme of ``container`` (read by ``local_acme_settings``)."""
    return key_dir / f"{container}.json"


def config_dir(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> Path:
    """Host directory mounted read-only into pebble (config, HTTPS certificate and key)."""
    return key_dir / container


def _spec_hash(image_id: str, network: AcmeNetwork | None, config_files: Sequence[Path]) -> str:
    spec = {
        "image": image_id,
        "network": dataclasses.asdict(network) if network else {"publish": LOOPBACK},
        "env": PEBBLE_ENV,
        "files": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in config_files},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _ssl_context(ca_pem: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_pem))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def fetch(url: str, ca_pem: Path, timeout: float = 5.0) -> bytes:
    """GET ``url`` verifying the server against ``ca_pem`` only (pebble's HTTPS listener)."""
    with urllib.request.urlopen(url, timeout=timeout, context=_ssl_context(ca_pem)) as response:
        return response.read()


def _wait_until_serving(acme: LocalAcme, deadline: float) -> float:
    """GET the directory (verified against the local CA) until it answers; return seconds."""
    started = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        state = _container_state(acme.container)
        if state is None or not state["State"]["Running"]:
            raise AcmeError(f"{acme.container} exited; last log lines:\n{_logs(acme.container)}")
        try:
            directory = json.loads(fetch(acme.directory_url, acme.ca_pem_path_on_host, timeout=2))
            if "newOrder" in directory:
                return time.monotonic() - started
            last_error = AcmeError(f"unexpected directory: {directory}")
        except (OSError, ValueError, urllib.error.URLError, ssl.SSLError) as error:
            last_error = error
        time.sleep(0.3)
    raise AcmeError(f"{acme.directory_url} did not answer in time (last error: {last_error!r}); "
                    f"last log lines of {acme.container}:\n{_logs(acme.container)}")


def ensure_acme_running(*, vps_container: str | None = VPS_CONTAINER_NAME,
                        container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                        build: bool = True, timeout: float = 30.0,
                        out: TextIO | None = sys.stdout) -> LocalAcme:
    """Ensure pebble runs for the local stage and answers on its ACME directory.

    A running container with the same spec (image id, network layout, config and
    certificate) and attached to its network at its address is kept; a stopped one
    or one with another spec is replaced. The result is also recorded in
    ``state_path(container)`` for ``local_acme_settings``.

    + vps_container: run pebble on its own network ``<container>-net`` (made here),
      connect this (running) container to that network and copy the CA into it at
      CA_PATH_ON_VPS; None: standalone, ports published on 127.0.0.1.
    + container: pebble's container name.
    + key_dir: where the CA, pebble's certificate and the state file live.
    + build: build the pebble image first when its inputs changed.
    + timeout: seconds to wait for the directory to answer.

    Examples:
        acme = ensure_acme_running()
        settings["acme"].update(acme.settings())
    """
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    deadline = time.monotonic() + timeout
    image_ref = ensure_pebble_image(out=out) if build else images.image_ref(PEBBLE_IMAGE)
    image_info = images.inspect_image(image_ref)
    if image_info is None:
        raise AcmeError(f"{image_ref} is not built: run 'python -m restobot.harness.acme up'")

    if vps_container is not None:
        vps_state = _container_state(vps_container)
        if vps_state is None or not vps_state["State"]["Running"]:
            raise AcmeError(f"the VPS container {vps_container} is not running: "
                            "run 'python -m restobot.harness.vps up' first")

    with _lock(key_dir, "containers"):
        network: AcmeNetwork | None = None
        names = [container, "localhost", LOOPBACK, "::1"]
        if vps_container is not None:
            network = ensure_network(container, say=say)
            names.append(network.pebble_ip)
        elif ((_network_state(network_name(container)) or {}).get("Labels") or {}).get(
                NETWORK_LABEL) == container:
            say(f"Removing docker network {network_name(container)} (pebble now runs standalone)...")
            _docker("rm", "--force", container)
            _remove_network(network_name(container))
        ca = ensure_local_ca(key_dir)
        conf_dir = config_dir(container, key_dir)
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf_dir.chmod(0o700)
        server_cert, server_key = conf_dir / "server.pem", conf_dir / "server-key.pem"
        ensure_server_certificate(ca, names, server_cert, server_key)
        config_path = conf_dir / "pebble-config.json"
        config_text = json.dumps(pebble_config(), indent=2, sort_keys=True) + "\n"
        if not config_path.exists() or config_path.read_text() != config_text:
            _write_public(config_path, config_text.encode())
        spec_hash = _spec_hash(image_info["Id"], network, [config_path, server_cert, server_key])

        ca_on_vps = None
        if vps_container is not None:
            if ensure_ca_on_vps(vps_container, ca.cert_path):
                say(f"Copied the local ACME CA into {vps_container}:{CA_PATH_ON_VPS}")
            ca_on_vps = CA_PATH_ON_VPS

        state = _container_state(container)
        running = bool(state and state["State"]["Running"])
        same_spec = bool(state and (state["Config"]["Labels"] or {}).get(SPEC_LABEL) == spec_hash)
        attached = network is None or (
            _container_networks(state).get(network.name) or {}).get("IPAddress") == network.pebble_ip
        do_remove = state is not None and (not running or not same_spec or not attached)
        do_start = do_remove or state is None
        if do_remove:
            why = ("stopped leftover" if not running else "spec changed" if not same_spec
                   else f"not on {network.name if network else ''} at its address")
            say(f"Removing {container} ({why})...")
            _docker("rm", "--force", container)
        if do_start:
            where = (f"{network.pebble_ip} on {network.name}" if network is not None
                     else f"{LOOPBACK} only")
            say(f"Starting {container} from {image_ref} ({where})...")
            proc = subprocess.run(
                run_argv(container=container, image_ref=image_ref, config_dir=conf_dir,
                         spec_hash=spec_hash, network=network),
                text=True, capture_output=True,
            )
            if proc.returncode != 0:
                raise AcmeError(f"docker run {container} failed: {proc.stderr.strip()}")
            state = _container_state(container)
        else:
            say(f"{container} already running with this spec")
        assert state is not None

        if vps_container is not None:
            assert network is not None
            if ensure_vps_connected(vps_container, network):
                say(f"Connected {vps_container} to {network.name}")
            host = network.pebble_ip
            acme_port, management_port = ACME_PORT, MANAGEMENT_PORT
        else:
            host = LOOPBACK
            acme_port = _published_port(state, ACME_PORT)
            management_port = _published_port(state, MANAGEMENT_PORT)
        acme = LocalAcme(
            directory_url=directory_url(host, acme_port),
            roots_url=roots_url(host, management_port),
            ca_pem_path_on_host=ca.cert_path,
            ca_pem_path_on_vps=ca_on_vps,
            container=container,
            host=host,
            network=network.name if network else None,
            subnet=network.subnet if network else None,
        )
        waited = _wait_until_serving(acme, deadline)
        _write_public(state_path(container, key_dir), acme.to_json().encode())
    say(f"ACME directory answers ({waited:.1f} s): {acme.directory_url}")
    return acme


def ensure_acme_absent(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                       out: TextIO | None = sys.stdout) -> bool:
    """Remove pebble's container, its network (disconnecting the VPS), its certificate
    directory and its state file.

    The local CA stays (Traefik on the VPS may still mount its copy); return
    whether a container was there. A network of that name not made here stays.
    """
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    with _lock(key_dir, "containers"):
        existed = _container_state(container) is not None
        _docker("rm", "--force", container)
        name = network_name(container)
        state = _network_state(name)
        if state is not None and (state.get("Labels") or {}).get(NETWORK_LABEL) == container:
            _remove_network(name)
            say(f"Removed docker network {name}")
        elif state is not None:
            say(f"Left docker network {name} alone (not made for {container})")
        shutil.rmtree(config_dir(container, key_dir), ignore_errors=True)
        state_path(container, key_dir).unlink(missing_ok=True)
    say(f"Removed {container}" if existed else f"{container} is not there")
    return existed


@dataclasses.dataclass(frozen=True)
class AcmeStatus:
    """State of a local ACME server: status "running", "stopped" or "absent"."""

    container: str
    status: str
    acme: LocalAcme | None
    detail: str = ""


def acme_status(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> AcmeStatus:
    """Read-only: is pebble's container running, and what did ``up`` record for it."""
    state = _container_state(container)
    recorded = state_path(container, key_dir)
    acme = LocalAcme.from_json(recorded.read_text()) if recorded.exists() else None
    if state is None:
        return AcmeStatus(container, "absent", acme)
    if not state["State"]["Running"]:
        return AcmeStatus(container, "stopped", acme,
                          f"exit code {state['State']['ExitCode']}; last log lines:\n{_logs(container)}")
    return AcmeStatus(container, "running", acme)


def local_acme_settings(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> dict[str, str]:
    """The ``acme`` settings of the local stage, as the last ``up`` recorded them.

    Returns ``{"directory_url": ..., "ca_certificates_path": ...}`` (no docker call).
    Raises AcmeError when ``up`` has not run for a VPS.
    """
    path = state_path(container, key_dir)
    if not path.exists():
        raise AcmeError(f"no local ACME server recorded in {path}: run "
                        "'python -m restobot.harness.vps up' then 'python -m restobot.harness.acme up'")
    acme = LocalAcme.from_json(path.read_text())
    if acme.ca_pem_path_on_vps is None:
        raise AcmeError(f"{container} runs standalone (not for the VPS): run "
                        "'python -m restobot.harness.acme up' for the local VPS")
    return acme.settings()


def issuing_root(acme: LocalAcme, key_dir: Path = KEY_DIR) -> Path:
    """Pebble's issuing root (PEM), fetched over its HTTPS API and kept beside its record.

    Pebble makes a new root at every start: the copy is refreshed when it no
    longer matches what the running pebble serves.
    """
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(acme.ca_pem_path_on_host))
    with urllib.request.urlopen(acme.roots_url, context=context, timeout=10) as answer:  # noqa: S310 - local pebble
        pem = answer.read()
    path = key_dir / f"{acme.container}-root.pem"
    if not path.exists() or path.read_bytes() != pem:
        path.write_bytes(pem)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m restobot.harness.acme",
        description="Start, stop and describe the local ACME server (pebble) of the local stage.",
    )
    parser.add_argument("--name", default=CONTAINER_NAME, help="pebble's container (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start pebble on its own network, connect the VPS to it "
                                         "(kept if current)")
    up.add_argument("--vps", default=VPS_CONTAINER_NAME, help="VPS container (default %(default)s)")
    commands.add_parser("down", help="remove pebble's container and network (the local CA stays)")
    status = commands.add_parser("status", help="show whether pebble runs and its URLs")
    status.add_argument("--exit-code", action="store_true", help="exit 1 unless it is running")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            acme = ensure_acme_running(vps_container=args.vps, container=args.name)
            print(acme.to_json(), end="")
        elif args.command == "down":
            ensure_acme_absent(container=args.name)
        else:
            current = acme_status(container=args.name)
            print(f"{current.container}: {current.status}")
            if current.detail:
                print(current.detail)
            if current.acme is not None:
                print(current.acme.to_json(), end="")
            if args.exit_code and current.status != "running":
                return 1
    except (AcmeError, images.ImageBuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
