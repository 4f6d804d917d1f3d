"""A real Resto Bot stack on this machine's docker engine, for the workflow tests.

PostgreSQL 17 (schema from the project's migration runner), Redis, n8n main +
worker in queue mode, the rendered Nginx gateway and the Graph API double, on
a docker network created here, with unique names, removed on close. Only the
gateway, PostgreSQL and the double's control port are published, on 127.0.0.1
(n8n main's 5678 too with ``publish_main``).

Configuration goes through the real render path: a local-stage settings tree
(harness.stage.local_stage_tree plus this stack's knobs) is rendered
by ``render_release``; n8n main and worker get the rendered ``env/n8n.env``,
PostgreSQL the rendered ``env/postgres.env``, the gateway the rendered
``nginx/nginx.conf``. The containers carry the service names of compose.yml
as network aliases (postgres, redis, n8n-main, nginx), so no value is
rewritten; the Graph API double answers as ``graph`` and the settings point
``meta.graph_api_base_url`` and ``pipeline.alert_webhook_url`` at it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml

from harness.stage import local_stage_tree
from restobot.remote import workflows
from restobot.render import (
    GatewayOptions,
    RenderContext,
    RenderedFile,
    render_release,
    write_release,
)
from restobot.secrets import generate_secrets
from restobot.settings import Settings, load_settings, read_env_file
from restobot.versions import N8N_VERSION

REPO = Path(__file__).resolve().parents[1]
N8N_IMAGE = f"restobot-local/n8n:{N8N_VERSION}"
IMAGES = {
    "postgres": "restobot-local/postgres:17",
    "redis": "restobot-local/redis:8",
    "n8n": N8N_IMAGE,
    "nginx": "restobot-local/nginx:1.26",
    "python": "restobot-local/python:3-trixie",
}


def missing_images() -> list[str]:
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return ["docker engine not answering"]
    present = set(out.stdout.split())
    return [image for image in IMAGES.values() if image not in present]


def docker(*args: str, check: bool = True, input: bytes | None = None) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, input=input, timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:4])}: {result.stderr.decode(errors='replace')[-1500:]}")
    return result.stdout.decode(errors="replace")


def published_port(container: str, port: int) -> int:
    return int(docker("port", container, f"{port}/tcp").split(":")[-1].split()[0])


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict  # names lower-cased

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 20.0) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, answer.read(), {k.lower(): v for k, v in answer.headers.items()})
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), {k.lower(): v for k, v in error.headers.items()})


# Test values placed in the settings tree (what the tests assert on in replies and Graph calls).
TEST_META = {"wa_phone_number_id": "109876543210", "ig_account_id": "17841400000000000",
             "msg_page_id": "1122334455", "graph_api_base_url": "http://graph:8000", "graph_api_version": "v21.0"}
TEST_RESTAURANT = {"name": "Chez Test", "address": "1 rue de la Paix, Paris", "hours": "mar-dim 12h-14h30, 19h-22h30",
                   "menu_url": "https://chez-test.example/menu", "default_locale": "fr", "timezone": "Europe/Paris"}
# Set in the tree, so dropped from the generated environment (the environment would win over the tree).
TREE_OVER_ENV = ("META_SIGNATURE_REQUIRED", "WA_PHONE_NUMBER_ID")


def test_secrets() -> dict[str, str]:
    return {k: v for k, v in generate_secrets(legacy_shared_token=True).items() if k not in TREE_OVER_ENV}


test_secrets.__test__ = False  # a helper, not a pytest test


@dataclass
class Stack:
    """The knobs below go into the local stage's settings tree; n8n main and worker get the env
    file that ``render_release`` renders from it (templates/env/n8n.env.j2), as in production."""

    signature_mode: str = "enforce"
    rate_limit: int = 5
    max_retries: int = 2
    retry_base_seconds: int = 1
    dlq_threshold: int = 2
    on_uncertain_send: str = "resend"
    # A worker killed mid-send costs a test this long; PostgreSQL gone 40 s mid-record needs about 65 s
    # (n8n takes some 20 s to reach it again once it is back).
    lease_seconds: int = 90
    prefix: str = field(default_factory=lambda: f"rbwf-{uuid.uuid4().hex[:8]}")
    environ: dict[str, str] = field(default_factory=test_secrets)  # secrets, fixed for the stack's life
    publish_main: bool = False  # n8n main's 5678 on 127.0.0.1 (benchmark, test-only webhooks)
    workdir: Path | None = None
    started: list[str] = field(default_factory=list)
    _db_url: str | None = field(default=None, repr=False)

    # --- names
    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def network(self) -> str:
        return self.prefix

    @property
    def target(self) -> workflows.ContainerTarget:
        return workflows.ContainerTarget({"n8n-main": self.name("main")})

    # --- settings and the rendered release files
    def settings(self) -> Settings:
        """The local stage's settings with this stack's knobs (Graph API and alerts go to the double)."""
        tree = local_stage_tree()
        tree["meta"] = {**tree.get("meta", {}), **TEST_META, "signature_required": self.signature_mode}
        tree["restaurant"] = dict(TEST_RESTAURANT)
        tree["pipeline"] = {
            "rate_limit_per_30s": self.rate_limit, "dlq_alert_threshold": self.dlq_threshold,
            "alert_webhook_url": "http://graph:8000/alert", "outbound_max_retries": self.max_retries,
            "outbound_retry_base_seconds": self.retry_base_seconds, "replay_check_enabled": True,
            "on_uncertain_send": self.on_uncertain_send,
            "outbound_lease_seconds": self.lease_seconds,
        }
        return load_settings(tree, self.environ)

    def render(self) -> dict[str, RenderedFile]:
        context = RenderContext(release=self.prefix, gateway=GatewayOptions(rate_per_second=2000, burst=4000))
        return render_release(self.settings(), context)

    def release_dir(self) -> Path:
        """Render and write the release files (env files mode 0600) under the workdir."""
        assert self.workdir is not None, "start() first"
        directory = self.workdir / "release"
        write_release(self.render(), directory)
        return directory

    def compose_command(self, service: str) -> tuple[str, ...]:
        """A service's command as the rendered compose.yml gives it (``$$`` is compose's literal ``$``)."""
        compose = yaml.safe_load((self.release_dir() / "compose.yml").read_text())
        return tuple(word.replace("$$", "$") for word in compose["services"][service]["command"])

    def n8n_env(self) -> dict[str, str]:
        """The rendered env/n8n.env, read back as compose reads it."""
        return read_env_file(self.release_dir() / "env/n8n.env")

    def _env_file(self, name: str) -> Path:
        """A rendered env file rewritten for ``docker run --env-file`` (which does not unquote)."""
        values = read_env_file(self.release_dir() / "env" / name)
        path = self.workdir / f"{name}.docker"
        path.touch(mode=0o600)
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        return path

    @property
    def app_secret(self) -> str:
        return self.environ["META_APP_SECRET"]

    @property
    def verify_token(self) -> str:
        return self.environ["META_VERIFY_TOKEN"]

    @property
    def legacy_token(self) -> str:
        return self.environ["LEGACY_SHARED_TOKEN"]

    def graph_token(self, channel: str) -> str:
        """The Graph API token of ``channel`` (whatsapp, instagram, messenger)."""
        return self.environ[{"whatsapp": "WA_API_TOKEN", "instagram": "IG_API_TOKEN",
                             "messenger": "MSG_API_TOKEN"}[channel]]

    def _run(self, role: str, image: str, *args: str, aliases: tuple[str, ...] = (), publish: str | None = None,
             command: tuple[str, ...] = ()) -> str:
        """Start a container on the stack's network, reachable by the service names of compose.yml."""
        name = self.name(role)
        # unless-stopped as in compose.yml: a service that exits on a fault comes back by itself
        argv = ["run", "-d", "--name", name, "--network", self.network, "--label", "restobot-test=workflows",
                "--restart", "unless-stopped"]
        for alias in aliases or (role,):
            argv += ["--network-alias", alias]
        if publish:
            argv += ["-p", f"127.0.0.1::{publish}"]
        docker(*argv, *args, image, *command)
        self.started.append(name)
        return name

    def _start_n8n(self) -> None:
        # The external hooks file the rendered env names, mounted as compose.yml mounts it.
        hooks = ["-v", f"{REPO / 'docker/n8n/drain-hooks.js'}:{self.n8n_env()['EXTERNAL_HOOK_FILES']}:ro"]
        env = ["--env-file", str(self._env_file("n8n.env")), *hooks]
        concurrency = self.settings().n8n.worker_concurrency
        self._run("main", N8N_IMAGE, *env, aliases=("n8n-main",), command=("start",),
                  publish="5678" if self.publish_main else None)
        self._run("worker", N8N_IMAGE, *env, aliases=("n8n-worker",),
                  command=("worker", f"--concurrency={concurrency}"))

    # --- lifecycle
    def start(self, workdir: Path) -> Stack:
        self.workdir = workdir
        release = self.release_dir()
        docker("network", "create", "--label", "restobot-test=workflows", self.network)
        self._run("postgres", IMAGES["postgres"], "--env-file", str(self._env_file("postgres.env")),
                  aliases=("postgres",), publish="5432")
        self._run("redis", IMAGES["redis"], "--env-file", str(self._env_file("redis.env")), aliases=("redis",),
                  command=self.compose_command("redis"))
        graph = workdir / "graph_api.py"
        graph.write_text((REPO / "harness/graph_api.py").read_text())
        self._run("graph", IMAGES["python"], "-v", f"{graph}:/srv/graph_api.py:ro", aliases=("graph",),
                  publish="8000", command=("python3", "/srv/graph_api.py", "8000"))
        self.wait_postgres()
        subprocess.run([sys.executable, "-m", "restobot.remote.migrate", "apply", "--database-url", self.db_url],
                       check=True, capture_output=True, cwd=REPO)
        self._start_n8n()
        self._run("gateway", IMAGES["nginx"], "-v", f"{release / 'nginx/nginx.conf'}:/etc/nginx/nginx.conf:ro",
                  aliases=("nginx",), publish="8080")
        self.wait_n8n()
        return self

    def close(self) -> None:
        for name in reversed(self.started):
            docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", self.network, check=False)

    def logs(self, role: str, lines: int = 60) -> str:
        result = subprocess.run(["docker", "logs", "--tail", str(lines), self.name(role)],
                                capture_output=True, text=True)
        return result.stdout + result.stderr

    def restart_n8n(self, **changes) -> None:
        """Render the release again with changed knobs (e.g. signature_mode) and recreate main and worker."""
        for key, value in changes.items():
            if not hasattr(self, key):
                raise AttributeError(f"Stack has no knob {key!r}")
            setattr(self, key, value)
        for role in ("main", "worker"):
            docker("rm", "-f", self.name(role), check=False)
            self.started.remove(self.name(role))
        self._start_n8n()
        self.wait_n8n()
        workflows.wait_until_live(self.target, timeout=120)

    # --- readiness
    @property
    def db_url(self) -> str:
        if self._db_url is None:
            port = published_port(self.name("postgres"), 5432)
            self._db_url = self.settings().database_url(host="127.0.0.1", port=port)
        return self._db_url

    def forget_published_ports(self) -> None:
        """After a container was stopped and started again: docker published it on a new host port."""
        self._db_url = None

    def wait_postgres(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.db_url, connect_timeout=2) as conn:
                    conn.execute("select 1")
                    return
            except (psycopg.OperationalError, RuntimeError, ValueError):
                time.sleep(0.5)
        raise RuntimeError("postgres not ready:\n" + self.logs("postgres"))

    def wait_n8n(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        probe = ["node", "-e", "fetch('http://127.0.0.1:5678/healthz/readiness').then(r=>process.exit(r.status===200?0:1)).catch(()=>process.exit(1))"]
        while time.monotonic() < deadline:
            result = subprocess.run(["docker", "exec", self.name("main"), *probe], capture_output=True)
            if result.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError("n8n main not ready:\n" + self.logs("main"))

    # --- clients
    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{published_port(self.name('gateway'), 8080)}"

    @property
    def direct_url(self) -> str:
        """n8n main itself (only with publish_main): /webhook/<path>."""
        return f"http://127.0.0.1:{published_port(self.name('main'), 5678)}/webhook"

    @property
    def graph_url(self) -> str:
        return f"http://127.0.0.1:{published_port(self.name('graph'), 8000)}"

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute(sql, params)
            return rows.fetchall() if rows.description else []

    def wait_rows(self, sql: str, *params, predicate=lambda rows: bool(rows), timeout: float = 30.0) -> list[tuple]:
        deadline = time.monotonic() + timeout
        rows: list[tuple] = []
        while time.monotonic() < deadline:
            rows = self.query(sql, *params)
            if predicate(rows):
                return rows
            time.sleep(0.3)
        raise AssertionError(f"waited {timeout:g} s for rows of {sql!r} {params!r} to match; last seen: {rows!r}")

    def graph_requests(self) -> list[dict]:
        return json.loads(http("GET", self.graph_url + "/_control/requests").body)["requests"]

    def graph_script(self, *answers: dict) -> None:
        http("POST", self.graph_url + "/_control/script", json.dumps({"answers": list(answers)}).encode(),
             {"Content-Type": "application/json"})

    def graph_reset(self) -> None:
        """Forget the double's requests and script, once the sender is done with every earlier reply.

        A reply still waiting for its retry, or a message stored but not yet answered (its reply row
        not written yet), would otherwise take an answer scripted for the next test.
        """
        self.wait_rows("select id from outbound_messages where status in ('PENDING', 'RETRY') "
                       "union all select id from inbound_messages where status = 'RECEIVED'",
                       predicate=lambda rows: not rows, timeout=60)
        http("POST", self.graph_url + "/_control/reset", b"{}", {"Content-Type": "application/json"})



# --- test-only runners ---------------------------------------------------------------------
# A test-only workflow per scheduled workflow: POST /webhook/restobot-test/run-<key> runs it (through
# its "When called" trigger) on the worker and answers when it has finished. `n8n execute --id` cannot
# do it: that CLI command never loads CREDENTIALS_OVERWRITE_DATA (only `start` and `worker` do), so
# the Postgres nodes would connect to localhost and fail ("Connection refused").


def runner_path(key: str) -> str:
    return f"restobot-test/run-{key}"


def runner_workflow(key: str, workflow_id: str) -> dict:
    """The test-only workflow that runs ``workflow_id`` when POST /webhook/restobot-test/run-``key``."""
    def node_id(name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"restobot-test/run-{key}/{name}"))

    return {
        "id": f"RbTestRun{key.upper():0<8}"[:17], "name": f"TEST_RUN_{key.upper()}", "active": True,
        "nodes": [
            {"id": node_id("webhook"), "name": "Run", "type": "n8n-nodes-base.webhook", "typeVersion": 2,
             "position": [200, 200], "webhookId": node_id("webhookId"),
             # The answer header (n8n main's gate, docker/n8n/drain-hooks.js, refuses a 2xx without it),
             # set on the webhook itself: n8n applies it before the run, so any end of the run passes.
             "parameters": {"httpMethod": "POST", "path": runner_path(key), "responseMode": "lastNode",
                            "responseData": "noData", "options": {"responseHeaders": {"entries": [
                                {"name": "X-Restobot-Answer", "value": "test-runner"}]}}}},
            {"id": node_id("call"), "name": "Call", "type": "n8n-nodes-base.executeWorkflow",
             "typeVersion": 1.2, "position": [440, 200], "alwaysOutputData": True,
             "parameters": {"source": "database", "mode": "once", "options": {"waitForSubWorkflow": True},
                            "workflowId": {"__rl": True, "mode": "id", "value": workflow_id},
                            "workflowInputs": {"mappingMode": "defineBelow", "value": {}, "matchingColumns": [],
                                               "schema": [], "attemptToConvertTypes": False,
                                               "convertFieldsToString": True}}},
        ],
        "connections": {"Run": {"main": [[{"node": "Call", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1"},
    }


FALLBACK_PATH = "restobot-test/fallback"


def fallback_workflow() -> dict:
    """A test-only workflow whose run ends without reaching its Respond to Webhook node: n8n main then
    answers with its own fallback, an empty 200 (webhook-helpers.js), as it does when an execution's
    answer never reaches it (Redis gone while it waits on the worker)."""
    def node_id(name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{FALLBACK_PATH}/{name}"))

    return {
        "id": "RbTestFallback000", "name": "TEST_FALLBACK", "active": True,
        "nodes": [
            {"id": node_id("webhook"), "name": "Webhook", "type": "n8n-nodes-base.webhook", "typeVersion": 2,
             "position": [200, 200], "webhookId": node_id("webhookId"),
             "parameters": {"httpMethod": "POST", "path": FALLBACK_PATH, "responseMode": "responseNode",
                            "options": {}}},
            {"id": node_id("never"), "name": "Never", "type": "n8n-nodes-base.filter", "typeVersion": 2,
             "position": [440, 200],
             "parameters": {"conditions": {"options": {"caseSensitive": True, "leftValue": "", "typeValidation": "strict"},
                                           "conditions": [{"id": node_id("condition"), "leftValue": "={{ false }}",
                                                           "rightValue": "", "operator": {"type": "boolean",
                                                                                          "operation": "true",
                                                                                          "singleValue": True}}],
                                           "combinator": "and"}, "options": {}}},
            {"id": node_id("respond"), "name": "Respond", "type": "n8n-nodes-base.respondToWebhook",
             "typeVersion": 1.1, "position": [680, 200],
             "parameters": {"respondWith": "text", "responseBody": "answered", "options": {"responseHeaders": {
                 "entries": [{"name": "X-Restobot-Answer", "value": "workflow"}]}}}},
        ],
        "connections": {"Webhook": {"main": [[{"node": "Never", "type": "main", "index": 0}]]},
                        "Never": {"main": [[{"node": "Respond", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1"},
    }


def workflows_with_runners(directory: Path, runners: dict[str, str]) -> Path:
    """The release's workflow files plus a test-only runner per ``{key: workflow id}`` and the fallback
    workflow, in ``directory``."""
    for source in workflows.WORKFLOWS_DIR.glob("*.json"):
        (directory / source.name).write_bytes(source.read_bytes())
    for key, workflow_id in runners.items():
        (directory / f"TEST_RUN_{key.upper()}.json").write_text(json.dumps(runner_workflow(key, workflow_id)))
    (directory / "TEST_FALLBACK.json").write_text(json.dumps(fallback_workflow()))
    return directory


def run_workflow(stack: Stack, key: str, wait: float = 30) -> Response:
    """Run a scheduled workflow once through its test-only runner and wait for its end (the runner's
    webhook may take a moment to register after an import: a 404 is retried for ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        answer = http("POST", f"{stack.direct_url}/{runner_path(key)}", b"{}",
                      {"Content-Type": "application/json"}, timeout=60)
        if answer.status != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(1)


def previous_app_secret(hours: float) -> dict[str, str]:
    """The app secret before a rotation, accepted until ``hours`` from now (negative: its overlap is over)."""
    until = datetime.now(timezone.utc) + timedelta(hours=hours)
    return {"META_APP_SECRET_PREVIOUS": secrets.token_hex(16), "META_APP_SECRET_PREVIOUS_UNTIL": until.isoformat()}


@contextlib.contextmanager
def running_stack(workdir: Path, workflows_dir: Path, runners: dict[str, str],
                  extra_environ: dict[str, str] | None = None, **knobs) -> Iterator[Stack]:
    """A started stack with the release's workflows and the given test-only runners imported; its
    n8n logs printed if it does not come up; removed afterwards.

    + extra_environ: settings beyond the generated secrets (runbook names), e.g. a previous app secret
    + knobs: Stack's fields, e.g. on_uncertain_send='park'"""
    running = Stack(publish_main=True, environ={**test_secrets(), **(extra_environ or {})}, **knobs)
    try:
        running.start(workdir)
        workflows.import_workflows(running.target, workflows_with_runners(workflows_dir, runners))
        yield running
    except Exception:
        print(running.logs("main"), running.logs("worker"))
        raise
    finally:
        running.close()
