"""Deploys onto local VPS containers with the real pyinfra CLI: what the e2e tier and the benchmarks share.

    from harness import deploys
    names = deploys.stack_names("bench")
    stack = deploys.bring_up_stack(names, workdir)        # VPS + ACME + Meta double + deploy.py once
    run = stack.deploy(source=deploys.make_checkout(workdir, "v1", {}, None))
    deploys.tear_down_stack(names)

Everything here raises :class:`HarnessError` when the harness cannot give what was
asked (a container that does not start, a first deploy that fails): the e2e tier's
conftest turns it into a test failure (never a skip), a benchmark stops with it.
A pyinfra run that fails is not an error here: :func:`run_pyinfra` returns it
(:class:`PyinfraRun`) for the caller to judge.
"""

from __future__ import annotations

import copy
import dataclasses
import http.client
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import acme as harness_acme
from harness import meta_double as harness_meta
from harness import vps as harness_vps
from harness.stage import local_stage_tree
from restobot.commands import container_name
from restobot.operations.lock import NON_IDEMPOTENT_OPERATIONS
from restobot.release_archive import SOURCE_GLOBS
from restobot.settings import REPO_ROOT, read_env_file, secrets_file

PYINFRA = Path(sys.executable).with_name("pyinfra")
KEEP_STACK_ENV = "RESTOBOT_KEEP_E2E_STACK"
"""Set to 1 to keep the e2e tier's stack (and a stack whose first deploy failed) for a look afterwards."""


class HarnessError(RuntimeError):
    """The harness could not give what was asked; the message says what and why."""


class RemoteCommandFailed(AssertionError):
    """A command run in a VPS over SSH exited non-zero (an AssertionError: in a test it is a failure)."""


# --- VPS containers ------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (for a VPS container's published 22/80/443)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_vps(name: str, ports: Sequence[int] | None = None, *, fresh: bool = True) -> harness_vps.VpsEndpoint:
    """A VPS container of its own (``fresh``: a brand new host, its docker volume too); free ports by default."""
    try:
        return harness_vps.ensure_vps_running(container=name, ports=harness_vps.VpsPorts(*(ports or free_ports(3))),
                                              fresh=fresh, out=None)
    except Exception as error:  # noqa: BLE001 - whatever stopped the harness, said with the container's name
        raise HarnessError(f"the VPS container {name} did not start: {error}") from error


def stop_vps(name: str) -> None:
    harness_vps.ensure_vps_absent(container=name, out=None)


def vps_exec(endpoint, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv ``command`` in the VPS over SSH (as root, each word quoted), return the completed process."""
    proc = subprocess.run(
        endpoint.ssh_argv(shlex.join(command)), text=True, capture_output=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RemoteCommandFailed(
            f"`{' '.join(command)}` on the VPS exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
        )
    return proc


# --- settings, inventories, deploy files ---------------------------------------------------


def local_settings(**sections: Mapping[str, Any]) -> dict[str, Any]:
    """The local stage's settings tree (harness/stage.py), with ``sections`` merged in."""
    tree = copy.deepcopy(local_stage_tree())
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return tree


def endpoint_settings(endpoint, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """Local settings pointed at ``endpoint`` (its port, login key and pinned host key).

    An endpoint without a recorded host key (a stand-in listener) gets none: not the
    default local VPS's key, which another port would not present.
    """
    ssh = {"host": endpoint.host, "port": endpoint.ssh_port, "user": endpoint.user,
           "key_path": str(endpoint.key_path), "host_key": getattr(endpoint, "host_key", None)}
    return local_settings(ssh=ssh, **sections)


def write_inventory(path: Path, settings: Mapping[str, Any], *, group: str = "local",
                    name: str = "local-vps", known_hosts: Path | None = None) -> Path:
    """Write a pyinfra inventory file holding ``settings`` (validated when pyinfra loads it)."""
    lines = [
        '"""Generated by harness/deploys.py."""',
        "import json",
        "from restobot.hosts import vps",
        f"SETTINGS = json.loads({json.dumps(json.dumps(settings))})",
        f"_name, _data = vps(SETTINGS, name={name!r})",
    ]
    if known_hosts is not None:
        lines += [
            f"_data['ssh_known_hosts_file'] = {str(known_hosts)!r}",
            "_data['ssh_strict_host_key_checking'] = 'yes'",
        ]
    lines.append(f"{group} = [(_name, _data)]")
    path.write_text("\n".join(lines) + "\n")
    return path


def stack_sql(stack: DeployedStack, query: str, **variables: str) -> str:
    """``query`` in the stack's database, values as psql variables (stdin: psql substitutes them there)."""
    argv = ["docker", "exec", "-i", container_name("postgres"), "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
            "-U", "n8n", "-d", "n8n", *(f"--set={name}={value}" for name, value in variables.items())]
    proc = subprocess.run(stack.endpoint.ssh_argv(shlex.join(argv)), input=query + "\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def checklist_inventory(stack: DeployedStack, name: str, monitoring: Mapping[str, Any] | None = None,
                        **checks: Any) -> Path:
    """The stack's inventory as the go-live checklist needs it here: the local ACME server's root as
    the trusted CA (Let's Encrypt's is trusted by default in production) and the VPS container's
    address for the exposure checks; ``monitoring`` and ``checks`` settings overridden."""
    settings = copy.deepcopy(stack.settings)
    settings["monitoring"] = {**settings.get("monitoring", {}), **(monitoring or {})}
    settings["checks"] = {
        **settings.get("checks", {}),
        "ca_bundle": str(acme_root(stack.acme, stack.workdir / "pebble-root.pem")),
        "exposure_address": container_address(stack.endpoint.container),
        **checks,
    }
    return write_inventory(stack.workdir / f"{name}.py", settings, group="e2e", name="e2e-vps")


def container_address(container: str) -> str:
    return subprocess.run(["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", container],
                          capture_output=True, text=True, check=True).stdout.strip()


def acme_root(acme, path: Path) -> Path:
    """The local ACME server's root certificate (what its certificates chain to), written to ``path``."""
    import urllib.request

    context = ssl.create_default_context(cafile=str(acme.ca_pem_path_on_host))
    with urllib.request.urlopen(acme.roots_url, context=context, timeout=10) as answer:  # noqa: S310 - local pebble
        path.write_bytes(answer.read())
    return path


def write_deploy(path: Path, body: Sequence[str]) -> Path:
    """A deploy file: the imports pyinfra deploys need, then ``body``."""
    path.write_text("\n".join(["from pyinfra import host", *body]) + "\n")
    return path


PROVISION_DEPLOY_BODY = [
    "from restobot.operations.provision import host_provisioned",
    "from restobot.settings import settings_for",
    "host_provisioned(settings_for(host))",
]
"""A deploy file's body that provisions the host only (``write_deploy(path, PROVISION_DEPLOY_BODY)``)."""


# --- the pyinfra CLI -------------------------------------------------------------------


@dataclasses.dataclass
class PyinfraRun:
    """One finished ``pyinfra`` CLI run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    payload: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.stderr + self.stdout

    @property
    def results(self) -> dict[str, Any]:
        if not self.payload or not self.payload.get("results"):
            raise AssertionError(f"pyinfra printed no results (exit {self.returncode})\n{self.output_tail()}")
        return self.payload["results"]

    @property
    def changed(self) -> list[str]:
        """Names of the operations that changed something (ran at least one command)."""
        return [op["name"] for op in self.results["operations"] if op["success"]]

    def output_tail(self, chars: int = 6000) -> str:
        return f"--- stderr (tail) ---\n{self.stderr[-chars:]}\n--- stdout (tail) ---\n{self.stdout[-chars:]}"


def changed_operations(run: PyinfraRun) -> list[str]:
    """The operations a run changed, leaving out the lock and audit ones (they change on every run)."""
    return [name for name in run.changed if name not in NON_IDEMPOTENT_OPERATIONS]


def parse_json_payload(stdout: str) -> dict[str, Any] | None:
    """The JSON document pyinfra's ``--json`` prints on stdout (None if there is none)."""
    decoder = json.JSONDecoder()
    for index in (i for i, char in enumerate(stdout) if char == "{" and (i == 0 or stdout[i - 1] == "\n")):
        try:
            payload, _ = decoder.raw_decode(stdout, index)
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict) and "results" in payload:
            return payload
    return None


def pyinfra_argv(inventory: Path, deploy: Path | str, *args: str) -> list[str]:
    return [str(PYINFRA), str(inventory), str(deploy), "-y", *args]


def run_pyinfra(inventory: Path, deploy: Path | str, *args: str, env: Mapping[str, str] | None = None,
                timeout: float = 1800) -> PyinfraRun:
    """Run ``pyinfra INVENTORY DEPLOY -y --json ARGS`` from the repo root; never raises on failure."""
    argv = pyinfra_argv(inventory, deploy, "--json", *args)
    started = time.monotonic()
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, text=True, capture_output=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    seconds = time.monotonic() - started
    return PyinfraRun(argv, proc.returncode, proc.stdout, proc.stderr, seconds, parse_json_payload(proc.stdout))


# --- a deployed stack: VPS + local ACME server + Meta double + deploy.py --------------------


@dataclasses.dataclass(frozen=True)
class StackNames:
    """The containers of one stack; the pid in them tells whose they are."""

    vps: str
    acme: str
    meta: str


def stack_names(kind: str = "e2e", pid: int | None = None) -> StackNames:
    """``restobot-{vps,acme,meta}-KIND-PID``: one stack per process (several may run at once)."""
    pid = os.getpid() if pid is None else pid
    return StackNames(*(f"restobot-{role}-{kind}-{pid}" for role in ("vps", "acme", "meta")))


def remove_stacks_of_dead_sessions(kind: str = "e2e") -> list[str]:
    """Leftovers of killed sessions: their containers are named after a pid that no longer runs."""
    prefix = f"restobot-vps-{kind}-"
    names = subprocess.run(
        ["docker", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name={prefix}"],
        capture_output=True, text=True,
    ).stdout.split()
    removed = []
    for name in names:
        pid = name.removeprefix(prefix)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tear_down_stack(stack_names(kind, int(pid)))
            removed.append(name)
    return removed


@dataclasses.dataclass
class DeployedStack:
    """A VPS container with the stack deployed by the real deploy.py, and how to reach it."""

    endpoint: Any
    inventory: Path
    settings: dict[str, Any]
    acme: Any
    meta: Any
    first_deploy: PyinfraRun
    workdir: Path
    names: StackNames | None = None

    def deploy(self, *args: str, source: Path | None = None, release: str | None = None) -> PyinfraRun:
        return run_deploy(self.inventory, *args, source=source, release=release)

    def rollback(self, release: str, *args: str) -> PyinfraRun:
        return run_pyinfra(self.inventory, REPO_ROOT / "rollback.py", "--data", f"release={release}", *args)

    def unlock(self) -> PyinfraRun:
        return run_pyinfra(self.inventory, REPO_ROOT / "unlock.py")

    def start_deploy(self, source: Path) -> subprocess.Popen:
        """deploy.py of ``source`` in the background (no --json), its output on the Popen's stdout."""
        return subprocess.Popen(
            pyinfra_argv(self.inventory, REPO_ROOT / "deploy.py", "--data", f"source={source}"),
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def ssh(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return vps_exec(self.endpoint, *command, check=check, timeout=timeout)


def run_deploy(inventory: Path, *args: str, source: Path | None = None, release: str | None = None) -> PyinfraRun:
    """deploy.py onto ``inventory``'s host: ``source`` (a checkout; default this working tree) as ``release``."""
    extra = [*args]
    if source is not None:
        extra += ["--data", f"source={source}"]
    if release is not None:
        extra += ["--data", f"release={release}"]
    return run_pyinfra(inventory, REPO_ROOT / "deploy.py", *extra)


def bring_up_stack(names: StackNames, workdir: Path, *, release: str | None = "e2e-base", source: Path | None = None,
                   group: str = "e2e", host_name: str = "e2e-vps", keep_on_failure: bool = False,
                   prepare: Callable[[Any], Mapping[str, Mapping[str, Any]]] | None = None) -> DeployedStack:
    """A fresh VPS container, the local ACME server and the Meta double beside it, and deploy.py run once onto it.

    + release: the first deploy's release name (``--data release=``); None: from ``source``'s git
    + source: the checkout to deploy (default: this repository's working tree)
    + keep_on_failure: leave the containers of a stack that did not come up (default: removed)
    + prepare: called with the VPS endpoint once it runs, before the deploy; the settings sections it
      returns are merged into the stage's tree (e.g. an off-site host the test attached to the VPS)

    Raises :class:`HarnessError` when a container does not start or the first deploy fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        endpoint = start_vps(names.vps, fresh=True)
        try:
            acme = harness_acme.ensure_acme_running(vps_container=names.vps, container=names.acme, out=None)
            meta = harness_meta.ensure_meta_double_running(vps_container=names.vps, container=names.meta, out=None)
        except Exception as error:  # noqa: BLE001
            raise HarnessError(f"the local ACME server or the Meta double did not start: {error}") from error
        settings = local_stage_tree(endpoint, acme=acme.settings(), meta=meta.settings())
        for section, values in (prepare(endpoint) if prepare else {}).items():
            settings[section] = {**settings.get(section, {}), **values}
        inventory = write_inventory(workdir / f"{group}.py", settings, group=group, name=host_name)
        first = run_deploy(inventory, source=source, release=release)
        if first.returncode != 0:
            raise HarnessError(f"the first deploy onto {names.vps} failed\n{first.output_tail()}")
    except BaseException:
        if not keep_on_failure:
            tear_down_stack(names)
        raise
    return DeployedStack(endpoint, inventory, settings, acme, meta, first, workdir, names)


def tear_down_stack(names: StackNames) -> None:
    """Remove the stack's containers (each removal is a no-op for one that is not there)."""
    harness_meta.ensure_meta_double_absent(container=names.meta, out=None)
    harness_acme.ensure_acme_absent(container=names.acme, out=None)
    stop_vps(names.vps)


# --- releases as git checkouts ---------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def with_release_header(workflows_dir: Path, value: str) -> None:
    """Make W0 answer with ``X-Release: value``: a workflow change visible from outside."""
    for path in workflows_dir.glob("*.json"):
        data = json.loads(path.read_text())
        if data["name"] != "W0_META_VERIFY_UNIFIED":
            continue
        for node in data["nodes"]:
            if node["name"] == "Answer Meta":
                node["parameters"]["options"]["responseHeaders"]["entries"].append({"name": "X-Release", "value": value})
        path.write_text(json.dumps(data, indent=2))


def make_checkout(root: Path, tag: str, migrations: Mapping[str, str], header: str | None) -> Path:
    """A git checkout of this repository's release files at ``root/tag``, tagged ``tag``.

    + migrations: extra migration files (name -> SQL)
    + header: make W0 answer with ``X-Release: header`` (None: the workflows as they are)
    """
    checkout = root / tag
    for pattern in SOURCE_GLOBS:
        for path in REPO_ROOT.glob(pattern):
            target = checkout / path.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    for name, text in migrations.items():
        (checkout / "migrations" / name).write_text(text)
    if header:
        with_release_header(checkout / "workflows", header)
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "-c", "user.email=e2e@localhost", "-c", "user.name=e2e", "commit", "-qm", tag)
    git(checkout, "tag", tag)
    return checkout


# --- talking to a deployed stack ---------------------------------------------------------------


def verify_handshake(stack, challenge: str) -> tuple[int, str, str | None]:
    """Meta's GET verify handshake through the edge: (status, body, X-Release header).

    ``make_checkout(..., header=NAME)`` makes W0 answer with ``X-Release: NAME``: which release serves."""
    token = read_env_file(secrets_file("local"))["META_VERIFY_TOKEN"]
    response, body = public_request(
        stack, "GET", f"/v1/inbound/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge={challenge}",
    )
    return response.status, body.decode(), response.getheader("X-Release")


def public_request(stack, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request to api.<domain> through the VPS's published :443 (Traefik), SNI and all: (response, body)."""
    api_host = f"api.{stack.settings['domains']['domain']}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the go-live checks verify the chain; here we test routing
    raw = socket.create_connection(("127.0.0.1", stack.endpoint.https_port), timeout=10)
    connection = http.client.HTTPConnection(api_host, timeout=20)
    connection.sock = context.wrap_socket(raw, server_hostname=api_host)
    try:
        connection.request(method, path, body=body, headers={"Host": api_host, **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    return response, payload


def sql(stack, query: str) -> str:
    """``query`` in the stack's database (psql -At: unaligned, tuples only), its output stripped."""
    return stack.ssh(
        "docker", "exec", "resto-postgres-1", "psql", "-X", "-At", "-U", "n8n", "-d", "n8n", "-c", query
    ).stdout.strip()
