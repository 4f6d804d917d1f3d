"""The rendered compose file, as the real docker compose v2 parses it."""

from __future__ import annotations

import json
import shutil
import re
import subprocess

import pytest
import yaml

from restobot.render import render_release, write_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage

STACK = {"traefik", "nginx", "n8n-main", "n8n-worker", "postgres", "redis"}
MONITORING = {"prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter",
              "blackbox-exporter"}
LONG_RUNNING = STACK | MONITORING
# redis_exporter's official image is FROM scratch: nothing in it can run a healthcheck.
NO_HEALTHCHECK = {"redis-exporter"}
STAGES = ["production", "staging"]

pytestmark = pytest.mark.skipif(
    shutil.which("docker") is None, reason="the docker CLI with the compose plugin is installed by scripts/setup-host"
)


def compose_config(directory) -> dict:
    result = subprocess.run(
        ["docker", "compose", "-f", "compose.yml", "config", "--format", "json"],
        cwd=directory, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=STAGES)
def parsed(request, tmp_path_factory):
    with_secrets = generate_secrets()
    tmp_path = tmp_path_factory.mktemp(request.param)
    settings = settings_for_stage(request.param, with_secrets, restaurant={"name": "L'Atelier $HOME & \"Co\""})
    write_release(render_release(settings), tmp_path)
    quiet = subprocess.run(["docker", "compose", "config", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    return compose_config(tmp_path), with_secrets


def test_services_are_the_runbook_stack(parsed):
    config, _ = parsed
    assert set(config["services"]) == LONG_RUNNING | {"db-migrate"}


@pytest.mark.parametrize("service", ["n8n-main", "n8n-worker"])
def test_n8n_waits_for_migrations_and_healthy_backends(parsed, service):
    depends = parsed[0]["services"][service]["depends_on"]
    assert depends["db-migrate"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", sorted(LONG_RUNNING - NO_HEALTHCHECK))
def test_long_running_service_has_a_healthcheck(parsed, service):
    assert parsed[0]["services"][service]["healthcheck"]["test"], f"{service} has no healthcheck"


@pytest.mark.parametrize("service", sorted(LONG_RUNNING))
def test_long_running_service_restarts(parsed, service):
    assert parsed[0]["services"][service]["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", sorted(MONITORING))
def test_monitoring_service_has_resource_limits(parsed, service):
    limits = parsed[0]["services"][service]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) <= 0.5 and 0 < int(limits["memory"]) <= 512 * 2**20


@pytest.mark.parametrize(("service", "setting"), [
    ("prometheus", "prometheus"), ("alertmanager", "alertmanager"), ("node-exporter", "node_exporter"),
    ("postgres-exporter", "postgres_exporter"), ("redis-exporter", "redis_exporter"),
    ("blackbox-exporter", "blackbox_exporter"),
])
def test_monitoring_service_runs_the_image_its_setting_names(service, setting):
    images = {"prometheus": "example.test/p:1", "alertmanager": "example.test/a:1", "node_exporter": "example.test/n:1",
              "postgres_exporter": "example.test/pe:1", "redis_exporter": "example.test/re:1",
              "blackbox_exporter": "example.test/b:1"}
    settings = settings_for_stage("production", generate_secrets(), images=images)
    compose = yaml.safe_load(render_release(settings)["compose.yml"].text)
    assert compose["services"][service]["image"] == images[setting]


def test_migrations_run_once(parsed):
    assert parsed[0]["services"]["db-migrate"]["restart"] == "no"
    assert "healthcheck" not in parsed[0]["services"]["db-migrate"]


def test_only_traefik_publishes_ports_beyond_loopback(parsed):
    published = {
        name: sorted(port["published"] for port in service.get("ports", []))
        for name, service in parsed[0]["services"].items()
        if any(port.get("host_ip") != "127.0.0.1" for port in service.get("ports", []))
    }
    assert published == {"traefik": ["443", "80"]}


def test_prometheus_and_alertmanager_listen_on_the_vps_s_loopback_only(parsed):
    published = {
        name: [(port.get("host_ip"), port["published"]) for port in service["ports"]]
        for name, service in parsed[0]["services"].items()
        if service.get("ports") and name != "traefik"
    }
    assert published == {"prometheus": [("127.0.0.1", "9090")], "alertmanager": [("127.0.0.1", "9093")]}


@pytest.mark.parametrize("service", sorted(LONG_RUNNING | {"db-migrate"}))
def test_logs_are_rotated(parsed, service):
    logging = parsed[0]["services"][service]["logging"]
    assert logging["driver"] == "json-file"
    assert logging["options"]["max-size"] and logging["options"]["max-file"]


def test_state_lives_in_named_volumes(parsed):
    config = parsed[0]
    assert set(config["volumes"]) == {"postgres_data", "redis_data", "n8n_data", "traefik_acme", "prometheus_data",
                                      "alertmanager_data"}
    mounts = {
        (name, volume["source"]): volume["target"]
        for name, service in config["services"].items()
        for volume in service.get("volumes", [])
        if volume["type"] == "volume"
    }
    assert mounts == {
        ("postgres", "postgres_data"): "/var/lib/postgresql/data",
        ("redis", "redis_data"): "/data",
        ("n8n-main", "n8n_data"): "/home/node/.n8n",
        ("n8n-worker", "n8n_data"): "/home/node/.n8n",
        ("traefik", "traefik_acme"): "/acme",
        ("prometheus", "prometheus_data"): "/prometheus",
        ("alertmanager", "alertmanager_data"): "/alertmanager",
    }


def test_worker_runs_in_queue_mode_with_mains_encryption_key(parsed):
    config, secrets = parsed
    main = config["services"]["n8n-main"]["environment"]
    worker = config["services"]["n8n-worker"]["environment"]
    assert main["EXECUTIONS_MODE"] == worker["EXECUTIONS_MODE"] == "queue"
    assert main["N8N_ENCRYPTION_KEY"] == worker["N8N_ENCRYPTION_KEY"] == secrets["N8N_ENCRYPTION_KEY"]
    assert config["services"]["n8n-worker"]["command"][0] == "worker"


def test_env_values_reach_the_containers_verbatim(parsed):
    config, secrets = parsed
    n8n = config["services"]["n8n-main"]["environment"]
    # `compose config` prints a literal $ as $$ so that its output stays a valid compose file.
    assert n8n["RESTAURANT_NAME"].replace("$$", "$") == "L'Atelier $HOME & \"Co\""
    assert n8n["META_APP_SECRET"] == secrets["META_APP_SECRET"]
    assert n8n["DB_POSTGRESDB_PASSWORD"] == secrets["POSTGRES_PASSWORD"]
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == secrets["POSTGRES_PASSWORD"]
    assert secrets["POSTGRES_PASSWORD"] in config["services"]["db-migrate"]["environment"]["DATABASE_URL"]


@pytest.mark.parametrize(("service", "networks"), [
    ("traefik", {"public", "gateway"}),
    ("nginx", {"gateway", "backend"}),
    ("n8n-main", {"gateway", "backend", "egress", "n8n-metrics"}),
    ("n8n-worker", {"gateway", "backend", "egress"}),
    ("postgres", {"backend"}),
    ("redis", {"backend"}),
    ("db-migrate", {"backend"}),
    ("prometheus", {"monitoring", "monitoring-egress", "n8n-metrics"}),
    ("alertmanager", {"monitoring", "monitoring-egress"}),
    ("blackbox-exporter", {"monitoring", "monitoring-egress"}),
    ("node-exporter", {"monitoring"}),
    ("postgres-exporter", {"monitoring", "backend"}),
    ("redis-exporter", {"monitoring", "backend"}),
])
def test_service_sits_on_its_networks_only(parsed, service, networks):
    assert set(parsed[0]["services"][service]["networks"]) == networks


@pytest.mark.parametrize("network", ["gateway", "backend", "monitoring", "n8n-metrics"])
def test_backend_networks_are_internal(parsed, network):
    assert parsed[0]["networks"][network].get("internal") is True


def test_redis_password_is_in_no_command_line(parsed):
    config, secrets = parsed
    redis = config["services"]["redis"]
    assert secrets["REDIS_PASSWORD"] not in json.dumps(redis["command"])
    assert secrets["REDIS_PASSWORD"] not in json.dumps(redis["healthcheck"])
    assert redis["environment"]["REDIS_PASSWORD"] == secrets["REDIS_PASSWORD"]
    n8n = config["services"]["n8n-main"]["environment"]
    assert n8n["QUEUE_BULL_REDIS_PASSWORD"] == secrets["REDIS_PASSWORD"]


def test_n8n_main_loads_the_drain_hooks_and_outlasts_them_before_dockers_kill(parsed):
    main = parsed[0]["services"]["n8n-main"]
    hooks = main["environment"]["EXTERNAL_HOOK_FILES"]
    binds = {volume["target"]: volume["source"] for volume in main["volumes"] if volume["type"] == "bind"}
    assert re.fullmatch(r"/opt/resto/configs/n8n-hooks-[0-9a-f]{12}/drain-hooks\.js", binds[hooks]), binds[hooks]
    drain = int(main["environment"]["RESTOBOT_DRAIN_SECONDS"])
    n8n_shutdown = int(main["environment"]["N8N_GRACEFUL_SHUTDOWN_TIMEOUT"])
    docker_kill = int(main["stop_grace_period"].rstrip("s"))
    assert drain < n8n_shutdown < docker_kill


@pytest.mark.parametrize(("service", "secret"), [("postgres-exporter", "POSTGRES_PASSWORD"),
                                                 ("redis-exporter", "REDIS_PASSWORD")])
def test_exporter_password_comes_from_its_env_file_only(parsed, service, secret):
    config, secrets = parsed
    definition = config["services"][service]
    assert secrets[secret] not in json.dumps({k: v for k, v in definition.items() if k != "environment"})
    assert secrets[secret] in definition["environment"].values()


def test_node_exporter_reads_the_host_s_textfile_directory(parsed):
    mounts = {volume["target"]: volume["source"] for volume in parsed[0]["services"]["node-exporter"]["volumes"]}
    assert mounts["/textfile"] == "/opt/resto/metrics"
    assert "--collector.textfile.directory=/textfile" in parsed[0]["services"]["node-exporter"]["command"]
