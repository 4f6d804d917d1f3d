"""Import the n8n workflows of ``workflows/`` and make them live, idempotently.

Pure builders (the argv of every command, the JSON sent to n8n, the plan of
what changes) are kept apart from the thin executors that run them, so the
same plan runs against a local docker compose project, a container started by
a test, or the VPS over SSH (``docker compose exec`` behind an ``ssh`` prefix).

How a workflow becomes live on n8n 2.40 (see ../shared/N8N.md and the report
of issue 4):

* ``n8n import:workflow`` upserts by the ``id`` in the JSON (stable ids, no
  duplicates) and with ``--activeState=fromJson`` publishes the workflows whose
  JSON says ``active: true``; sub-workflows first (n8n refuses to publish a
  caller whose sub-workflow is unpublished).
* A running n8n main does not reliably pick up webhooks published by another
  process (verified: GET webhooks came up, the POST ones stayed 404 until a
  restart). So after any change the importer restarts n8n main and polls every
  webhook route until it answers from the workflow (not n8n's 404).
* Nothing changed -> nothing is imported and nothing restarts.

Change detection: each imported workflow carries ``meta.restobot_sha256``, the
hash of its canonical content; ``status`` compares it with the files.

Runs on the VPS as a lone file of the release, with the host's ``python3``
(standard library only; it imports nothing of ``restobot``)::

    python3 RELEASE/restobot/remote/workflows.py import --dir RELEASE/workflows --compose-dir RELEASE ...

CLI::

    python -m restobot.remote.workflows status [--dir DIR] TARGET
    python -m restobot.remote.workflows import [--dir DIR] TARGET
    TARGET: --compose-dir DIR [--compose-file FILE]... [--ssh HOST]
            | --container SERVICE=NAME ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]  # restobot/remote/workflows.py -> the repo or release
WORKFLOWS_DIR = REPO_ROOT / "workflows"
MAIN_SERVICE = "n8n-main"
HASH_KEY = "restobot_sha256"
EXPORT_PATH = "/tmp/restobot-workflows-export.json"
IMPORT_PATH = "/tmp/restobot-workflows-import.json"

# Credentials the workflows reference. They hold NO data: n8n fills every empty
# field from CREDENTIALS_OVERWRITE_DATA (rendered by the deploy from APP_DB_* and
# the Redis settings), in main and worker alike.
CREDENTIAL_STUBS: tuple[dict, ...] = (
    {"id": "RbCredPostgres01", "name": "Resto Bot app database", "type": "postgres", "data": {}},
    {"id": "RbCredRedis00001", "name": "Resto Bot Redis", "type": "redis", "data": {}},
)

# Every variable the workflows read with $env, plus what the n8n processes need
# for the workflows to run. The n8n env template must define all of them.
WORKFLOW_ENV_VARS: tuple[str, ...] = (
    "META_VERIFY_TOKEN",
    "META_APP_SECRET",
    "META_SIGNATURE_REQUIRED",
    "WA_API_TOKEN",
    "WA_PHONE_NUMBER_ID",
    "IG_API_TOKEN",
    "IG_ACCOUNT_ID",
    "MSG_API_TOKEN",
    "MSG_PAGE_ID",
    "REPLAY_CHECK_ENABLED",
    "RATE_LIMIT_PER_30S",
    "DLQ_ALERT_THRESHOLD",
    "ALERT_WEBHOOK_URL",
    "GRAPH_API_BASE_URL",
    "GRAPH_API_VERSION",
    "OUTBOUND_MAX_RETRIES",
    "OUTBOUND_RETRY_BASE_SECONDS",
    "OUTBOUND_ON_UNCERTAIN_SEND",
    "OUTBOUND_LEASE_SECONDS",
    "INBOUND_REDRIVE_AFTER_SECONDS",
    "LEGACY_SHARED_TOKEN",
    "RESTAURANT_NAME",
    "RESTAURANT_ADDRESS",
    "RESTAURANT_HOURS",
    "RESTAURANT_MENU_URL",
    "RESTAURANT_DEFAULT_LOCALE",
    # n8n itself: $env readable, node:crypto allowed, credentials filled in.
    "N8N_BLOCK_ENV_ACCESS_IN_NODE",
    "NODE_FUNCTION_ALLOW_BUILTIN",
    "CREDENTIALS_OVERWRITE_DATA",
)

# Webhook routes and the probe that proves each is served by its workflow.
# The probe header makes the workflow answer 200 without storing anything.
PROBE_HEADER = ("x-restobot-probe", "deploy")
WEBHOOK_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "v1/inbound/whatsapp"),
    ("GET", "v1/inbound/instagram"),
    ("GET", "v1/inbound/messenger"),
    ("POST", "v1/inbound/whatsapp"),
    ("POST", "v1/inbound/instagram"),
    ("POST", "v1/inbound/messenger"),
    ("POST", "v1/admin/dlq/replay"),
)


class WorkflowError(RuntimeError):
    """A workflow file, an n8n command or the final liveness check failed."""


# --- pure: files, hashes, plan ----------------------------------------------


@dataclass(frozen=True)
class WorkflowFile:
    path: Path
    data: dict

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def active(self) -> bool:
        return bool(self.data.get("active"))

    @property
    def sha256(self) -> str:
        return content_hash(self.data)


def content_hash(data: dict) -> str:
    """sha256 of what n8n runs: name, active flag, nodes, connections, settings."""
    canonical = {key: data.get(key) for key in ("name", "active", "nodes", "connections", "settings")}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def load_workflows(directory: Path = WORKFLOWS_DIR) -> list[WorkflowFile]:
    """Read every ``*.json`` of ``directory``; each must have a stable id and a unique name."""
    files = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise WorkflowError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise WorkflowError(f"{path}: needs a stable string 'id' (without one every import adds a duplicate)")
        if not 0 < len(data["id"]) <= 21:
            raise WorkflowError(f"{path}: id '{data['id']}' must be 1 to 21 characters (n8n's limit)")
        files.append(WorkflowFile(path, data))
    for attr in ("id", "name"):
        seen: dict[str, Path] = {}
        for wf in files:
            value = getattr(wf, attr)
            if value in seen:
                raise WorkflowError(f"{wf.path}: {attr} '{value}' already used by {seen[value]}")
            seen[value] = wf.path
    if not files:
        raise WorkflowError(f"{directory}: no workflow files (*.json)")
    return files


def stamped(wf: WorkflowFile) -> dict:
    """The JSON sent to n8n: the file plus its content hash in ``meta``."""
    data = json.loads(json.dumps(wf.data))
    data.setdefault("meta", {})[HASH_KEY] = wf.sha256
    return data


@dataclass(frozen=True)
class DeployedWorkflow:
    id: str
    name: str
    published: bool
    sha256: str | None


def parse_export(text: str) -> dict[str, DeployedWorkflow]:
    """What ``n8n export:workflow --all`` wrote, keyed by id ('' or no file: none)."""
    if not text.strip():
        return {}
    items = json.loads(text)
    if isinstance(items, dict):
        items = [items]
    result = {}
    for item in items:
        meta = item.get("meta") or {}
        result[item["id"]] = DeployedWorkflow(
            id=item["id"],
            name=item.get("name", ""),
            published=item.get("activeVersionId") is not None or bool(item.get("active")),
            sha256=meta.get(HASH_KEY),
        )
    return result


@dataclass(frozen=True)
class ImportPlan:
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    activated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    deactivated: tuple[str, ...] = ()  # managed (hash-stamped) workflows no longer in the release
    to_import: tuple[WorkflowFile, ...] = field(default=(), repr=False)
    stale_ids: tuple[str, ...] = field(default=(), repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.to_import or self.stale_ids)

    def summary(self) -> dict[str, list[str]]:
        return {
            "created": list(self.created),
            "updated": list(self.updated),
            "activated": list(self.activated),
            "deactivated": list(self.deactivated),
            "unchanged": list(self.unchanged),
        }


def plan_import(desired: Sequence[WorkflowFile], deployed: dict[str, DeployedWorkflow]) -> ImportPlan:
    """Decide what to import: new ids, changed content, or should-be-active but unpublished."""
    created, updated, activated, unchanged, to_import = [], [], [], [], []
    for wf in desired:
        current = deployed.get(wf.id)
        if current is None:
            created.append(wf.name)
            to_import.append(wf)
        elif current.sha256 != wf.sha256:
            updated.append(wf.name)
            to_import.append(wf)
        elif wf.active and not current.published:
            activated.append(wf.name)
            to_import.append(wf)
        else:
            unchanged.append(wf.name)
    wanted = {wf.id for wf in desired}
    stale = [d for d in deployed.values() if d.id not in wanted and d.sha256 and d.published]
    return ImportPlan(
        created=tuple(created),
        updated=tuple(updated),
        activated=tuple(activated),
        unchanged=tuple(unchanged),
        deactivated=tuple(d.name for d in stale),
        to_import=tuple(to_import),
        stale_ids=tuple(d.id for d in stale),
    )


# --- pure: commands ------------------------------------------------------------


def export_argv() -> list[str]:
    """Export every workflow to a file and print it (n8n logs to stdout too)."""
    script = (
        f"rm -f {EXPORT_PATH}; n8n export:workflow --all --output={EXPORT_PATH} >/dev/null 2>&1; "
        f"if [ -f {EXPORT_PATH} ]; then cat {EXPORT_PATH}; rm -f {EXPORT_PATH}; fi"
    )
    return ["sh", "-c", script]


def import_credentials_argv() -> list[str]:
    return ["sh", "-c", f"cat > {IMPORT_PATH} && n8n import:credentials --input={IMPORT_PATH}; "
            f"rc=$?; rm -f {IMPORT_PATH}; exit $rc"]


def import_workflows_argv() -> list[str]:
    return ["sh", "-c", f"cat > {IMPORT_PATH} && n8n import:workflow --input={IMPORT_PATH} "
            f"--activeState=fromJson; rc=$?; rm -f {IMPORT_PATH}; exit $rc"]


def unpublish_argv(workflow_id: str) -> list[str]:
    return ["n8n", "unpublish:workflow", f"--id={workflow_id}"]


def import_body(workflows: Iterable[WorkflowFile]) -> bytes:
    return json.dumps([stamped(wf) for wf in workflows], ensure_ascii=False).encode()


def credentials_body() -> bytes:
    return json.dumps(list(CREDENTIAL_STUBS)).encode()


# A route whose workflow has not answered after PENDING_AFTER_MS is reported 102 (Processing): n8n
# found the webhook (an unregistered one is a 404 at once) and queued its execution, which waits
# behind the messages the workers are busy with. Registration is what the importer waits for; a
# backlog is not a failed deploy. n8n's /healthz/readiness answering 200, before and after, shows
# the main process is up and not stuck: while n8n migrates at start it answers every other path 200
# ("n8n is starting up"), which must not be taken for a workflow's answer.
PENDING_AFTER_MS = 10_000
PENDING = 102
NOT_ANSWERED = 0

PROBE_JS = r"""
const routes = JSON.parse(process.argv[1]);
const [name, value] = JSON.parse(process.argv[2]);
const pendingAfter = Number(process.argv[3]);
const base = process.argv[4];
const [pending, notAnswered] = [Number(process.argv[5]), Number(process.argv[6])];
const status = async (url, options) => {
  try {
    return (await fetch(url, { ...options, signal: AbortSignal.timeout(pendingAfter) })).status;
  } catch (error) {
    return error.name === 'TimeoutError' ? pending : notAnswered;
  }
};
const ready = async () => (await status(`${base}/healthz/readiness`, {})) === 200;
(async () => {
  const out = {};
  if (!(await ready())) {
    routes.forEach(([method, path]) => { out[`${method} ${path}`] = notAnswered; });
  } else {
    const codes = await Promise.all(routes.map(([method, path]) =>
      status(`${base}/webhook/${path}`, { method, headers: { [name]: value } })));
    const stillReady = await ready();
    routes.forEach(([method, path], i) => {
      out[`${method} ${path}`] = codes[i] === pending && !stillReady ? notAnswered : codes[i];
    });
  }
  console.log(JSON.stringify(out));
})();
"""


def probe_argv(routes: Sequence[tuple[str, str]] = WEBHOOK_ROUTES, base: str = "http://127.0.0.1:5678") -> list[str]:
    """Ask every webhook route from inside n8n main, at once, once n8n says it is ready: 200, its
    workflow answered; PENDING, registered, its execution still queued; 404, not registered;
    NOT_ANSWERED, no answer or n8n not ready."""
    return ["node", "-e", PROBE_JS, json.dumps(routes), json.dumps(PROBE_HEADER), str(PENDING_AFTER_MS), base,
            str(PENDING), str(NOT_ANSWERED)]


def credentials_overwrite_data(
    *, db_host: str, db_port: int, db_name: str, db_user: str, db_password: str,
    redis_host: str, redis_port: int = 6379, redis_password: str = "", redis_db: int = 0,
) -> str:
    """The value of CREDENTIALS_OVERWRITE_DATA that fills the credential stubs."""
    return json.dumps({
        "postgres": {"host": db_host, "port": db_port, "database": db_name, "user": db_user,
                     "password": db_password, "ssl": "disable"},
        "redis": {"host": redis_host, "port": redis_port, "password": redis_password, "database": redis_db},
    }, separators=(",", ":"))


# --- executors ----------------------------------------------------------------


COMMAND_TIMEOUT = 300.0


CLI_ATTEMPTS = 3
"""An n8n CLI command killed by a signal (exit 128+N, e.g. 139: the segfault seen under load) is
run again: every command the importer sends is idempotent (imports upsert by id)."""


class Target(Protocol):
    """Where n8n runs: run a command in a service's container, run n8n's CLI, restart a service."""

    def exec(self, service: str, argv: Sequence[str], stdin: bytes | None = None,
             timeout: float = COMMAND_TIMEOUT) -> str: ...

    def cli(self, service: str, argv: Sequence[str], stdin: bytes | None = None,
            timeout: float = COMMAND_TIMEOUT) -> str: ...

    def restart(self, service: str) -> None: ...


Runner = Callable[[Sequence[str], bytes | None, float], subprocess.CompletedProcess]


def run_local(argv: Sequence[str], stdin: bytes | None = None,
              timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a command here; one that outlives ``timeout`` is a WorkflowError, never a hang or a traceback."""
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkflowError(f"command still running after {timeout:.0f} s: {' '.join(argv[:6])} ...") from None


def killed_by_signal(returncode: int) -> bool:
    """Killed by a signal: Python's negative code, or a shell's or docker's 128+N."""
    return returncode < 0 or returncode > 128


def _checked(result: subprocess.CompletedProcess, argv: Sequence[str]) -> str:
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or b"").decode(errors="replace")[-2000:]
        raise WorkflowError(f"command failed ({result.returncode}): {' '.join(argv[:6])} ...\n{tail}")
    return result.stdout.decode(errors="replace")


class ArgvTarget:
    """A target that builds an argv per action (``exec_argv``, ``cli_argv``, ``restart_argv``)
    and runs it with ``runner``."""

    runner: Runner
    say: Callable[[str], None]

    def exec_argv(self, service: str, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def cli_argv(self, service: str, argv: Sequence[str]) -> list[str]:
        return self.exec_argv(service, argv)

    def restart_argv(self, service: str) -> list[str]:
        raise NotImplementedError

    def exec(self, service: str, argv: Sequence[str], stdin: bytes | None = None,
             timeout: float = COMMAND_TIMEOUT) -> str:
        full = self.exec_argv(service, argv)
        return _checked(self.runner(full, stdin, timeout), full)

    def cli(self, service: str, argv: Sequence[str], stdin: bytes | None = None,
            timeout: float = COMMAND_TIMEOUT) -> str:
        full = self.cli_argv(service, argv)
        for attempt in range(1, CLI_ATTEMPTS + 1):
            result = self.runner(full, stdin, timeout)
            if not killed_by_signal(result.returncode) or attempt == CLI_ATTEMPTS:
                break
            self.say(f"n8n's CLI was killed by a signal (exit {result.returncode}); "
                     f"running it again ({attempt + 1}/{CLI_ATTEMPTS})...")
        return _checked(result, full)

    def restart(self, service: str) -> None:
        full = self.restart_argv(service)
        _checked(self.runner(full, None, COMMAND_TIMEOUT), full)


def _quiet(_: str) -> None:
    pass


@dataclass
class ComposeTarget(ArgvTarget):
    """A docker compose project (on this machine, or behind ``ssh_prefix``).

    n8n's CLI runs in a one-off container of the service (``compose run --rm --no-deps``),
    not inside the serving one: a second n8n process beside the one answering Meta was
    what crashed under traffic, and the intake does not share its memory with an import."""

    project_dir: str
    compose_files: tuple[str, ...] = ()
    ssh_prefix: tuple[str, ...] = ()
    runner: Runner = run_local
    say: Callable[[str], None] = _quiet

    def _base(self) -> list[str]:
        argv = [*self.ssh_prefix, "docker", "compose", "--project-directory", self.project_dir]
        for name in self.compose_files:
            argv += ["-f", name]
        return argv

    def exec_argv(self, service: str, argv: Sequence[str]) -> list[str]:
        return [*self._base(), "exec", "-T", service, *argv]

    def cli_argv(self, service: str, argv: Sequence[str]) -> list[str]:
        command, *arguments = argv
        return [*self._base(), "run", "--rm", "--no-deps", "-T", "--entrypoint", command, service, *arguments]

    def restart_argv(self, service: str) -> list[str]:
        return [*self._base(), "restart", service]


@dataclass
class ContainerTarget(ArgvTarget):
    """Plain containers by name (what the tests start): service -> container."""

    containers: dict[str, str]
    runner: Runner = run_local
    say: Callable[[str], None] = _quiet

    def exec_argv(self, service: str, argv: Sequence[str]) -> list[str]:
        return ["docker", "exec", "-i", self.containers[service], *argv]

    def restart_argv(self, service: str) -> list[str]:
        return ["docker", "restart", "-t", "20", self.containers[service]]


# --- sequencing -----------------------------------------------------------------


def read_deployed(target: Target, service: str = MAIN_SERVICE) -> dict[str, DeployedWorkflow]:
    return parse_export(target.cli(service, export_argv()))


PROBE_TIMEOUT = 30.0  # one round of probes; n8n main may be starting, or the host loaded


def probe(target: Target, service: str = MAIN_SERVICE) -> dict[str, int]:
    out = target.exec(service, probe_argv(), timeout=PROBE_TIMEOUT).strip().splitlines()
    return json.loads(out[-1]) if out else {}


def wait_until_live(target: Target, service: str = MAIN_SERVICE, timeout: float = 120.0,
                    say: Callable[[str], None] = lambda _: None) -> dict[str, int]:
    """Poll every webhook route until each is registered: answered 200 from its workflow, or PENDING."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            last = probe(target, service)
        except WorkflowError:
            last = {}
        if last and all(code in (200, PENDING) for code in last.values()):
            return last
        time.sleep(1.0)
    missing = {route: code for route, code in last.items() if code not in (200, PENDING)} or "n8n main not answering"
    raise WorkflowError(f"webhooks not live after {timeout:.0f} s: {missing}. "
                        f"Check 'docker compose logs {service}'.")


def status(target: Target, directory: Path = WORKFLOWS_DIR, service: str = MAIN_SERVICE) -> ImportPlan:
    return plan_import(load_workflows(directory), read_deployed(target, service))


# n8n main restarted on a loaded 2-CPU VPS took up to 3 min to register its webhooks again under
# traffic; giving up sooner turns a slow start into a revert, which restarts it once more.
LIVE_TIMEOUT = 300.0


def import_workflows(target: Target, directory: Path = WORKFLOWS_DIR, service: str = MAIN_SERVICE,
                     say: Callable[[str], None] = lambda _: None, live_timeout: float = LIVE_TIMEOUT) -> ImportPlan:
    """Import what changed, publish, restart main if anything changed, and wait until live."""
    desired = load_workflows(directory)
    plan = plan_import(desired, read_deployed(target, service))
    if not plan.changed:
        say(f"Workflows unchanged ({len(plan.unchanged)}); checking the webhooks...")
        wait_until_live(target, service, timeout=live_timeout)
        return plan
    say("Importing the credential stubs...")
    target.cli(service, import_credentials_argv(), credentials_body())
    if plan.to_import:
        say(f"Importing {len(plan.to_import)} workflow(s): {', '.join(wf.name for wf in plan.to_import)}...")
        target.cli(service, import_workflows_argv(), import_body(plan.to_import))
    for workflow_id in plan.stale_ids:
        say(f"Unpublishing {workflow_id}, no longer in this release...")
        target.cli(service, unpublish_argv(workflow_id))
    say(f"Restarting {service} so that it registers the webhooks...")
    target.restart(service)
    wait_until_live(target, service, timeout=live_timeout)
    after = read_deployed(target, service)
    not_live = [wf.name for wf in desired if wf.active and not (after.get(wf.id) and after[wf.id].published)]
    if not_live:
        raise WorkflowError(f"imported but not published: {', '.join(not_live)}; see 'docker compose logs {service}'")
    say("Workflows live.")
    return plan


# --- CLI ------------------------------------------------------------------------------


def _target_from_args(args: argparse.Namespace) -> Target:
    if args.container:
        mapping = dict(item.split("=", 1) for item in args.container)
        return ContainerTarget(mapping)
    if args.compose_dir:
        ssh = ("ssh", args.ssh) if args.ssh else ()
        return ComposeTarget(args.compose_dir, tuple(args.compose_file or ()), ssh, say=_to_stderr)
    raise SystemExit("give a target: --compose-dir DIR (docker compose project) or --container SERVICE=NAME")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m restobot.remote.workflows", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("import", "status"))
    parser.add_argument("--dir", type=Path, default=WORKFLOWS_DIR, help="workflows directory (default: %(default)s)")
    parser.add_argument("--service", default=MAIN_SERVICE, help="n8n main service (default: %(default)s)")
    parser.add_argument("--compose-dir", help="docker compose project directory")
    parser.add_argument("--compose-file", action="append", help="compose file (repeatable)")
    parser.add_argument("--ssh", help="run docker compose on this SSH host")
    parser.add_argument("--container", action="append", help="SERVICE=CONTAINER (repeatable)")
    parser.add_argument("--exit-code", action="store_true", help="status: exit 3 when something would change")
    args = parser.parse_args(argv)
    target = _target_from_args(args)
    try:
        if args.command == "status":
            plan = status(target, args.dir, args.service)
            print(json.dumps(plan.summary(), indent=2))
            return 3 if args.exit_code and plan.changed else 0
        plan = import_workflows(target, args.dir, args.service, say=_to_stderr)
        print(json.dumps(plan.summary(), indent=2))
        return 0
    except WorkflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
