"""The monitoring stand-ins (Debian 12's packages) start as the official images do and serve their metrics.

Each runs with its image's default arguments (or the rendered config it reads) and answers on its
official port; the exporters with nothing to watch say so in their own `*_up` series.
"""

from __future__ import annotations

import secrets
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from harness import images
from harness.poll import poll
from restobot.render import render_monitoring, write_release
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage

pytestmark = pytest.mark.integration

# name -> (official port, a line its /metrics must hold, extra docker run arguments, command arguments)
EXPORTERS = {
    "node-exporter": (9100, "node_memory_MemAvailable_bytes ", (), ()),
    "postgres-exporter": (9187, "pg_up 0", ("-e", "DATA_SOURCE_NAME=postgresql://u:p@127.0.0.1:1/db?sslmode=disable"),
                          ()),
    "redis-exporter": (9121, "redis_up 0", ("-e", "REDIS_ADDR=redis://127.0.0.1:1"), ()),
    "blackbox-exporter": (9115, "blackbox_exporter_config_last_reload_successful 1", (), ()),
    "prometheus": (9090, "prometheus_config_last_reload_successful 1", (), ()),
}


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("monitoring")
    write_release(render_monitoring(settings_for_stage("production", generate_secrets())), directory)
    return directory / "monitoring"


@pytest.fixture
def running(request, configs) -> Iterator[tuple[str, int]]:
    name = request.param
    ref = images.image_ref(images.local_image(name))
    if docker("image", "inspect", ref, check=False).returncode != 0:
        pytest.skip(f"{ref} is not built (scripts/build-images builds it)")
    port, _, extra, args = EXPORTERS[name]
    mounts = {"blackbox-exporter": f"{configs / 'blackbox'}:/etc/blackbox_exporter:ro",
              "prometheus": f"{configs / 'prometheus'}:/etc/prometheus:ro"}
    volume = ("-v", mounts[name]) if name in mounts else ()
    container = f"resto-mon-{name}-{secrets.token_hex(4)}"
    docker("run", "-d", "--name", container, "-p", f"127.0.0.1::{port}", *volume, *extra, ref, *args)
    try:
        published = docker("port", container, str(port)).stdout.split(":")[-1].strip()
        yield container, int(published)
    finally:
        docker("rm", "-f", container, check=False)


@pytest.mark.parametrize("running", sorted(EXPORTERS), indirect=True)
def test_stand_in_serves_its_metrics_on_the_official_port(running):
    container, port = running
    name = container.split("-", 2)[2].rsplit("-", 1)[0]
    expected = EXPORTERS[name][1]

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:  # noqa: S310
            return answer.read().decode()

    try:
        text = poll(metrics, until=lambda body: expected in body, timeout=30, interval=0.5,
                    what=f"{expected!r} in {name}'s metrics", tolerate=(OSError,))
    except Exception:
        print(docker("logs", container, check=False).stderr[-2000:])
        raise
    assert expected in text


def test_stand_ins_run_as_nobody():
    for name in ("prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter",
                 "blackbox-exporter"):
        ref = images.image_ref(images.local_image(name))
        user = docker("image", "inspect", "-f", "{{.Config.User}}", ref, check=False)
        if user.returncode != 0:
            pytest.skip(f"{ref} is not built (scripts/build-images builds it)")
        assert user.stdout.strip() == "nobody", name
