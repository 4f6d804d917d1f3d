"""A real Resto Bot stack on this machine's docker engine, for the workflow tests.

PostgreSQL 17 (schema from the project's migration runner), Redis, n8n main +
worker in queue mode, the rendered Nginx gateway and the Graph API double, on
a docker network created here, with unique names, removed on close. Only the
gateway, PostgreSQL and the double's control port are published, on 127.0.0.1.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from restobot import workflows
from restobot.render import GatewayOptions, RenderContext, render_release
from restobot.secrets import generate_secrets
from restobot.versions import N8N_VERSION

REPO = Path(__file__).resolve().parents[2]
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
    headers: dict

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 20.0) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, answer.read(), dict(answer.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), dict(error.headers))


@dataclass
class Stack:
    app_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    verify_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    legacy_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    signature_mode: str = "enforce"
    rate_limit: int = 5
    max_retries: int = 2
    dlq_threshold: int = 2
    prefix: str = field(default_factory=lambda: f"rbwf-{uuid.uuid4().hex[:8]}")
    db_password: str = field(default_factory=lambda: secrets.token_hex(16))
    encryption_key: str = field(default_factory=lambda: secrets.token_hex(24))
    workdir: Path | None = None
    started: list[str] = field(default_factory=list)

    # --- names
    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def network(self) -> str:
        return self.prefix

    @property
    def target(self) -> workflows.ContainerTarget:
        return workflows.ContainerTarget({"n8n-main": self.name("main")})

    # --- environment of n8n main and worker (mirrors templates/env/n8n.env.j2)
    def n8n_env(self) -> dict[str, str]:
        return {
            "DB_TYPE": "postgresdb", "DB_POSTGRESDB_HOST": "postgres", "DB_POSTGRESDB_PORT": "5432",
            "DB_POSTGRESDB_DATABASE": "resto", "DB_POSTGRESDB_USER": "resto",
            "DB_POSTGRESDB_PASSWORD": self.db_password,
            "EXECUTIONS_MODE": "queue", "QUEUE_BULL_REDIS_HOST": "redis", "QUEUE_BULL_REDIS_PORT": "6379",
            "QUEUE_HEALTH_CHECK_ACTIVE": "true", "OFFLOAD_MANUAL_EXECUTIONS_TO_WORKERS": "true",
            "N8N_ENCRYPTION_KEY": self.encryption_key, "N8N_PORT": "5678",
            "WEBHOOK_URL": "http://gateway:8080/", "N8N_PROXY_HOPS": "1",
            "N8N_DIAGNOSTICS_ENABLED": "false", "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false", "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_RUNNERS_ENABLED": "true", "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
            "NODE_FUNCTION_ALLOW_BUILTIN": "crypto", "GENERIC_TIMEZONE": "Europe/Paris",
            "CREDENTIALS_OVERWRITE_DATA": workflows.credentials_overwrite_data(
                db_host="postgres", db_port=5432, db_name="resto", db_user="resto",
                db_password=self.db_password, redis_host="redis"),
            "META_VERIFY_TOKEN": self.verify_token, "META_APP_SECRET": self.app_secret,
            "META_SIGNATURE_REQUIRED": self.signature_mode,
            "WA_API_TOKEN": "wa-token-" + self.prefix, "WA_PHONE_NUMBER_ID": "109876543210",
            "IG_API_TOKEN": "ig-token-" + self.prefix, "IG_ACCOUNT_ID": "17841400000000000",
            "MSG_API_TOKEN": "msg-token-" + self.prefix, "MSG_PAGE_ID": "1122334455",
            "REPLAY_CHECK_ENABLED": "true", "REDIS_URL": "redis://redis:6379/0",
            "RATE_LIMIT_PER_30S": str(self.rate_limit), "DLQ_ALERT_THRESHOLD": str(self.dlq_threshold),
            "ALERT_WEBHOOK_URL": "http://graph:8000/alert",
            "GRAPH_API_BASE_URL": "http://graph:8000", "GRAPH_API_VERSION": "v21.0",
            "OUTBOUND_MAX_RETRIES": str(self.max_retries), "OUTBOUND_RETRY_BASE_SECONDS": "1",
            "LEGACY_SHARED_TOKEN": self.legacy_token,
            "RESTAURANT_NAME": "Chez Test", "RESTAURANT_ADDRESS": "1 rue de la Paix, Paris",
            "RESTAURANT_HOURS": "mar-dim 12h-14h30, 19h-22h30",
            "RESTAURANT_MENU_URL": "https://chez-test.example/menu", "RESTAURANT_DEFAULT_LOCALE": "fr",
        }

    def _env_args(self) -> list[str]:
        args = []
        for key, value in self.n8n_env().items():
            args += ["-e", f"{key}={value}"]
        return args

    def _run(self, role: str, image: str, *args: str, alias: str | None = None, publish: str | None = None,
             command: tuple[str, ...] = ()) -> str:
        name = self.name(role)
        argv = ["run", "-d", "--name", name, "--network", self.network,
                "--network-alias", alias or role, "--label", "restobot-test=workflows"]
        if publish:
            argv += ["-p", f"127.0.0.1::{publish}"]
        docker(*argv, *args, image, *command)
        self.started.append(name)
        return name

    # --- lifecycle
    def start(self, workdir: Path) -> "Stack":
        self.workdir = workdir
        docker("network", "create", "--label", "restobot-test=workflows", self.network)
        self._run("postgres", IMAGES["postgres"], "-e", "POSTGRES_USER=resto",
                  "-e", f"POSTGRES_PASSWORD={self.db_password}", "-e", "POSTGRES_DB=resto", publish="5432")
        self._run("redis", IMAGES["redis"])
        graph = workdir / "graph_api.py"
        graph.write_text((REPO / "tests/doubles/graph_api.py").read_text())
        self._run("graph", IMAGES["python"], "-v", f"{graph}:/srv/graph_api.py:ro", publish="8000",
                  command=("python3", "/srv/graph_api.py", "8000"))
        self.wait_postgres()
        subprocess.run([sys.executable, "-m", "restobot.migrate", "apply", "--database-url", self.db_url],
                       check=True, capture_output=True, cwd=REPO)
        self._run("main", N8N_IMAGE, *self._env_args(), alias="n8n-main", command=("start",))
        self._run("worker", N8N_IMAGE, *self._env_args(), "-e", "QUEUE_HEALTH_CHECK_PORT=5680",
                  alias="n8n-worker", command=("worker", "--concurrency=10"))
        settings_files = render_release(_production_settings(),
                                        RenderContext(gateway=GatewayOptions(rate_per_second=2000, burst=4000)))
        conf = workdir / "nginx.conf"
        conf.write_text(settings_files["nginx/nginx.conf"].text)
        self._run("gateway", IMAGES["nginx"], "-v", f"{conf}:/etc/nginx/nginx.conf:ro", publish="8080")
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
        """Recreate main and worker with changed settings (e.g. signature_mode)."""
        for key, value in changes.items():
            setattr(self, key, value)
        for role, alias, command in (("main", "n8n-main", ("start",)),
                                     ("worker", "n8n-worker", ("worker", "--concurrency=10"))):
            docker("rm", "-f", self.name(role), check=False)
            self.started.remove(self.name(role))
            extra = ["-e", "QUEUE_HEALTH_CHECK_PORT=5680"] if role == "worker" else []
            self._run(role, N8N_IMAGE, *self._env_args(), *extra, alias=alias, command=command)
        self.wait_n8n()
        workflows.wait_until_live(self.target, timeout=120)

    # --- readiness
    @property
    def db_url(self) -> str:
        port = published_port(self.name("postgres"), 5432)
        return f"postgresql://resto:{self.db_password}@127.0.0.1:{port}/resto"

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
        return rows

    def graph_requests(self) -> list[dict]:
        return json.loads(http("GET", self.graph_url + "/_control/requests").body)["requests"]

    def graph_script(self, *answers: dict) -> None:
        http("POST", self.graph_url + "/_control/script", json.dumps({"answers": list(answers)}).encode(),
             {"Content-Type": "application/json"})

    def graph_reset(self) -> None:
        http("POST", self.graph_url + "/_control/reset", b"{}", {"Content-Type": "application/json"})


def _production_settings():
    from tests.conftest import settings_for_stage

    return settings_for_stage("production", generate_secrets())
