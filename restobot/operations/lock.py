"""The deploy lock and the audit log on the host (Kamal's shape).

The lock is a directory created with an atomic ``mkdir``, holding who took it,
when and why. A second deploy refuses while it exists and names the holder. A
failed deploy releases it (see ``release_lock_on_failure``); a killed one
leaves it, and ``pyinfra INVENTORY unlock.py`` releases it on purpose.

Every deploy, rollback and unlock appends one line per outcome to the audit
log: when, who, what, release, result, duration.

These operations change the host on every run by design; they are marked
``is_idempotent=False`` and named in ``NON_IDEMPOTENT_OPERATIONS`` so the
idempotence check can leave them out, as Molecule does.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pyinfra import logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.api.state import BaseStateCallback

from restobot.commands import (
    HostLayout,
    append_to_file,
    make_directory,
    read_file,
    remove_tree,
    shell,
    write_file,
)

TAKE_LOCK = "Take the deploy lock"
RELEASE_LOCK = "Release the deploy lock"
AUDIT = "Append to the audit log"
NON_IDEMPOTENT_OPERATIONS = (TAKE_LOCK, RELEASE_LOCK, AUDIT)


@dataclass(frozen=True)
class Actor:
    """Who runs this deploy, for the lock and the audit log."""

    user: str
    machine: str

    @classmethod
    def current(cls) -> Actor:
        return cls(getpass.getuser(), socket.gethostname())

    def __str__(self) -> str:
        return f"{self.user}@{self.machine}"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lock_info(actor: Actor, action: str, release: str, started: str) -> str:
    return f"holder={actor} action={action} release={release} since={started}\n"


def audit_line(actor: Actor, action: str, release: str, result: str, duration_s: float | None = None) -> str:
    duration = "" if duration_s is None else f" duration={duration_s:.1f}s"
    return f"{now()} {action} release={release} by={actor} result={result}{duration}\n"


def run(state, target, argv: list[str]) -> tuple[bool, list[str]]:
    ok, output = target.run_shell_command(shell(argv), print_output=False, print_input=False)
    return ok, [line.line for line in output]


def take_lock(state, host, layout: HostLayout, info: str) -> bool:
    # A fresh host has no base directory yet; provisioning sets its owner and mode.
    run(state, host, make_directory(layout.base_dir, parents=True))
    ok, _ = run(state, host, make_directory(layout.lock_dir))  # atomic: fails when the lock exists
    if not ok:
        _, held = run(state, host, read_file(layout.lock_info))
        holder = " ".join(held).strip() or "unknown holder"
        host.log_styled(
            f"Deploy lock found ({holder}). Another deploy or rollback is running, or one was killed. "
            f"If none is running, release it with: pyinfra INVENTORY unlock.py",
            fg="red",
            log_func=logger.error,
        )
        return False
    ok, _ = run(state, host, write_file(layout.lock_info, info))
    return ok


@operation(is_idempotent=False)
def deploy_lock_taken(layout: HostLayout, actor: Actor, action: str, release: str):
    """
    Take the deploy lock, or fail naming who holds it and since when.

    + layout: where the lock directory lives
    + actor: who takes it
    + action: deploy, rollback...
    + release: the release being deployed

    **Example:**

    .. code:: python

        deploy_lock_taken(name="Take the deploy lock", layout=HostLayout(), actor=Actor.current(),
                          action="deploy", release="v1.2.0")
    """
    info = lock_info(actor, action, release, now())
    yield FunctionCommand(take_lock, (HostLayout(layout.base_dir), info), {})


def summarize(state, host, what: str, started: float) -> bool:
    """Log what the run did on this host: its operations and how long it took."""
    results = state.get_results_for_host(host)
    changed = sum(
        1
        for op_hash, op_data in state.ops[host].items()
        if op_data.operation_meta.is_complete() and op_data.operation_meta.did_change()
        and not set(state.get_op_meta(op_hash).names) & set(NON_IDEMPOTENT_OPERATIONS)
    )
    host.log_styled(
        f"{what}: {results.success_ops} operations ran, {changed} changed the host, "
        f"{time.monotonic() - started:.1f} s",
        fg="green",
        log_func=logger.info,
    )
    return True


@operation(is_idempotent=False)
def deploy_lock_released(layout: HostLayout, summary: str | None = None, started: float | None = None):
    """
    Release the deploy lock (the end of a run, or ``unlock.py`` on purpose).

    + layout: where the lock directory lives
    + summary: what to call the run in the closing summary line (none: no summary)
    + started: ``time.monotonic()`` at the start of the run
    """
    yield shell(remove_tree(layout.lock_dir))
    if summary is not None and started is not None:
        yield FunctionCommand(summarize, (summary, started), {})


@operation(is_idempotent=False)
def audit_logged(layout: HostLayout, actor: Actor, action: str, release: str, result: str, started: float | None = None):
    """
    Append one line to the host's audit log.

    + layout: where the audit log lives
    + actor, action, release, result: what the line says
    + started: ``time.monotonic()`` at the start, to record the duration
    """
    duration = None if started is None else time.monotonic() - started
    yield shell(append_to_file(layout.audit_log, audit_line(actor, action, release, result, duration)))


class ReleaseLockOnFailure(BaseStateCallback):
    """When an operation fails after the lock was taken: audit the failure and release the lock.

    pyinfra stops running operations on a host once one fails, so the release
    cannot be an operation of its own; this callback runs the two commands
    directly on the failed host.
    """

    def __init__(self, layout: HostLayout, actor: Actor, action: str, release: str, started: float):
        self.layout, self.actor, self.action, self.release, self.started = layout, actor, action, release, started
        self.locked_hosts: set = set()

    def operation_host_success(self, state, target, op_hash, retry_count: int = 0):
        if TAKE_LOCK in state.get_op_meta(op_hash).names:
            self.locked_hosts.add(target)
        if RELEASE_LOCK in state.get_op_meta(op_hash).names:
            self.locked_hosts.discard(target)

    def operation_host_error(self, state, target, op_hash, retry_count: int = 0, max_retries: int = 0):
        if target not in self.locked_hosts or retry_count < max_retries:
            return
        self.locked_hosts.discard(target)
        names = ", ".join(state.get_op_meta(op_hash).names)
        duration = time.monotonic() - self.started
        line = audit_line(self.actor, self.action, self.release, f"failed at '{names}'", duration)
        run(state, target, append_to_file(self.layout.audit_log, line))
        run(state, target, remove_tree(self.layout.lock_dir))
        target.log_styled(f"{self.action} of {self.release} failed at '{names}'; lock released", fg="red",
                          log_func=logger.error)


def install_failure_handler(state, layout: HostLayout, actor: Actor, action: str, release: str, started: float) -> None:
    """Register the callback once per run (deploy.py is executed once per host)."""
    if any(isinstance(handler, ReleaseLockOnFailure) for handler in state.callback_handlers):
        return
    state.add_callback_handler(ReleaseLockOnFailure(layout, actor, action, release, started))


__all__ = [
    "Actor",
    "NON_IDEMPOTENT_OPERATIONS",
    "audit_logged",
    "deploy_lock_released",
    "deploy_lock_taken",
    "install_failure_handler",
]
