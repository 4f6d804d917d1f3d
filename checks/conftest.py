"""The go-live checklist as pytest-testinfra checks (run: python -m restobot.golive --inventory FILE).

Every check gets ``target``: one host of the inventory the deploy uses, with
its validated settings, a testinfra host (paramiko, host key checked) and the
way to reach its public names from here (``settings.checks``). A check that a
human must finish calls :func:`manual`, which is reported as ``manual``,
never as a pass.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest
from pydantic import SecretStr

from restobot import golive
from restobot.commands import COMPOSE_PROJECT, HostLayout, container_exec, psql
from restobot.settings import Settings, load_settings

CHANNELS = ("whatsapp", "instagram", "messenger")
NAMES = ("api", "console")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--inventory", required=True, type=Path,
                     help="the stage's pyinfra inventory file, the same the deploy uses")


@functools.cache
def _hosts(path: str) -> list[golive.InventoryHost]:
    return golive.load_inventory_file(Path(path))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        hosts = _hosts(str(metafunc.config.getoption("--inventory").resolve()))
        metafunc.parametrize("target", hosts, ids=[host.name for host in hosts], indirect=True, scope="session")


def manual(what: str) -> NoReturn:
    """End the check as ``manual``: ``what`` says what the operator must confirm."""
    pytest.skip(f"{golive.MANUAL_PREFIX} {what}")


def container(service: str) -> str:
    return f"{COMPOSE_PROJECT}-{service}-1"


@dataclasses.dataclass
class Target:
    name: str
    data: dict[str, Any]
    settings: Settings

    @functools.cached_property
    def host(self):
        return golive.connect(self.data)

    @property
    def layout(self) -> HostLayout:
        return HostLayout(self.settings.host.base_dir)

    def public_name(self, which: str) -> str:
        return {"api": self.settings.domains.api_host, "console": self.settings.domains.console_host}[which]

    def address_for(self, which: str, *, tls: bool = True) -> tuple[str, int]:
        """Where a client connects for a public name: the override (curl --connect-to), or the name itself."""
        override = self.settings.checks.public_address if tls else self.settings.checks.public_http_address
        if override:
            return golive.split_address(override)
        return (self.public_name(which), 443 if tls else 80)

    def request(self, which: str, path: str, **kwargs: Any) -> golive.Response:
        tls = kwargs.pop("tls", True)
        return golive.http_request(
            self.public_name(which), path, address=self.address_for(which, tls=tls), tls=tls,
            ca_bundle=self.settings.checks.ca_bundle, timeout=self.settings.checks.http_timeout_seconds, **kwargs)

    def run(self, *argv: str):
        """Run argv on the VPS (each word quoted)."""
        return self.host.run(shlex.join(argv))

    def sql(self, query: str, variables: dict[str, str] | None = None) -> str:
        """One SQL statement in the stack's database; unaligned rows, '|'-separated.

        Values go in ``variables`` and appear in ``query`` as ``:'name'`` (see restobot.commands.psql).
        """
        result = self.run(*container_exec(container("postgres"), psql(query, variables)))
        assert result.rc == 0, f"psql failed ({result.rc}): {result.stderr.strip()[-300:]}"
        return result.stdout.strip()

    def sql_until(self, query: str, done, timeout: float, interval: float = 0.5,
                  variables: dict[str, str] | None = None) -> str:
        """Poll ``query`` until ``done(output)`` or ``timeout`` seconds (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.sql(query, variables)
            if done(output) or time.monotonic() >= deadline:
                return output
            time.sleep(interval)

    def container_env_sha256(self, service: str, variable: str) -> str | None:
        """sha256 of a variable in a running container's environment (None: unset); the value never leaves."""
        result = self.run("docker", "exec", container(service), "sh", "-c",
                          f'[ -n "${{{variable}+set}}" ] || exit 3; printf %s "${variable}" | sha256sum')
        if result.rc == 3:
            return None
        assert result.rc == 0, f"cannot read {variable} in {container(service)}: {result.stderr.strip()[-200:]}"
        return result.stdout.split()[0]

    def container_env(self, service: str, variable: str) -> str | None:
        """A NON-secret variable of a running container."""
        result = self.run("docker", "exec", container(service), "sh", "-c",
                          f'[ -n "${{{variable}+set}}" ] || exit 3; printf %s "${variable}"')
        if result.rc == 3:
            return None
        assert result.rc == 0, f"cannot read {variable} in {container(service)}: {result.stderr.strip()[-200:]}"
        return result.stdout

    def secrets(self) -> dict[str, str]:
        """Every secret value of the settings, by dotted path."""
        found = {}
        for section_name in type(self.settings).model_fields:
            section = getattr(self.settings, section_name)
            for field in getattr(type(section), "model_fields", {}):
                value = getattr(section, field)
                if isinstance(value, SecretStr):
                    found[f"{section_name}.{field}"] = value.get_secret_value()
        return found


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    host: golive.InventoryHost = request.param
    return Target(host.name, dict(host.data), load_settings(host.data["resto"]))


@pytest.fixture
def evidence(record_property):
    """Record what the check saw (shown as the reason of a pass in the report)."""
    return lambda text: record_property("evidence", text)


def sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
