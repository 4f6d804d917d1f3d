"""Build a release on the operator's machine: one archive, checked by one hash.

A release is everything the host needs to run one version of the stack: the
rendered configs and env files, the migrations and the migrate image's build
context, the workflows, the programs that run on the host (restobot/remote/),
the smoke script and a manifest. It is named by the git tag (or commit) it was
built from, and its archive is byte-for-byte reproducible, so the same checkout
and settings give the same hash and a redeploy with nothing changed uploads
nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from pyinfra.api.exceptions import DeployError

from restobot.remote.migrate.lexer import BACKWARD_COMPATIBLE_MARKER, header_has
from restobot.render import (
    MOUNTED_CONFIGS,
    OffsiteKeyUnreadable,
    RenderContext,
    RenderedFile,
    config_mounts,
    release_entries,
    render_release,
)
from restobot.settings import REPO_ROOT, Settings

MANIFEST = "RELEASE.json"
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The programs that run on the VPS, the one route by which they reach it: the package
# restobot.remote and the (import-free) package file that makes ``restobot`` importable,
# so `python3 -m restobot.remote.migrate` runs from a release directory (or the image).
REMOTE_GLOBS = ("restobot/__init__.py", "restobot/remote/**/*.py")
# Files copied verbatim from the checkout into every release.
SOURCE_GLOBS = (
    "migrations/*.sql",
    "workflows/*.json",
    "docker/migrate/*",
    "docker/n8n/*",
    "docker/postgres-pgbackrest/*",
    *REMOTE_GLOBS,
    "templates/smoke.sh",
)
# What docker/migrate/Dockerfile copies from the release (its build inputs, which tag the image).
MIGRATE_CONTEXT = ("docker/migrate/", "migrations/", "restobot/__init__.py", "restobot/remote/")
# What docker/postgres-pgbackrest/Dockerfile copies (the postgres image when offsite_backup is enabled).
POSTGRES_PGBACKREST_CONTEXT = ("docker/postgres-pgbackrest/",)


class ReleaseError(DeployError, ValueError):
    """The checkout cannot be released as asked (pyinfra prints it without a traceback)."""


@dataclass(frozen=True)
class MigrationInfo:
    """One migration file of a release (a ``ReleaseFile`` of restobot/remote/migrate/plan.py).

    + filename: its name under ``migrations/`` (the ledger's key)
    + sha256: the hash of its content
    + backward_compatible: marked ``-- migrate:backward-compatible`` (an older release runs on it)
    """

    filename: str
    sha256: str
    backward_compatible: bool

    @property
    def checksum(self) -> str:
        """``sha256`` under the ledger's name for it (what the migration plan compares)."""
        return self.sha256


class ReleaseManifest(BaseModel):
    """What a release is, written into it as ``RELEASE.json`` and read back from the host.

    The JSON keeps these keys, so that every release on a host, whichever code
    built it, can be rolled back to; a key added later needs a default. Keys
    this code does not know are ignored (a release built by newer code).

    + name: the git name it was built from (``v1.2.0``, ``g1a2b3c4d5e6f-dirty``)
    + stage: the settings' stage (``production``, ``local``...)
    + commit: the full commit hash; None when built outside a git checkout
    + migrate_image: the migrate image's reference (tagged by its build inputs)
    + images: the settings' ``images`` section less ``bundle_dir`` (key -> reference)
    + migrations: every migration of the release, ordered by file name
    + workflows_sha256: the hash of ``workflows/*.json``
    + config_sha256: the hash of every rendered file
    + mounted_configs: the release directories containers mount, as copied on the host under
      ``configs/``: ``<key>-<hash>`` -> the release path (none in releases built before them)
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    stage: str
    commit: str | None
    migrate_image: str
    images: dict[str, str]
    migrations: tuple[MigrationInfo, ...]
    workflows_sha256: str
    config_sha256: str
    mounted_configs: dict[str, str] = {}

    def to_json(self) -> str:
        """The ``RELEASE.json`` text: keys sorted, two-space indent, a final newline (and no ``mounted_configs``
        when there are none: such a release reads and writes as the code before them did)."""
        exclude = set() if self.mounted_configs else {"mounted_configs"}
        return json.dumps(self.model_dump(mode="json", exclude=exclude), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST) -> ReleaseManifest:
        """Read a ``RELEASE.json``; ``source`` (its path) names it in the error."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or '(top)'}: {item['msg']}" for item in error.errors()
            )
            raise ReleaseError(
                f"{source}: not a release manifest ({problems}); the release is damaged: deploy it again"
            ) from None


@dataclass(frozen=True)
class Release:
    """A built release: its name, manifest and archive bytes (which hold secrets)."""

    name: str
    manifest: ReleaseManifest
    archive: bytes = field(repr=False)
    # The postgres image with pgBackRest the host builds (offsite_backup enabled), else None.
    postgres_image: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()

    @property
    def migrate_image(self) -> str:
        return self.manifest.migrate_image

    def write_archive(self, directory: Path) -> Path:
        """Write the archive into ``directory`` readable by its owner only."""
        path = directory / f"{self.name}.tar.gz"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(self.archive)
        return path


def git(*args: str, cwd: Path = REPO_ROOT) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def release_name_from_git(cwd: Path = REPO_ROOT) -> str:
    """The exact tag of HEAD, else ``g<commit>``; a dirty tree gets ``-dirty``."""
    tag = git("describe", "--tags", "--exact-match", "HEAD", cwd=cwd)
    name = tag or (f"g{git('rev-parse', '--short=12', 'HEAD', cwd=cwd)}" if git("rev-parse", "HEAD", cwd=cwd) else "")
    if not name:
        raise ReleaseError(f"{cwd}: not a git checkout with a commit; name the release with --data release=NAME")
    if git("status", "--porcelain", "--untracked-files=no", cwd=cwd):
        name += "-dirty"
    return name


def check_release_name(name: str) -> str:
    if not RELEASE_NAME.match(name):
        raise ReleaseError(
            f"release '{name}': must be letters, digits, '.', '_' or '-' (at most 64), e.g. v1.2.0"
        )
    return name


def source_files(root: Path, globs=SOURCE_GLOBS) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for pattern in globs:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def migrations_of(files: dict[str, bytes]) -> list[MigrationInfo]:
    return [
        MigrationInfo(
            filename=path.removeprefix("migrations/"),
            sha256=hashlib.sha256(content).hexdigest(),
            backward_compatible=header_has(content.decode(errors="replace"), BACKWARD_COMPATIBLE_MARKER),
        )
        for path, content in sorted(files.items())
        if path.startswith("migrations/")
    ]


def digest(files: dict[str, bytes], extra: str = "") -> str:
    hasher = hashlib.sha256(extra.encode())
    for path in sorted(files):
        hasher.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return hasher.hexdigest()


def migrate_image_name(files: dict[str, bytes], base_image: str) -> str:
    """The migrate image is tagged by its build inputs: unchanged inputs, no rebuild."""
    context = {path: content for path, content in files.items() if path.startswith(MIGRATE_CONTEXT)}
    return f"restobot/migrate:{digest(context, base_image)[:12]}"


def postgres_image_name(files: dict[str, bytes], base_image: str) -> str:
    """The postgres-with-pgBackRest image, tagged by its build inputs and base like the migrate image."""
    context = {path: content for path, content in files.items() if path.startswith(POSTGRES_PGBACKREST_CONTEXT)}
    return f"restobot/postgres-pgbackrest:{digest(context, base_image)[:12]}"


def deterministic_tar(entries: dict[str, tuple[bytes, int]]) -> bytes:
    """A gzip'd tar whose bytes depend only on the entries (no times, owners or order)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(entries):
            content, mode = entries[path]
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(content))
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as zipped:
        zipped.write(raw.getvalue())
    return compressed.getvalue()


def build_release(settings: Settings, name: str, root: Path = REPO_ROOT) -> Release:
    """Render and package one release of ``root`` for ``settings``."""
    check_release_name(name)
    files = source_files(root)
    missing = [pattern for pattern in ("migrations/*.sql", "workflows/*.json", "docker/migrate/*") if not any(
        Path(path).match(pattern) for path in files
    )]
    if missing:
        raise ReleaseError(f"{root}: nothing matches {', '.join(missing)}; is this the repository root?")
    migrate_image = migrate_image_name(files, settings.images.migrate_base)
    postgres_image = postgres_image_name(files, settings.images.postgres)
    try:
        rendered: dict[str, RenderedFile] = render_release(
            settings,
            RenderContext(release=name, migrate_image=migrate_image, postgres_image=postgres_image, sources=files),
        )
    except OffsiteKeyUnreadable as error:
        raise ReleaseError(str(error)) from None
    entries: dict[str, tuple[bytes, int]] = {path: (content, 0o644) for path, content in files.items()}
    entries["bin/smoke"] = (entries.pop("templates/smoke.sh")[0], 0o755)
    entries.update({path: (item.text.encode(), item.mode) for path, item in rendered.items()})
    manifest = ReleaseManifest(
        name=name,
        stage=settings.stage.value,
        commit=git("rev-parse", "HEAD", cwd=root) or None,
        migrate_image=migrate_image,
        images=settings.images.model_dump(exclude={"bundle_dir"}),
        migrations=tuple(migrations_of(files)),
        workflows_sha256=digest({p: c for p, c in files.items() if p.startswith("workflows/")}),
        config_sha256=digest({p: i.text.encode() for p, i in rendered.items()}),
        mounted_configs={
            directory: MOUNTED_CONFIGS[key] for directory, key in config_mounts(release_entries(rendered, files)).items()
        },
    )
    entries[MANIFEST] = (manifest.to_json().encode(), 0o644)
    return Release(name=name, manifest=manifest, archive=deterministic_tar(entries),
                   postgres_image=postgres_image if settings.offsite_backup.enabled else None)


_WORKDIRS: list[tempfile.TemporaryDirectory] = []


def private_tempdir() -> Path:
    """A temporary directory only the current user can read (archives hold secrets).

    It lives until the process exits: pyinfra uploads at execution time, after
    the deploy file that asked for it has finished running.
    """
    directory = tempfile.TemporaryDirectory(prefix="restobot-release-")
    os.chmod(directory.name, 0o700)
    _WORKDIRS.append(directory)
    return Path(directory.name)
