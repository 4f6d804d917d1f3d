"""Releases on the host: uploaded once, unpacked atomically, pruned to the last N
together with the pre-deploy backups taken before them.

A release directory is ``releases/<name>-<sha8>``: the git name for people,
the archive hash so that a redeploy of the same tag with other settings (a
rotated secret) is a new directory and never overwrites one that served.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.operations import files

from restobot.commands import (
    HostLayout,
    copy_directory,
    remove_predeploy_backup,
    remove_tree,
    shell,
    unpack_release,
)
from restobot.facts.deploy import ConfigDirs, DeployState, PreDeployDump, PreDeployDumps, ReleaseManifestOnHost
from restobot.release_archive import ReleaseError, ReleaseManifest
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


@operation()
def configs_in_place(layout: HostLayout, identifier: str, mounted: Mapping[str, str]):
    """
    Ensure the release's mounted config directories are copied under ``configs/``, each named by its content.

    + layout: where releases and configs live
    + identifier: the release the copies are made from
    + mounted: the release's ``mounted_configs`` (``<key>-<hash>`` -> release path)

    **Example:**

    .. code:: python

        configs_in_place(name="Ensure v1.2.0's mounted configs are in place", layout=HostLayout(),
                         identifier="v1.2.0-1a2b3c4d", mounted=built.manifest.mounted_configs)
    """
    present = host.get_fact(ConfigDirs, configs_dir=layout.configs_dir)
    missing = sorted(set(mounted) - present)
    if not missing:
        host.noop(f"the {len(mounted)} config directories {identifier} mounts are in place")
        return
    for name in missing:
        for argv in copy_directory(f"{layout.release_dir(identifier)}/{mounted[name]}", layout.config_dir(name)):
            yield shell(argv)


def unused_configs(layout: HostLayout, kept: set[str], protected: set[str]) -> list[str]:
    """The config copies on the host that no kept release mounts; none when a kept release's manifest is damaged."""
    present = host.get_fact(ConfigDirs, configs_dir=layout.configs_dir)
    if not present - protected:
        return []
    try:
        manifests = [host.get_fact(ReleaseManifestOnHost, release_dir=layout.release_dir(identifier))
                     for identifier in sorted(kept)]
    except ReleaseError as damaged:
        host.log_styled(f"no config copy pruned: which ones a kept release mounts is unknown ({damaged})",
                        fg="yellow", log_func=logger.warning)
        return []
    return configs_to_prune(present, manifests, protected)


def configs_to_prune(present: set[str], kept_manifests: list[ReleaseManifest | None], protected: set[str]) -> list[str]:
    """The config copies no kept release mounts (nor a protected one: the release being deployed)."""
    used = set(protected).union(*(manifest.mounted_configs for manifest in kept_manifests if manifest))
    return sorted(present - used)


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
def releases_pruned(layout: HostLayout, keep: int, protected: tuple[str, ...], protected_configs: tuple[str, ...] = ()):
    """
    Ensure at most ``keep`` releases stay on the host (the newest, and every protected one),
    only the pre-deploy backups taken before them (``before-<release>.dump``), and only the
    config copies they mount.

    + layout: where releases, configs and backups live
    + keep: how many to keep
    + protected: release ids never removed (current, the previous one)
    + protected_configs: config copies never removed (those of the release being deployed, which
      may not be on the host yet when the facts are read)
    """
    state = host.get_fact(DeployState, base_dir=layout.base_dir)
    prune = releases_to_prune(list(state.releases), keep, set(protected) | {state.current})
    kept = set(state.releases) - set(prune)
    backups = backups_to_prune(layout, host.get_fact(PreDeployDumps, backups_dir=layout.backups_dir), kept)
    configs = unused_configs(layout, kept, set(protected_configs))
    if not prune and not backups and not configs:
        host.noop(f"{len(state.releases)} release(s) on the host, keeping up to {keep}")
        return
    for identifier in prune:
        yield shell(remove_tree(layout.release_dir(identifier)))
    for path in backups:
        yield shell(remove_predeploy_backup(path))
    for name in configs:
        yield shell(remove_tree(layout.config_dir(name)))
