"""The rendered Nginx gateway, served by the real nginx on loopback in front of a recording upstream."""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import http.client
import os
import shutil
import socket
import subprocess
import time

import pytest

from harness.poll import poll
from harness.recorder import start_recorder
from restobot.render import GatewayOptions, RenderContext, render_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def nginx_installed() -> None:
    """A missing nginx fails every test here (never a skip: CI must not go green without them)."""
    if not os.path.exists(NGINX):
        pytest.fail(f"nginx is not installed ({NGINX}): run scripts/setup-host (it installs nginx-light)",
                    pytrace=False)


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


def start_gateway(runtime, upstream_port: int, settings=None, **overrides):
    """Render the gateway (production settings by default), check it with `nginx -t`, serve it on loopback."""
    port = free_port()
    options = GatewayOptions(
        listen=f"127.0.0.1:{port}", upstream=f"127.0.0.1:{upstream_port}", resolver=None,
        runtime_dir=str(runtime), **overrides,
    )
    config = runtime / "nginx.conf"
    config.write_text(render_release(settings or production_settings(), RenderContext(gateway=options))["nginx/nginx.conf"].text)
    check = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([NGINX, "-c", str(config), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    poll(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True, timeout=10,
         interval=0.05, tolerate=(OSError,), what=f"nginx listening on 127.0.0.1:{port}")
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
    assert (seen.path, seen.body, seen.headers["X-Api-Token"]) == ("/webhook/v1/admin/dlq/replay", body, "t0ken")


@pytest.mark.parametrize(
    "path",
    ["/", "/webhook/v1/inbound/whatsapp", "/rest/workflows", "/rest/owner/setup", "/webhook-test/x", "/form/x",
     "/v1/inbound/telegram", "/v1/inbound/whatsapp/extra", "/v1/inbound/whatsapp/", "/v1/admin/dlq",
     "/v1/admin/dlq/replay/x", "/healthz/x", "/metrics"],
)
def test_every_other_path_is_404_and_never_reaches_n8n(gateway, recorder, path):
    recorder.requests.clear()
    response, body = request(gateway, "GET", path)
    assert (response.status, body) == (404, b'{"error":"not_found"}')
    assert recorder.requests == []


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/inbound/whatsapp", "GET, POST"),
    ("PUT", "/v1/inbound/messenger", "GET, POST"),
    ("OPTIONS", "/v1/inbound/instagram", "GET, POST"),
    ("GET", "/v1/admin/dlq/replay", "POST"),
    ("POST", "/healthz", "GET, HEAD"),
])
def test_other_methods_are_refused_with_405(gateway, recorder, method, path, allowed):
    recorder.requests.clear()
    response, body = request(gateway, method, path)
    assert (response.status, response.getheader("Allow"), body) == (405, allowed, b'{"error":"method_not_allowed"}')
    assert recorder.requests == []


@pytest.mark.parametrize(("path", "limit"), [("/v1/inbound/whatsapp", 64 * 1024), ("/v1/admin/dlq/replay", 8 * 1024)])
def test_body_over_the_route_cap_is_refused(gateway, recorder, path, limit):
    recorder.requests.clear()
    signed = {"X-Hub-Signature-256": "sha256=00", "x-api-token": "t"}
    assert request(gateway, "POST", path, b"x" * limit, signed)[0].status == 200
    response, _ = request(gateway, "POST", path, b"x" * (limit + 1), signed)
    assert response.status == 413
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("channel", ["whatsapp", "instagram", "messenger"])
def test_unsigned_post_is_refused_without_reaching_n8n_in_enforce_mode(gateway, recorder, channel):
    recorder.requests.clear()
    response, body = request(gateway, "POST", f"/v1/inbound/{channel}", b"{}", {"Content-Type": "application/json"})
    assert (response.status, body) == (403, b'{"error":"forbidden"}')
    assert recorder.requests == []


@pytest.mark.parametrize("header", ["X-Hub-Signature-256", "x-api-token"])
def test_either_credential_header_passes_the_gate(gateway, recorder, header):
    recorder.requests.clear()
    response, _ = request(gateway, "POST", "/v1/inbound/whatsapp", b"{}", {header: "anything"})
    assert response.status == 200
    assert len(recorder.requests) == 1


def test_unsigned_post_reaches_n8n_when_signatures_are_not_enforced(tmp_path, recorder):
    settings = settings_for_stage("staging", {**generate_secrets(), "META_SIGNATURE_REQUIRED": "warn"})
    port, process = start_gateway(tmp_path, recorder.port, settings=settings)
    recorder.requests.clear()
    try:
        response, _ = request(port, "POST", "/v1/inbound/whatsapp", b"{}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert response.status == 200
    assert len(recorder.requests) == 1


def test_only_allowlisted_headers_reach_n8n(gateway, recorder):
    recorder.requests.clear()
    spoofed = {
        "X-Hub-Signature-256": "sha256=00", "x-restobot-probe": "deploy", "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Forwarded-Host": "evil.example",
        "X-Original-URL": "/rest/owner/setup", "Cookie": "n8n-auth=stolen", "Authorization": "Bearer x",
    }
    assert request(gateway, "POST", "/v1/inbound/whatsapp", b"{}", spoofed)[0].status == 200
    [seen] = recorder.requests
    forwarded = {name.lower(): value for name, value in seen.headers.items()}
    assert set(forwarded) <= {"host", "connection", "content-length", "content-type", "user-agent",
                              "x-hub-signature-256", "x-hub-signature", "x-api-token", "x-real-ip",
                              "x-forwarded-for", "x-forwarded-proto"}
    assert (forwarded["x-real-ip"], forwarded["x-forwarded-for"]) == ("127.0.0.1", "127.0.0.1")


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as written (no client library normalises it); the edge's first answer line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("target", [
    "/v1/admin/dlq/replay%0d%0aX-Injected:%20yes",
    "/v1/admin/dlq/replay%0d%0a%0d%0aPOST%20/rest/owner/setup%20HTTP/1.1",
    "/v1/inbound/whatsapp%0a",
    "/v1%2finbound/whatsapp",
    "/v1/inbound%2Fwhatsapp",
    "/v1/inbound/%77hatsapp",
    "/v1/inbound/../../rest/owner/setup",
    "/v1/inbound/whatsapp/..",
    "/v1/inbound/%2e%2e/%2e%2e/rest/settings",
    "/v1/inbound/whatsapp\\..\\..\\rest",
    "/v1/inbound/whatsapp?hub.challenge=%0d%0aX:y",
    "/v1/inbound/whatsapp?hub.challenge=%00",
    "/v1/inbound/whatsapp?hub.challenge=%7F",
])
def test_hostile_target_is_refused_with_400(gateway, recorder, target):
    recorder.requests.clear()
    status_line = raw_request(gateway, (f"POST {target} HTTP/1.1\r\nHost: api\r\nX-Hub-Signature-256: sha256=0\r\n"
                                        "Content-Length: 2\r\n\r\n{}").encode())
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert recorder.requests == []


def test_upstream_errors_do_not_leak_n8n_pages(gateway, recorder):
    recorder.status = 500
    try:
        response, body = request(gateway, "POST", "/v1/inbound/whatsapp", b"{}", {"X-Hub-Signature-256": "sha256=0"})
    finally:
        recorder.status = 200
    assert (response.status, body) == (503, b'{"error":"unavailable"}')


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/inbound/whatsapp", b"{}"),
    ("GET", "/v1/inbound/messenger?hub.mode=subscribe&hub.verify_token=t&hub.challenge=c", None),
    ("POST", "/v1/admin/dlq/replay", b"{}"),
])
def test_nothing_reaches_n8n_before_its_readiness_says_so(gateway, recorder, method, path, body):
    """n8n answers any request 200 "n8n is starting up" while it migrates at start: the gateway asks
    n8n's readiness first and answers 503 (Meta retries), the request never reaching n8n."""
    recorder.requests.clear()
    recorder.ready = False
    try:
        response, answer = request(gateway, method, path, body, {"X-Hub-Signature-256": "sha256=0"})
    finally:
        recorder.ready = True
    assert (response.status, answer) == (503, b'{"error":"unavailable"}')
    assert recorder.requests == []


def test_the_gateway_asks_n8ns_readiness_once_per_request_to_n8n_and_never_for_its_own_routes(gateway, recorder):
    before = recorder.readiness_checks
    signed = {"X-Hub-Signature-256": "sha256=0"}
    assert request(gateway, "POST", "/v1/inbound/whatsapp", b"{}", signed)[0].status == 200
    assert request(gateway, "POST", "/v1/inbound/instagram", b"{}", signed)[0].status == 200
    assert recorder.readiness_checks - before == 2
    for path in ("/healthz", "/_n8n_ready", "/nope"):
        request(gateway, "GET", path)
    assert recorder.readiness_checks - before == 2


def test_the_readiness_route_is_not_reachable_from_outside(gateway, recorder):
    response, body = request(gateway, "GET", "/_n8n_ready")
    assert (response.status, body) == (404, b'{"error":"not_found"}')


def test_request_rate_limit_answers_429(tmp_path, recorder):
    port, process = start_gateway(tmp_path, recorder.port, rate_per_second=1, burst=2)
    signed = {"X-Hub-Signature-256": "sha256=0"}
    try:
        statuses = [request(port, "POST", "/v1/inbound/whatsapp", b"{}", signed)[0].status for _ in range(6)]
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]


def test_webhook_requests_past_twice_the_worker_concurrency_are_refused_at_once(tmp_path, recorder):
    """n8n slow to answer (its worker or Redis blinking): the gateway lets 2 x n8n.worker_concurrency
    webhook requests wait on it, and refuses the rest with a 503 (Meta retries) without queueing them."""
    settings = settings_for_stage("production", generate_secrets(), n8n={"worker_concurrency": 2})
    port, process = start_gateway(tmp_path, recorder.port, settings, rate_per_second=1000, burst=1000)
    signed = {"X-Hub-Signature-256": "sha256=0"}
    recorder.delay = 3.0
    before = len(recorder.requests)

    def timed_post(_):
        started = time.monotonic()
        response, _ = request(port, "POST", "/v1/inbound/whatsapp", b"{}", signed)
        return response.status, time.monotonic() - started

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(timed_post, range(10)))
    finally:
        recorder.delay = 0.0
        process.terminate()
        process.wait(timeout=10)
    refused = [elapsed for status, elapsed in answers if status == 503]
    assert sorted(status for status, _ in answers) == [200] * 4 + [503] * 6
    assert max(refused) < 2.0, f"refusals waited on the upstream: {refused}"
    assert len(recorder.requests) - before == 4


def test_nul_in_the_path_is_refused_by_nginxs_parser(gateway, recorder):
    recorder.requests.clear()
    status_line = raw_request(gateway, b"GET /v1/inbound/whatsapp%00 HTTP/1.1\r\nHost: api\r\n\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert recorder.requests == []


@pytest.mark.parametrize(("request_bytes", "status", "body"), [
    (b"TRACE /v1/inbound/whatsapp HTTP/1.1\r\nHost: api\r\n\r\n", 405, b'{"error":"method_not_allowed"}'),
    (b"POST /v1/admin/dlq/replay HTTP/1.1\r\nHost: api\r\nx-api-token: t\r\nContent-Length: 9000\r\n\r\n"
     + b"x" * 9000, 413, b'{"error":"too_large"}'),
])
def test_what_nginx_refuses_itself_answers_in_json(gateway, recorder, request_bytes, status, body):
    recorder.requests.clear()
    with socket.create_connection(("127.0.0.1", gateway), timeout=5) as conn:
        conn.sendall(request_bytes)
        answer = conn.recv(65536)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert (int(head.split(b" ")[1]), payload) == (status, body)
    assert recorder.requests == []
