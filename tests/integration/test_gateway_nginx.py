"""The rendered Nginx gateway, served by the real nginx on loopback in front of a recording upstream."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import shutil
import socket
import subprocess
import time

import pytest

from restobot.render import GatewayOptions, RenderContext, render_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage
from tests.doubles.recorder import start_recorder

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is installed by scripts/setup-host"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def recorder():
    upstream = start_recorder()
    yield upstream
    upstream.close()


def production_settings():
    return settings_for_stage("production", generate_secrets())


def start_gateway(runtime, upstream_port: int, **overrides):
    """Render the gateway for production settings, check it with `nginx -t`, serve it on loopback."""
    port = free_port()
    options = GatewayOptions(
        listen=f"127.0.0.1:{port}", upstream=f"127.0.0.1:{upstream_port}", resolver=None,
        runtime_dir=str(runtime), **overrides,
    )
    config = runtime / "nginx.conf"
    config.write_text(render_release(production_settings(), RenderContext(gateway=options))["nginx/nginx.conf"].text)
    check = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([NGINX, "-c", str(config), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return port, process


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, recorder):
    port, process = start_gateway(tmp_path_factory.mktemp("nginx"), recorder.port, rate_per_second=1000, burst=1000)
    yield port
    process.terminate()
    process.wait(timeout=10)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response, payload


def test_rendered_config_passes_nginx_t(gateway):
    assert gateway  # the fixture ran `nginx -t` on the rendered file and asserted success


def test_healthz_answers_ok(gateway):
    response, body = request(gateway, "GET", "/healthz")
    assert (response.status, body) == (200, b"ok")


def test_no_server_version_is_disclosed(gateway):
    response, _ = request(gateway, "GET", "/healthz")
    assert response.getheader("Server") == "nginx"


@pytest.mark.parametrize("channel", ["whatsapp", "instagram", "messenger"])
def test_verify_get_reaches_the_channel_webhook_with_its_query(gateway, recorder, channel):
    recorder.requests.clear()
    query = "hub.mode=subscribe&hub.verify_token=tok&hub.challenge=test123"
    response, _ = request(gateway, "GET", f"/v1/inbound/{channel}?{query}")
    assert response.status == 200
    [seen] = recorder.requests
    assert (seen.method, seen.path) == ("GET", f"/webhook/v1/inbound/{channel}?{query}")


@pytest.mark.parametrize("channel", ["whatsapp", "instagram", "messenger"])
def test_signed_post_reaches_n8n_byte_for_byte(gateway, recorder, channel):
    recorder.requests.clear()
    # Deliberately odd spacing and unicode: re-serialised JSON would not match the signature.
    body = '{"object":"page",  "entry":[{"id":"1","text":"caf\\u00e9 \u00e9"}]}'.encode()
    signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature, "X-Hub-Signature": "sha1=abc"}
    response, _ = request(gateway, "POST", f"/v1/inbound/{channel}", body, headers)
    assert response.status == 200
    [seen] = recorder.requests
    assert seen.path == f"/webhook/v1/inbound/{channel}"
    assert seen.body == body
    assert seen.headers["X-Hub-Signature-256"] == signature
    assert seen.headers["X-Hub-Signature"] == "sha1=abc"


def test_admin_api_is_proxied(gateway, recorder):
    recorder.requests.clear()
    body = b'{"dry_run": true, "max_messages": 10}'
    response, _ = request(gateway, "POST", "/v1/admin/dlq/replay", body, {"x-api-token": "t0ken"})
    assert response.status == 200
    [seen] = recorder.requests
    assert (seen.path, seen.body, seen.headers["x-api-token"]) == ("/webhook/v1/admin/dlq/replay", body, "t0ken")


@pytest.mark.parametrize(
    "path",
    ["/", "/webhook/v1/inbound/whatsapp", "/rest/workflows", "/v1/inbound/telegram", "/v1/inbound/whatsapp/extra", "/healthz/x"],
)
def test_every_other_path_is_404_and_never_reaches_n8n(gateway, recorder, path):
    recorder.requests.clear()
    response, body = request(gateway, "GET", path)
    assert (response.status, body) == (404, b'{"error":"not_found"}')
    assert recorder.requests == []


def test_other_methods_are_refused_on_inbound(gateway, recorder):
    recorder.requests.clear()
    response, _ = request(gateway, "DELETE", "/v1/inbound/whatsapp")
    assert response.status == 403
    assert recorder.requests == []


def test_body_over_the_limit_is_refused(gateway, recorder):
    recorder.requests.clear()
    response, _ = request(gateway, "POST", "/v1/inbound/whatsapp", b"x" * (1024 * 1024 + 1))
    assert response.status == 413
    assert recorder.requests == []


def test_upstream_errors_do_not_leak_n8n_pages(gateway, recorder):
    recorder.status = 500
    try:
        response, body = request(gateway, "POST", "/v1/inbound/whatsapp", b"{}")
    finally:
        recorder.status = 200
    assert (response.status, body) == (503, b'{"error":"unavailable"}')


def test_request_rate_limit_answers_429(tmp_path, recorder):
    port, process = start_gateway(tmp_path, recorder.port, rate_per_second=1, burst=2)
    try:
        statuses = [request(port, "POST", "/v1/inbound/whatsapp", b"{}")[0].status for _ in range(6)]
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
