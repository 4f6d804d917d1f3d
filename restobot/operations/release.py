"""Releases on the host: uploaded once, unpacked atomically, pruned to the last N
together with the pre-deploy backups taken before them.

A release directory is ``releases/<name>-<sha8>``: the git name for people,
the archive hash so that a redeploy of the same tag with other settings (a
rotated secret) is a new directory and never overwrites one that served.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.operations import files

from restobot.commands import HostLayout, remove_predeploy_backup, remove_tree, shell, unpack_release
from restobot.facts.deploy import DeployState, PreDeployDump, PreDeployDumps
from restobot.render import CONTAINER_OWNED_FILES


def release_id(name: str, sha256: str) -> str:
    return f"{name}-{sha256[:8]}"


def report_failure(state, host, message: str) -> bool:
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


def failure(message: str) -> FunctionCommand:
    """A command that fails the operation with ``message`` (pyinfra prints no traceback for it).

    Unlike an exception raised by an operation, which pyinfra 3 raises while it executes the
    operation, past the failure callbacks, it fails the operation: the deploy lock is released."""
    return FunctionCommand(report_failure, (message,), {})


@operation()
def release_unpacked(layout: HostLayout, release: str, sha256: str, archive: Path, owner: str):
    """
    Ensure a release's files are unpacked under ``releases/`` on the host.

    + layout: where releases live
    + release: the release's git name (tag or commit)
    + sha256: the archive's hash, which names and stamps the directory
    + archive: the local archive (holds the env files: uploaded 0600)
    + owner: the deploy user who owns the unpacked files

    **Example:**

    .. code:: python

        release_unpacked(name="Ensure release v1.2.0 is on the host", layout=HostLayout(),
                         release="v1.2.0", sha256=built.sha256, archive=path, owner="deploy")
    """
    identifier = release_id(release, sha256)
    state = host.get_fact(DeployState, base_dir=layout.base_dir)
    if state.releases.get(identifier) == sha256.strip():
        host.noop(f"release {identifier} is already on the host")
        return
    remote_archive = f"{layout.incoming_dir}/{identifier}.tar.gz"
    yield from files.put._inner(src=str(archive), dest=remote_archive, mode="600")
    for argv in unpack_release(layout, remote_archive, identifier, sha256, owner, CONTAINER_OWNED_FILES):
        yield shell(argv)


def releases_to_prune(newest_first: list[str], keep: int, protected: set[str]) -> list[str]:
    """The oldest releases beyond ``keep``, never a protected one (current, the one just deployed)."""
    kept = 0
    prune = []
    for identifier in newest_first:
        if identifier in protected or kept < keep:
            kept += 1
            continue
        prune.append(identifier)
    return prune


def backups_to_prune(layout: HostLayout, dumps: list[PreDeployDump], kept: set[str]) -> list[str]:
    """The pre-deploy backups taken before a release no longer kept (pruned now, or gone already).

    Only a dump at the path its metadata names is touched: one whose release is unknown stays.
    """
    return [dump.path for dump in dumps
            if dump.before_release not in kept and dump.path == layout.predeploy_backup(dump.before_release)]


@operation()
def releases_pruned(layout: HostLayout, keep: int, protected: tuple[str, ...]):
    """
    Ensure at most ``keep`` releases stay on the host (the newest, and every protected one),
    and only the pre-deploy backups taken before them (``before-<release>.dump``).

    + layout: where releases and backups live
    + keep: how many to keep
    + protected: release ids never removed (current, the previous one)
    """
    state = host.get_fact(DeployState, base_dir=layout.base_dir)
    prune = releases_to_prune(list(state.releases), keep, set(protected) | {state.current})
    kept = set(state.releases) - set(prune)
    backups = backups_to_prune(layout, host.get_fact(PreDeployDumps, backups_dir=layout.backups_dir), kept)
    if not prune and not backups:
        host.noop(f"{len(state.releases)} release(s) on the host, keeping up to {keep}")
        return
    for identifier in prune:
        yield shell(remove_tree(layout.release_dir(identifier)))
    for path in backups:
        yield shell(remove_predeploy_backup(path))
