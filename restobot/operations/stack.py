"""The running stack: converge it on a release, import its workflows, smoke-check it,
and only then move ``current``; on any failure go back to the previous release, unless
the database was migrated past what that release knows (it could not start on it).

The activation is one operation whose single command is a Python function run
at execution time: it must react to what each remote step returns (revert on
failure, show the failing healthcheck's output), which a list of shell
commands cannot do.
"""

from __future__ import annotations

import json

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation

from restobot.commands import (
    LONG_RUNNING_SERVICES,
    HostLayout,
    compose_logs,
    compose_ps,
    compose_up,
    project_containers,
    container_health,
    container_name,
    container_rename,
    shell,
    smoke_checks,
    switch_current,
    workflow_import,
    write_file,
)
from restobot.facts.deploy import (
    AppliedMigrations,
    DatabaseUnreadable,
    DeployState,
    ReleaseManifestOnHost,
    SmokeResults,
    parse_container,
)
from restobot.release_archive import MANIFEST, ReleaseError
from restobot.remote.migrate.plan import make_plan

SMOKE_ATTEMPTS = 45  # 2 s apart: room for a first certificate and webhook registration


class StepFailed(Exception):
    """A remote step of the activation failed; the message says which and why."""


def run_step(target, argv: list[str], what: str) -> list[str]:
    ok, output = target.run_shell_command(shell(argv), print_output=False, print_input=False)
    lines = [line.line for line in output]
    if not ok:
        raise StepFailed(f"{what} failed:\n" + "\n".join(f"    {line}" for line in lines[-40:]))
    return lines


def health_report(target, release_dir: str) -> str:
    """The state of every service and, for the unhealthy ones, their last health probe and logs."""
    ok, output = target.run_shell_command(shell(compose_ps(release_dir)), print_output=False, print_input=False)
    report: list[str] = []
    for line in (item.line for item in output):
        try:
            service = json.loads(line)
        except json.JSONDecodeError:
            continue
        name, state, health = service.get("Service"), service.get("State"), service.get("Health") or "-"
        report.append(f"  {name}: {state} ({health})")
        if name in LONG_RUNNING_SERVICES and (state != "running" or health not in ("healthy", "")):
            _, probe = target.run_shell_command(
                shell(container_health(container_name(name))), print_output=False, print_input=False,
            )
            report.append(f"    last healthcheck: {' '.join(item.line for item in probe)[-600:]}")
            _, logs = target.run_shell_command(
                shell(compose_logs(release_dir, name, lines=15)), print_output=False, print_input=False,
            )
            report.extend(f"    | {item.line}" for item in logs)
    return "\n".join(report)


def restore_container_names(target) -> None:
    """Give back its compose name to any container a killed deploy left under compose's
    temporary one: operators, backups and the smoke checks address containers by name."""
    lines = run_step(target, project_containers(), "listing the project's containers")
    for container in filter(None, map(parse_container, lines)):
        if not container.misnamed:
            continue
        run_step(target, container_rename(container.name, container.canonical_name),
                 f"renaming container {container.name} to {container.canonical_name}")
        target.log_styled(f"container {container.name} renamed {container.canonical_name}",
                          fg="yellow", log_func=logger.warning)


def smoke_failures(lines: list[str]) -> list[str]:
    failures = [line for line in lines if line.startswith("FAIL ")]
    if not any(line.startswith(("PASS ", "FAIL ")) for line in lines):
        failures.append("FAIL smoke the smoke script printed no result")
    return failures


def bring_up(target, layout: HostLayout, identifier: str) -> list[str]:
    """Converge the stack on a release, import its workflows, smoke-check it. Returns smoke lines."""
    release_dir = layout.release_dir(identifier)
    try:
        run_step(target, compose_up(release_dir), f"docker compose up --wait for {identifier}")
    except StepFailed as failure:
        raise StepFailed(f"{failure}\n  services:\n{health_report(target, release_dir)}") from None
    restore_container_names(target)
    run_step(target, workflow_import(release_dir), f"workflow import for {identifier}")
    lines = run_step(target, smoke_checks(release_dir, SMOKE_ATTEMPTS), f"smoke checks of {identifier}")
    failures = smoke_failures(lines)
    if failures:
        raise StepFailed(f"smoke checks of {identifier} failed:\n" + "\n".join(f"    {line}" for line in failures))
    return lines


def activate_release(state, host, layout: HostLayout, identifier: str, previous: str | None,
                     workflows_sha256: str) -> bool:
    try:
        smoke = bring_up(host, layout, identifier)
    except StepFailed as failure:
        host.log_styled(str(failure), fg="red", log_func=logger.error)
        revert(host, layout, identifier, previous)
        return False
    for argv in switch_current(layout, identifier):
        run_step(host, argv, "switching current")
    run_step(host, write_file(layout.workflows_stamp, workflows_sha256 + "\n"), "workflow stamp")
    for line in smoke:
        host.log_styled(f"smoke {line}", fg="green", log_func=logger.info)
    return True


def read_fact(target, fact, **arguments):
    """A fact read at execution time, after the steps before it changed the host."""
    _, output = target.run_shell_command(StringCommand(fact.command(**arguments)),
                                         print_output=False, print_input=False)
    return fact.process([item.line for item in output])


def revert_blocked(target, layout: HostLayout, previous: str) -> str | None:
    """Why ``previous`` cannot run on the database as it is now (None: it can). The migration
    runner's plan decides, as for a rollback: migrations it does not know that are not marked
    backward-compatible, or a database or manifest that cannot be read, block it."""
    try:
        manifest = read_fact(target, ReleaseManifestOnHost(), release_dir=layout.release_dir(previous))
    except ReleaseError as damaged:
        return f"its manifest cannot be read, so whether it runs on this schema cannot be checked: {damaged}"
    if manifest is None:
        return f"{previous} has no {MANIFEST} on the host, so whether it runs on this schema cannot be checked"
    ledger = read_fact(target, AppliedMigrations())
    if isinstance(ledger, DatabaseUnreadable):
        return f"the database could not be read to check {previous} runs on it: {ledger.error}"
    unknown = make_plan(manifest.migrations, {row.filename: row for row in ledger or ()}).unknown
    if unknown:
        return ("the database holds migrations it does not know, not marked backward-compatible: "
                + ", ".join(row.filename for row in unknown) + "; its containers would not start on it")
    return None


def revert(target, layout: HostLayout, identifier: str, previous: str | None) -> None:
    if previous is None:
        target.log_styled("no previous release to go back to (first deploy)", fg="yellow", log_func=logger.warning)
        return
    blocked = revert_blocked(target, layout, previous)
    if blocked:
        target.log_styled(
            f"not going back to {previous}: {blocked}. Rather than a mixed stack, {identifier}'s containers "
            f"stay up (current still names {previous}). Either fix {identifier} "
            f"and deploy again, or roll back with the backup taken before {identifier} migrated "
            f"({layout.predeploy_backup(identifier)}; rows written since are lost): "
            f"pyinfra INVENTORY rollback.py --data release={previous} --data restore_backup=true",
            fg="red", log_func=logger.error,
        )
        return
    target.log_styled(f"going back to the previous release {previous}", fg="yellow", log_func=logger.warning)
    try:
        bring_up(target, layout, previous)
    except StepFailed as failure:
        target.log_styled(f"the previous release {previous} did not come back either:\n{failure}",
                          fg="red", log_func=logger.error)
        return
    target.log_styled(f"{previous} serves again", fg="yellow", log_func=logger.warning)


@operation()
def release_serving(layout: HostLayout, identifier: str, workflows_sha256: str):
    """
    Ensure the stack serves ``identifier``: services healthy, its workflows active,
    smoke checks passing, ``current`` pointing at it.

    When all of that already holds (the smoke checks run as a read-only fact),
    nothing changes. Otherwise the stack is converged on the release; if it does
    not become healthy or fails its smoke checks, the previous release is brought
    back (unless the database holds migrations it does not know: then this
    release's containers stay up and the message names the backup to restore) and
    the operation fails with the failing checks' output.

    + layout: where releases live
    + identifier: the release id (``<name>-<sha8>``)
    + workflows_sha256: the hash of the release's workflows (recorded once imported)

    **Example:**

    .. code:: python

        release_serving(name="Ensure v1.2.0 serves", layout=HostLayout(), identifier="v1.2.0-1a2b3c4d",
                        workflows_sha256=built.manifest.workflows_sha256)
    """
    current = host.get_fact(DeployState, base_dir=layout.base_dir)
    if current.serving(identifier) and current.workflows_sha256 == workflows_sha256:
        smoke = host.get_fact(SmokeResults, release_dir=layout.release_dir(identifier))
        failed = [check.name for check in smoke if not check.passed]
        if smoke and not failed:
            host.noop(f"{identifier} serves; {len(smoke)} smoke checks pass")
            return
    previous = current.current if current.current != identifier else None
    yield FunctionCommand(
        activate_release, (layout, identifier, previous, workflows_sha256), {}
    )
