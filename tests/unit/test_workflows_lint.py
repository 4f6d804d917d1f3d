"""Every workflow JSON of workflows/: node types and versions that exist in the
pinned n8n, connections between existing nodes, webhook paths that the gateway
routes, stable ids, and no credential or secret inside."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from restobot.remote import workflows
from restobot.versions import N8N_VERSION

REPO = Path(__file__).resolve().parents[2]
N8N_IMAGE = f"restobot-local/n8n:{N8N_VERSION}"
BUILD_COMMAND = "python -m harness.images build"
N8N_DIR_IN_IMAGE = "/usr/local/lib/node_modules/n8n"
# What the lint needs from the image, read without starting n8n: path in the image -> cached name.
IMAGE_FILES = {
    f"{N8N_DIR_IN_IMAGE}/package.json": "n8n-package.json",
    f"{N8N_DIR_IN_IMAGE}/node_modules/n8n-nodes-base/package.json": "nodes-base-package.json",
    f"{N8N_DIR_IN_IMAGE}/node_modules/n8n-nodes-base/dist/types/nodes.json": "nodes.json",
}
NODES_CACHE = REPO / ".cache/n8n-nodes"
FILES = sorted((REPO / "workflows").glob("*.json"))
GATEWAY_ROUTES = {
    ("GET", "v1/inbound/whatsapp"), ("GET", "v1/inbound/instagram"), ("GET", "v1/inbound/messenger"),
    ("POST", "v1/inbound/whatsapp"), ("POST", "v1/inbound/instagram"), ("POST", "v1/inbound/messenger"),
    ("POST", "v1/admin/dlq/replay"),
}
RUNBOOK_NAMES = {"W0_META_VERIFY_UNIFIED", "W1_IN_WA", "W1_IN_IG", "W1_IN_MSG", "W8_DLQ_HANDLER"}
SECRET_PATTERNS = [
    re.compile(r"EAA[A-Za-z0-9]{20,}"),            # Meta access tokens
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._-]{16,}"),
    re.compile(r"(?i)(password|secret|token|api[_-]?key)\"\s*:\s*\"[^\"{=][^\"]{5,}\""),
    re.compile(r"sha256=[0-9a-f]{64}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"postgres(ql)?://[^\s\"]*:[^\s\"]*@"),
]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def image_id(image: str = N8N_IMAGE) -> str:
    """The local image's id; FAILS (never skips) when docker or the image is missing."""
    try:
        result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                                check=False, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail(f"docker is not installed: the lint reads the node list out of {image}")
    if result.returncode != 0:
        pytest.fail(f"{image} is not built ({result.stderr.strip()[-300:]}): run {BUILD_COMMAND}")
    return result.stdout.strip()


def nodes_files(image: str = N8N_IMAGE) -> Path:
    """The image's n8n and n8n-nodes-base package files, copied once into .cache/ per image id."""
    cached = NODES_CACHE / image_id(image).removeprefix("sha256:")[:24]
    if all((cached / name).is_file() for name in IMAGE_FILES.values()):
        return cached
    NODES_CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=NODES_CACHE))
    container = subprocess.run(["docker", "create", image], check=False, capture_output=True, text=True, timeout=60)
    assert container.returncode == 0, f"docker create {image}: {container.stderr[-500:]}"
    container_id = container.stdout.strip()
    try:
        for source, name in IMAGE_FILES.items():
            copied = subprocess.run(["docker", "cp", f"{container_id}:{source}", str(staging / name)],
                                    check=False, capture_output=True, text=True, timeout=120)
            assert copied.returncode == 0, f"docker cp {image}:{source}: {copied.stderr[-500:]}"
    finally:
        subprocess.run(["docker", "rm", container_id], check=False, capture_output=True, timeout=60)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(cached)
    except OSError:  # another run cached it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return cached


@pytest.fixture(scope="module")
def known_nodes() -> dict[str, set[float]]:
    """name -> typeVersions, from n8n-nodes-base inside the locally built n8n image."""
    files = nodes_files()
    n8n_version = json.loads((files / "n8n-package.json").read_text())["version"]
    assert n8n_version == N8N_VERSION, f"{N8N_IMAGE} holds n8n {n8n_version}, pinned {N8N_VERSION}"
    known: dict[str, set[float]] = {}
    for node in json.loads((files / "nodes.json").read_text()):
        versions = node["version"] if isinstance(node["version"], list) else [node["version"]]
        known.setdefault("n8n-nodes-base." + node["name"], set()).update(float(v) for v in versions)
    declared = json.loads((files / "nodes-base-package.json").read_text())["n8n"]["nodes"]
    assert len(declared) > 100
    return known


def test_there_are_workflows():
    assert {load(p)["name"] for p in FILES} >= RUNBOOK_NAMES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_is_named_after_the_workflow(path):
    assert path.stem == load(path)["name"]


def test_ids_and_names_are_unique_and_stable():
    loaded = workflows.load_workflows(REPO / "workflows")  # raises on missing/duplicate ids
    assert len({wf.id for wf in loaded}) == len(FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_node_types_exist_in_the_pinned_n8n(path, known_nodes):
    for node in load(path)["nodes"]:
        assert node["type"] in known_nodes, f"{path.name}: node '{node['name']}' has unknown type {node['type']}"
        assert float(node["typeVersion"]) in known_nodes[node["type"]], (
            f"{path.name}: node '{node['name']}' {node['type']} v{node['typeVersion']} not in "
            f"{sorted(known_nodes[node['type']])}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_node_names_and_ids_are_unique(path):
    nodes = load(path)["nodes"]
    assert len({n["name"] for n in nodes}) == len(nodes)
    assert len({n["id"] for n in nodes}) == len(nodes)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_connections_point_at_existing_nodes(path):
    data = load(path)
    names = {n["name"] for n in data["nodes"]}
    for source, outputs in data["connections"].items():
        assert source in names, f"{path.name}: connection from unknown node '{source}'"
        for branch in outputs["main"]:
            for link in branch:
                assert link["node"] in names, f"{path.name}: '{source}' -> unknown node '{link['node']}'"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_node_but_triggers_is_reached(path):
    data = load(path)
    targets = {link["node"] for outs in data["connections"].values() for br in outs["main"] for link in br}
    for node in data["nodes"]:
        if not re.search(r"(webhook|Trigger)$", node["type"]):
            assert node["name"] in targets, f"{path.name}: node '{node['name']}' is never reached"


def test_webhook_paths_are_exactly_the_gateway_routes():
    found = set()
    for path in FILES:
        for node in load(path)["nodes"]:
            if node["type"] == "n8n-nodes-base.webhook":
                found.add((node["parameters"]["httpMethod"], node["parameters"]["path"]))
                assert node["parameters"]["responseMode"] == "responseNode"
                assert node.get("webhookId"), f"{path.name}: webhook '{node['name']}' needs a stable webhookId"
    assert found == GATEWAY_ROUTES
    assert set(workflows.WEBHOOK_ROUTES) == GATEWAY_ROUTES


ANSWER_HEADER = "X-Restobot-Answer"


def respond_nodes(path: Path) -> list[dict]:
    return [node for node in load(path)["nodes"] if node["type"] == "n8n-nodes-base.respondToWebhook"]


@pytest.mark.parametrize("path", [p for p in FILES if respond_nodes(p)], ids=lambda p: p.name)
def test_every_answer_to_a_webhook_carries_the_answer_header(path):
    """n8n main's gate (docker/n8n/drain-hooks.js) refuses with 503 a 2xx that lacks it: n8n's own fallback
    200s (an execution whose answer never reached main) must not reach Meta. A Respond node without it
    would have its every 2xx refused."""
    for node in respond_nodes(path):
        entries = node["parameters"]["options"]["responseHeaders"]["entries"]
        assert {entry["name"]: entry["value"] for entry in entries}.get(ANSWER_HEADER) == "workflow", node["name"]


def test_the_gate_checks_the_header_the_workflows_set():
    hooks = (REPO / "docker/n8n/drain-hooks.js").read_text()
    assert f"const ANSWER_HEADER = '{ANSWER_HEADER.lower()}';" in hooks


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_secret_inside(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: secret-looking value matching {pattern.pattern}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_credentials_are_only_the_data_free_stubs(path):
    stubs = {(c["type"], c["id"], c["name"]) for c in workflows.CREDENTIAL_STUBS}
    for node in load(path)["nodes"]:
        for kind, ref in (node.get("credentials") or {}).items():
            assert set(ref) == {"id", "name"}, f"{path.name}: '{node['name']}' credential carries data"
            assert (kind, ref["id"], ref["name"]) in stubs
    assert all(stub["data"] == {} for stub in workflows.CREDENTIAL_STUBS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_settings_come_from_the_declared_environment(path):
    used = set(re.findall(r"\$env(?:\.|\[')([A-Z0-9_]+)", path.read_text()))
    assert used <= set(workflows.WORKFLOW_ENV_VARS), used - set(workflows.WORKFLOW_ENV_VARS)


def test_the_three_inbound_workflows_share_their_logic():
    def logic(name):
        nodes = load(REPO / "workflows" / f"{name}.json")["nodes"]
        return {n["name"]: n["parameters"] for n in nodes if n["type"] != "n8n-nodes-base.webhook"}
    assert logic("W1_IN_WA") == logic("W1_IN_IG") == logic("W1_IN_MSG")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_sub_workflows_called_are_active(path):
    by_id = {load(p)["id"]: load(p) for p in FILES}
    for node in load(path)["nodes"]:
        if node["type"] == "n8n-nodes-base.executeWorkflow":
            callee = by_id[node["parameters"]["workflowId"]["value"]]
            assert callee["active"], f"{path.name} calls {callee['name']}, which n8n runs only when published"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_has_a_description(path):
    assert len(load(path)["meta"]["restobot"]["description"]) > 40
