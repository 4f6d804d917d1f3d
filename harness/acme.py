"""A local ACME server for the local stage: Let's Encrypt's pebble, in a container.

Let's Encrypt cannot be reached from the test machines, so the local stage gets
its certificates from pebble through the very same Traefik resolver production
uses; only two settings differ (``acme.directory_url`` and
``acme.ca_certificates_path``, see ``local_acme_settings``).

Placement: pebble runs in ``restobot-local/pebble:2.4`` OUTSIDE the VPS, as
Let's Encrypt does in production, so the VPS reaches it by egress and the VPS's
host firewall (default-deny INPUT, see restobot/operations/provision.py) applies
exactly as it does in production. Pebble is a sidecar of the VPS
(harness/sidecar.py, which holds the network and container steps it
shares with the Meta double): each ACME instance gets its own user-defined,
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

    python -m harness.acme up [--vps NAME] [--name NAME]
    python -m harness.acme down [--name NAME]
    python -m harness.acme status [--name NAME] [--exit-code]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from harness import images, sidecar
from harness import vps as local_vps

CONTAINER_NAME = "restobot-acme-local"
"""Stable name: one local ACME server per local VPS; ``up`` replaces a stale one."""
VPS_CONTAINER_NAME = local_vps.CONTAINER_NAME
"""The local VPS container connected to pebble's network (harness.vps)."""
KEY_DIR = images.REPO_ROOT / ".cache" / "local-acme"
CA_PATH_ON_VPS = "/etc/restobot/acme-ca.pem"
"""Where ``up`` copies the CA certificate inside the VPS (settings.acme.ca_certificates_path)."""
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
CONFIG_DIR_IN_CONTAINER = "/etc/pebble-local"
LOOPBACK = sidecar.LOOPBACK
SPEC_LABEL = "org.restobot.acme-spec"
# pebble's network is a sidecar's network: these lived here first and stay importable from here.
NETWORK_LABEL = sidecar.NETWORK_LABEL
NETWORK_POOL = sidecar.NETWORK_POOL
NETWORK_PREFIX = sidecar.NETWORK_PREFIX
NETWORK_ATTEMPTS = sidecar.NETWORK_ATTEMPTS
AcmeNetwork = sidecar.SidecarNetwork
network_name = sidecar.network_name
subnet_candidates = sidecar.subnet_candidates
network_layout = sidecar.network_layout
network_create_argv = sidecar.network_create_argv
ensure_network = sidecar.ensure_network
ensure_vps_connected = sidecar.ensure_vps_connected
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
    parent="debian:bookworm", inputs=(("harness/dockerfiles/pebble", "."),),
)
"""Built like the images in ``images.LOCAL_IMAGES`` (same inputs-label cache rule)."""

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=30)


class AcmeError(sidecar.SidecarError):
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

# --- the local CA ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaFiles:
    """The local CA: certificate (shareable) and private key (mode 0600)."""

    cert_path: Path
    key_path: Path


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
    with sidecar.locked(key_dir, "ca"):
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
        sidecar.write_private(files.key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        sidecar.write_public(files.cert_path, cert.public_bytes(serialization.Encoding.PEM))
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
        raise AcmeError(f"{ca.cert_path}: no CA certificate; run 'python -m harness.acme up'")
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
    sidecar.write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    sidecar.write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
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
    say = sidecar.say_to(out)
    assert PEBBLE_IMAGE.parent is not None
    images.build_images([PEBBLE_IMAGE.parent], out=out)
    parent_ref = images.current_ref(PEBBLE_IMAGE.parent)
    parent_info = images.inspect_image(parent_ref)
    if parent_info is None:
        raise AcmeError(f"{parent_ref} is missing after build")
    ref = images.image_ref(PEBBLE_IMAGE)
    with sidecar.flocked(images.CACHE_DIR / "locks" / f"image-{PEBBLE_IMAGE.name}-{PEBBLE_IMAGE.tag}.lock"):
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
    wanted = ca_pem.read_text()
    current = sidecar.docker("exec", vps_container, "cat", path_on_vps)
    if current.returncode == 0 and current.stdout == wanted:
        return False
    if sidecar.docker("exec", vps_container, "test", "-d", path_on_vps).returncode == 0:
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
        proc = sidecar.run_docker(argv)
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
    def directory_answers() -> None:
        directory = json.loads(fetch(acme.directory_url, acme.ca_pem_path_on_host, timeout=2))
        if "newOrder" not in directory:
            raise ValueError(f"unexpected directory: {directory}")

    return sidecar.wait_until_serving(acme.container, acme.directory_url, directory_answers, deadline,
                                      retry_on=(OSError, ValueError, urllib.error.URLError, ssl.SSLError),
                                      interval=0.3)


def _ensure_pebble_files(key_dir: Path, container: str, names: Sequence[str]) -> tuple[CaFiles, Path, list[Path]]:
    """The local CA, and pebble's config and HTTPS certificate in ``config_dir``; return
    (the CA, that directory, the files that make pebble's spec)."""
    ca = ensure_local_ca(key_dir)
    conf_dir = config_dir(container, key_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.chmod(0o700)
    server_cert, server_key = conf_dir / "server.pem", conf_dir / "server-key.pem"
    ensure_server_certificate(ca, names, server_cert, server_key)
    config_path = conf_dir / "pebble-config.json"
    config_text = json.dumps(pebble_config(), indent=2, sort_keys=True) + "\n"
    if not config_path.exists() or config_path.read_text() != config_text:
        sidecar.write_public(config_path, config_text.encode())
    return ca, conf_dir, [config_path, server_cert, server_key]


def _run_pebble(argv: list[str], container: str) -> None:
    proc = sidecar.run_docker(argv)
    if proc.returncode != 0:
        raise AcmeError(f"docker run {container} failed: {proc.stderr.strip()}")


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
    say = sidecar.say_to(out)
    deadline = time.monotonic() + timeout
    image_ref = ensure_pebble_image(out=out) if build else images.image_ref(PEBBLE_IMAGE)
    image_info = images.inspect_image(image_ref)
    if image_info is None:
        raise AcmeError(f"{image_ref} is not built: run 'python -m harness.acme up'")
    sidecar.require_vps_running(vps_container)

    with sidecar.locked(key_dir, "containers"):
        network = sidecar.ensure_placement(container, vps_container, say=say)
        names = [container, "localhost", LOOPBACK, "::1"]
        if network is not None:
            names.append(network.pebble_ip)
        ca, conf_dir, spec_files = _ensure_pebble_files(key_dir, container, names)
        spec_hash = sidecar.spec_hash(image_info["Id"], network, spec_files, env=PEBBLE_ENV)

        ca_on_vps = None
        if vps_container is not None:
            if ensure_ca_on_vps(vps_container, ca.cert_path):
                say(f"Copied the local ACME CA into {vps_container}:{CA_PATH_ON_VPS}")
            ca_on_vps = CA_PATH_ON_VPS

        argv = run_argv(container=container, image_ref=image_ref, config_dir=conf_dir,
                        spec_hash=spec_hash, network=network)
        state = sidecar.ensure_started(container, image_ref=image_ref, spec_label=SPEC_LABEL, spec=spec_hash,
                                       network=network, start=lambda: _run_pebble(argv, container), say=say)
        host = sidecar.ensure_reachable(vps_container, network, say=say)
        acme_port, management_port = ACME_PORT, MANAGEMENT_PORT
        if network is None:
            acme_port = sidecar.published_port(state, ACME_PORT)
            management_port = sidecar.published_port(state, MANAGEMENT_PORT)
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
        sidecar.write_public(state_path(container, key_dir), acme.to_json().encode())
    say(f"ACME directory answers ({waited:.1f} s): {acme.directory_url}")
    return acme


def ensure_acme_absent(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR,
                       out: TextIO | None = sys.stdout) -> bool:
    """Remove pebble's container, its network (disconnecting the VPS), its certificate
    directory and its state file.

    The local CA stays (Traefik on the VPS may still mount its copy); return
    whether a container was there. A network of that name not made here stays.
    """
    return sidecar.ensure_sidecar_absent(container, key_dir=key_dir, files_dir=config_dir(container, key_dir),
                                         state_file=state_path(container, key_dir), say=sidecar.say_to(out))


@dataclasses.dataclass(frozen=True)
class AcmeStatus:
    """State of a local ACME server: status "running", "stopped" or "absent"."""

    container: str
    status: str
    acme: LocalAcme | None
    detail: str = ""


def acme_status(*, container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> AcmeStatus:
    """Read-only: is pebble's container running, and what did ``up`` record for it."""
    status, detail = sidecar.container_status(container)
    return AcmeStatus(container, status, sidecar.read_record(state_path(container, key_dir), LocalAcme.from_json),
                      detail)


def local_acme_settings(container: str = CONTAINER_NAME, key_dir: Path = KEY_DIR) -> dict[str, str]:
    """The ``acme`` settings of the local stage, as the last ``up`` recorded them.

    Returns ``{"directory_url": ..., "ca_certificates_path": ...}`` (no docker call).
    Raises AcmeError when ``up`` has not run for a VPS.
    """
    path = state_path(container, key_dir)
    if not path.exists():
        raise AcmeError(f"no local ACME server recorded in {path}: run "
                        "'python -m harness.vps up' then 'python -m harness.acme up'")
    acme = LocalAcme.from_json(path.read_text())
    if acme.ca_pem_path_on_vps is None:
        raise AcmeError(f"{container} runs standalone (not for the VPS): run "
                        "'python -m harness.acme up' for the local VPS")
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
        prog="python -m harness.acme",
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
            return sidecar.print_status(current.container, current.status, current.detail,
                                        current.acme.to_json() if current.acme else None, exit_code=args.exit_code)
    except (sidecar.SidecarError, images.ImageBuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
