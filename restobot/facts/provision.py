"""Facts the provisioning reads that pyinfra 3.10 does not ship.

Each is one remote command returning the whole picture an operation needs
(a remote command costs ~130 ms: FIELD_NOTES.md). Nothing here changes the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from pyinfra.api import FactBase, QuoteString, StringCommand

InitSystem = Literal["systemd", "sysvinit"]


@dataclasses.dataclass(frozen=True)
class Platform:
    """What the host is: it cannot change during a run, so deploys may branch on it.

    + machine: ``uname -m`` (``x86_64``, ``aarch64``)
    + dpkg_architecture: ``dpkg --print-architecture`` (``amd64``, ``arm64``)
    + distribution: os-release ``ID`` (``debian``, ``ubuntu``)
    + codename: os-release ``VERSION_CODENAME`` (``bookworm``, ``noble``)
    + version_id: os-release ``VERSION_ID`` (``12``, ``24.04``)
    + init_system: ``systemd`` when systemd is PID 1 (``/run/systemd/system`` exists,
      the test ``sd_booted()`` makes), else ``sysvinit`` (``/etc/init.d`` scripts)
    """

    machine: str
    dpkg_architecture: str
    distribution: str
    codename: str
    version_id: str
    init_system: InitSystem


class HostPlatform(FactBase[Platform | None]):
    """The host's architecture, distribution and init system in one command.

    None: the host has no ``/etc/os-release`` or no ``dpkg`` (not Debian-like);
    provisioning refuses such hosts.
    """

    def command(self) -> str:
        return (
            "echo machine=$(uname -m); "
            "echo dpkg_architecture=$(dpkg --print-architecture 2>/dev/null); "
            "if [ -r /etc/os-release ]; then . /etc/os-release; "
            'echo distribution=${ID:-}; echo codename=${VERSION_CODENAME:-}; echo version_id=${VERSION_ID:-}; fi; '
            "if [ -d /run/systemd/system ]; then echo init_system=systemd; else echo init_system=sysvinit; fi"
        )

    def process(self, output: Iterable[str]) -> Platform | None:
        values = dict(line.split("=", 1) for line in output if "=" in line)
        if not values.get("distribution") or not values.get("dpkg_architecture"):
            return None
        return Platform(
            machine=values.get("machine", ""),
            dpkg_architecture=values["dpkg_architecture"],
            distribution=values["distribution"],
            codename=values.get("codename", ""),
            version_id=values.get("version_id", "").strip('"'),
            init_system="systemd" if values.get("init_system") == "systemd" else "sysvinit",
        )


@dataclasses.dataclass(frozen=True)
class Firewall:
    """ufw's configuration (kept whether or not ufw is enabled).

    + active: ufw is enabled (its rules are loaded)
    + default_incoming: ``deny``, ``reject`` or ``allow`` (from /etc/default/ufw)
    + default_outgoing: idem for outgoing traffic
    + rules: the user rules as ``ufw show added`` lists them, without the leading
      ``ufw`` (``allow 22/tcp``), in order
    """

    active: bool
    default_incoming: str
    default_outgoing: str
    rules: tuple[str, ...]


UFW_POLICIES = {'"DROP"': "deny", '"REJECT"': "reject", '"ACCEPT"': "allow"}


class UfwFirewall(FactBase[Firewall | None]):
    """ufw's state, its default policies and its user rules.

    None: ufw is not installed.
    """

    def command(self) -> str:
        return (
            "command -v ufw >/dev/null || exit 0; "
            "ufw status | head -n 1; "
            "grep -E '^DEFAULT_(INPUT|OUTPUT)_POLICY=' /etc/default/ufw; "
            "ufw show added"
        )

    def process(self, output: Iterable[str]) -> Firewall | None:
        lines = [line.strip() for line in output]
        if not lines:
            return None
        active = False
        incoming = outgoing = "allow"
        rules: list[str] = []
        for line in lines:
            if line.startswith("Status:"):
                active = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("DEFAULT_INPUT_POLICY="):
                incoming = UFW_POLICIES.get(line.split("=", 1)[1], "allow")
            elif line.startswith("DEFAULT_OUTPUT_POLICY="):
                outgoing = UFW_POLICIES.get(line.split("=", 1)[1], "allow")
            elif line.startswith("ufw "):
                rules.append(line.removeprefix("ufw "))
        return Firewall(active, incoming, outgoing, tuple(rules))


@dataclasses.dataclass(frozen=True)
class Swap:
    """The swap areas in use and the size of one swap file.

    + active: paths of the active swap areas (``/proc/swaps``)
    + file_bytes: size of the file asked about, None when it does not exist
    """

    active: tuple[str, ...]
    file_bytes: int | None


class SwapState(FactBase[Swap]):
    """Active swap areas and the size of the swap file at ``path``.

    Never None: no swap gives ``Swap(active=(), file_bytes=None)``.
    """

    @staticmethod
    def default() -> Swap:
        return Swap((), None)

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            "tail -n +2 /proc/swaps | awk '{print \"active=\" $1}';",
            "stat -c 'size=%s'", QuoteString(path), "2>/dev/null || true",
        )

    def process(self, output: Iterable[str]) -> Swap:
        active: list[str] = []
        size: int | None = None
        for line in output:
            key, _, value = line.strip().partition("=")
            if key == "active":
                active.append(value)
            elif key == "size" and value.isdigit():
                size = int(value)
        return Swap(tuple(active), size)
