"""The local stage's Meta double: Graph API send endpoints, alert sink, control API on 127.0.0.1.

Standalone first (both ports published on 127.0.0.1: requests are sent from this
machine), then for a throwaway VPS: the double on its own network, outside the
VPS, reached from inside the VPS at its fixed address, its control API not.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness import images, meta_double, sidecar
from harness.sidecar import network_layout
from harness.meta_double_server import graph_route
from harness.stage import local_stage_tree

pytestmark = pytest.mark.integration

TOKEN = "EAAG-local-test-token"


def require_docker() -> None:
    """Fail (never skip) when docker cannot be used, naming the command that fixes it."""
    if (problem := sidecar.docker_unavailable()) is not None:
        pytest.fail(problem, pytrace=False)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def inspect(name: str) -> dict:
    return json.loads(subprocess.run(["docker", "container", "inspect", name],
                                     capture_output=True, text=True, check=True).stdout)[0]


# --------------------------------------------------------------------------- pure builders

LAYOUT = network_layout("meta-net", "10.213.9.16/28")


def test_create_argv_on_its_network_publishes_only_the_control_port_on_loopback():
    argv = meta_double.create_argv(container="meta", image_ref="restobot-local/python:3-trixie",
                                   server_dir=Path("/srv/x"), spec_hash="abc", network=LAYOUT)

    assert argv == [
        "docker", "create", "--name", "meta", "--label", "org.restobot.meta-spec=abc",
        "--network", "bridge", "--publish", "127.0.0.1::8081",
        "--volume", "/srv/x:/srv/meta-double:ro", "--env", "PYTHONUNBUFFERED=1",
        "restobot-local/python:3-trixie", "python3", "/srv/meta-double/meta_double_server.py",
        "--graph-port", "8080", "--control-port", "8081", "--graph-address", "10.213.9.18",
    ]
    assert meta_double.connect_argv(LAYOUT, "meta") == [
        "docker", "network", "connect", "--ip", "10.213.9.18", "meta-net", "meta"]


def test_create_argv_standalone_publishes_both_ports_on_loopback_only():
    argv = meta_double.create_argv(container="meta", image_ref="img", server_dir=Path("/srv/x"),
                                   spec_hash="abc", network=None)

    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--publish"] == ["127.0.0.1::8080", "127.0.0.1::8081"]
    assert argv[-2:] == ["--graph-address", "0.0.0.0"]


@pytest.mark.parametrize("path, route", [
    ("/v21.0/100000000000099/messages", "send"),
    ("/v21.0/1122334455/messages", "send"),
    ("/v21.0/me/messages", "send"),
    ("/me/messages", "send"),
    ("/me/messages?access_token=x", "send"),
    ("/alerts", "alert"),
    ("/_control/reset", None),
    ("/v21.0/100000000000099", None),
])
def test_graph_listener_routes(path, route):
    assert graph_route(path) == route


def test_stage_tree_points_meta_and_alerts_at_the_double():
    double = meta_double.LocalMetaDouble("http://10.213.9.18:8080", "http://10.213.9.18:8080/alerts",
                                         "http://127.0.0.1:5000/_control", "meta", "10.213.9.18")

    tree = local_stage_tree(meta=double.settings())

    assert tree["meta"]["graph_api_base_url"] == "http://10.213.9.18:8080"
    assert tree["pipeline"]["alert_webhook_url"] == "http://10.213.9.18:8080/alerts"


def test_stage_tree_without_a_double_is_unchanged():
    assert "pipeline" not in local_stage_tree()
    assert local_stage_tree()["meta"]["graph_api_base_url"] == "http://127.0.0.1:9"


# --------------------------------------------------------------------------- standalone


@pytest.fixture(scope="module")
def standalone():
    require_docker()
    name = f"restobot-meta-test-{uuid.uuid4().hex[:8]}"
    try:
        yield meta_double.ensure_meta_double_running(vps_container=None, container=name, out=None)
    finally:
        meta_double.ensure_meta_double_absent(container=name, out=None)


@pytest.fixture
def double(standalone):
    standalone.reset()
    return standalone


def whatsapp_reply(to: str = "33612345678") -> dict:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
            "type": "text", "text": {"body": "Bonjour ! Nous sommes ouverts de 12h à 14h30."}}


def test_standalone_urls_are_on_loopback(standalone):
    assert standalone.graph_api_base_url.startswith("http://127.0.0.1:")
    assert standalone.alert_webhook_url == f"{standalone.graph_api_base_url}/alerts"
    assert standalone.control_url.startswith("http://127.0.0.1:") and standalone.control_url.endswith("/_control")


def test_whatsapp_send_is_answered_like_meta(double):
    status, body = post(f"{double.graph_api_base_url}/v21.0/100000000000099/messages", whatsapp_reply())

    assert status == 200
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "33612345678", "wa_id": "33612345678"}]
    assert body["messages"][0]["id"].startswith("wamid.")


def test_whatsapp_send_is_recorded_with_its_token_and_body(double):
    post(f"{double.graph_api_base_url}/v21.0/100000000000099/messages", whatsapp_reply())

    [recorded] = double.requests()

    assert recorded["path"] == "/v21.0/100000000000099/messages"
    assert recorded["authorization"] == f"Bearer {TOKEN}"
    assert recorded["body"] == whatsapp_reply()
    assert recorded["status"] == 200


@pytest.mark.parametrize("path", ["/v21.0/me/messages", "/v21.0/1122334455/messages"])
def test_messenger_send_is_answered_like_meta(double, path):
    status, body = post(f"{double.graph_api_base_url}{path}",
                        {"recipient": {"id": "6543210987654321"}, "message": {"text": "Bonjour"}})

    assert status == 200
    assert body["recipient_id"] == "6543210987654321"
    assert body["message_id"].startswith("m_")


def test_scripted_429_answers_with_graphs_error_body(double):
    double.script({"status": 429, "code": 130429})

    status, body = post(f"{double.graph_api_base_url}/v21.0/100000000000099/messages", whatsapp_reply())

    assert status == 429
    assert body["error"]["code"] == 130429
    assert body["error"]["type"] == "OAuthException"
    assert {"message", "fbtrace_id"} <= body["error"].keys()
    assert double.requests()[-1]["status"] == 429


def test_scripted_answers_are_used_once_in_order(double):
    double.script({"status": 500, "code": 2}, {"status": 400, "code": 131047})
    url = f"{double.graph_api_base_url}/v21.0/100000000000099/messages"

    statuses = [post(url, whatsapp_reply())[0] for _ in range(3)]

    assert statuses == [500, 400, 200]


def test_alert_sink_answers_200_and_records(double):
    status, _ = post(double.alert_webhook_url, {"text": "DLQ above threshold"})

    assert status == 200
    assert double.requests()[-1]["path"] == "/alerts"
    assert double.requests()[-1]["body"] == {"text": "DLQ above threshold"}


def test_graph_port_does_not_serve_the_control_api(double):
    status, body = post(f"{double.graph_api_base_url}/_control/reset", {})

    assert status == 400 and body["error"]["code"] == 2500


def test_unknown_graph_path_is_refused_and_not_recorded(double):
    status, _ = post(f"{double.graph_api_base_url}/v21.0/100000000000099", {"x": 1})
    # Sentinel: a later request through the same listener is recorded, and alone.
    post(double.alert_webhook_url, {"text": "after the refused one"})

    assert status == 400
    assert [r["path"] for r in double.requests()] == ["/alerts"]


def test_reset_forgets_requests(double):
    post(double.alert_webhook_url, {"text": "x"})

    double.reset()

    assert double.requests() == []


def test_ports_are_published_on_loopback_only(standalone):
    ports = inspect(standalone.container)["NetworkSettings"]["Ports"]

    assert {binding["HostIp"] for bindings in ports.values() for binding in bindings or []} == {"127.0.0.1"}


def test_up_again_keeps_the_container(standalone):
    before = inspect(standalone.container)["Id"]

    again = meta_double.ensure_meta_double_running(vps_container=None, container=standalone.container, out=None)

    assert again == standalone
    assert inspect(standalone.container)["Id"] == before


def test_state_file_records_the_double(standalone):
    assert meta_double.recorded_double(standalone.container) == standalone


def test_cli_requests_prints_the_recorded_requests(double):
    post(double.alert_webhook_url, {"text": "from the cli test"})

    proc = subprocess.run([".venv/bin/python", "-m", "harness.meta_double", "--name", double.container,
                           "requests"], check=False, capture_output=True, text=True, cwd=images.REPO_ROOT, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[-1]["body"] == {"text": "from the cli test"}


# --------------------------------------------------------------------------- for a VPS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vps_with_double(tmp_path_factory):
    """A throwaway VPS container and a Meta double for it (unique names), removed afterwards."""
    require_docker()
    from harness import vps

    if images.inspect_image(vps_ref := images.current_ref(vps.VPS_IMAGE)) is None:
        pytest.fail(f"{vps_ref} is not built: run 'python -m harness.images build {vps.VPS_IMAGE}'", pytrace=False)
    suffix = uuid.uuid4().hex[:8]
    vps_name, meta_name = f"restobot-vps-metatest-{suffix}", f"restobot-meta-metatest-{suffix}"
    ports = vps.VpsPorts(ssh=free_port(), http=free_port(), https=free_port())
    try:
        vps.ensure_vps_running(container=vps_name, ports=ports, build=False, out=None,
                               bundle_dir=tmp_path_factory.mktemp("bundles"))
        try:
            yield vps_name, meta_double.ensure_meta_double_running(vps_container=vps_name, container=meta_name,
                                                                   out=None)
        finally:
            meta_double.ensure_meta_double_absent(container=meta_name, out=None)
    finally:
        vps.ensure_vps_absent(container=vps_name, out=None)


def in_vps(vps_name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", vps_name, *argv], check=False, capture_output=True, text=True, timeout=60)


def test_double_runs_outside_the_vps_at_its_fixed_address(vps_with_double):
    vps_name, double = vps_with_double
    state = inspect(double.container)
    address = state["NetworkSettings"]["Networks"][double.network]["IPAddress"]

    assert double.host == address
    assert ipaddress.ip_address(address) in ipaddress.ip_network(double.subnet)
    assert double.graph_api_base_url == f"http://{address}:8080"
    assert double.network in inspect(vps_name)["NetworkSettings"]["Networks"]


def test_only_the_control_port_is_published_on_loopback(vps_with_double):
    _, double = vps_with_double
    ports = inspect(double.container)["NetworkSettings"]["Ports"]

    assert {port: [b["HostIp"] for b in bindings or []] for port, bindings in ports.items()} == {
        "8081/tcp": ["127.0.0.1"]}


def test_vps_sends_to_the_graph_api_double(vps_with_double):
    vps_name, double = vps_with_double
    double.reset()

    proc = in_vps(vps_name, "curl", "-sS", "--max-time", "5", "-H", "Content-Type: application/json",
                  "-d", json.dumps(whatsapp_reply()), f"{double.graph_api_base_url}/v21.0/100000000000099/messages")

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["messages"][0]["id"].startswith("wamid.")
    assert [r["path"] for r in double.requests()] == ["/v21.0/100000000000099/messages"]


def test_vps_cannot_drive_the_control_api(vps_with_double):
    vps_name, double = vps_with_double

    proc = in_vps(vps_name, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                  "-X", "POST", "-d", "{}", f"http://{double.host}:8081/_control/reset")

    assert proc.stdout == "403", (proc.stdout, proc.stderr)
