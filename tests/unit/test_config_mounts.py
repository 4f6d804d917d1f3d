"""A service is recreated only when what it reads changed: the configs containers mount are copies named
by their content (restobot.render.config_mounts). The judge is what compose compares on ``up``: its
ServiceHash (pkg/compose/hash.go) of the service as resolved, less build, pull_policy, scale, replicas,
depends_on and profiles. (``docker compose config --hash`` of compose before 5.5 hashes the env_file
paths instead of the environment they give, which ``up`` does not: docker/compose#14001.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from restobot.commands import HostLayout
from restobot.release_archive import build_release
from restobot.render import MOUNTED_CONFIGS, RenderContext, config_mounts, render_release, write_release
from tests.conftest import settings_for_stage

pytestmark = pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed: scripts/setup-host installs it",
)


def service_hashes(settings, tmp_path, release: str) -> dict[str, str]:
    directory = tmp_path / release
    write_release(render_release(settings, RenderContext(release=release)), directory)
    result = subprocess.run(["docker", "compose", "-f", "compose.yml", "config", "--format", "json"],
                            cwd=directory, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return {name: json.dumps(hashed_part(service), sort_keys=True)
            for name, service in json.loads(result.stdout)["services"].items()}


def hashed_part(service: dict) -> dict:
    """What compose's ServiceHash keeps of a resolved service."""
    kept = {key: value for key, value in service.items()
            if key not in ("build", "pull_policy", "scale", "depends_on", "profiles")}
    if "deploy" in kept:
        kept["deploy"] = {key: value for key, value in kept["deploy"].items() if key != "replicas"}
    return kept


def changed_services(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after)
    return {service for service in before if before[service] != after[service]}


def test_a_new_release_with_the_same_settings_recreates_nothing(secret_env, tmp_path):
    settings = settings_for_stage("production", secret_env)
    assert changed_services(service_hashes(settings, tmp_path, "v1.0.0"),
                            service_hashes(settings, tmp_path, "v1.1.0")) == set()


def test_a_monitoring_threshold_recreates_prometheus_alone(secret_env, tmp_path):
    before = settings_for_stage("production", secret_env)
    after = settings_for_stage("production", secret_env, monitoring={"disk_percent": 85})
    assert changed_services(service_hashes(before, tmp_path, "v1.0.0"),
                            service_hashes(after, tmp_path, "v1.1.0")) == {"prometheus"}


def test_the_worker_concurrency_recreates_the_worker_and_the_gateway_not_n8n_main(secret_env, tmp_path):
    before = settings_for_stage("production", secret_env)
    after = settings_for_stage("production", secret_env, n8n={"worker_concurrency": before.n8n.worker_concurrency + 1})
    changed = changed_services(service_hashes(before, tmp_path, "v1.0.0"), service_hashes(after, tmp_path, "v1.1.0"))
    # The gateway lets at most 2 x the worker's concurrency wait on n8n.
    assert changed == {"nginx", "n8n-worker"}


def test_every_bind_mount_from_the_release_is_a_copy_named_by_content(secret_env):
    settings = settings_for_stage("production", secret_env)
    compose = render_release(settings)["compose.yml"].text
    configs = HostLayout(settings.host.base_dir).configs_dir
    assert " ./" not in compose and "file: ." not in compose
    for key in ("traefik", "nginx", "n8n-hooks", "prometheus", "alertmanager", "postgres-exporter", "blackbox"):
        assert f"{configs}/{key}-" in compose, key


def test_the_copy_name_follows_content_mode_and_owner():
    base = {"nginx/nginx.conf": (b"events {}", 0o644), "migrations/0001.sql": (b"select 1;", 0o644)}
    [name] = config_mounts(base)
    assert name.startswith("nginx-") and len(name) == len("nginx-") + 12
    assert config_mounts({**base, "migrations/0001.sql": (b"select 2;", 0o644)}) == {name: "nginx"}
    assert set(config_mounts({**base, "nginx/nginx.conf": (b"events { }", 0o644)})) != {name}
    assert set(config_mounts({**base, "nginx/nginx.conf": (b"events {}", 0o600)})) != {name}
    owned = {"monitoring/alertmanager/alertmanager.yml": (b"route: {}", 0o600)}
    [alertmanager] = config_mounts(owned)
    assert alertmanager.startswith("alertmanager-")


def test_the_manifest_names_the_copies_the_compose_file_mounts(secret_env):
    settings = settings_for_stage("production", secret_env)
    mounted = build_release(settings, "v1.0.0").manifest.mounted_configs
    assert sorted(mounted.values()) == sorted(path for key, path in MOUNTED_CONFIGS.items() if key != "pgbackrest")
    compose = render_release(settings, RenderContext(release="v1.0.0"))["compose.yml"].text
    for name in mounted:
        assert f"{HostLayout(settings.host.base_dir).configs_dir}/{name}" in compose
