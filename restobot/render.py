"""Render a release's configuration files from the Jinja2 templates.

The result is data: relative path -> (text, mode). Nothing here touches a host;
the release module uploads what this returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from restobot.commands import HostLayout
from restobot.remote.workflows import credentials_overwrite_data
from restobot.settings import CHANNELS, REPO_ROOT, Settings

TEMPLATES_DIR = REPO_ROOT / "templates"
COMPOSE_PROJECT = "resto"
SECRET_MODE = 0o600
CONFIG_MODE = 0o644

# Template -> (path in the release, mode). Env files hold secrets: 0600.
COMPOSE_FILE = "compose.yml"
RELEASE_FILES: dict[str, tuple[str, int]] = {
    "compose.yml.j2": (COMPOSE_FILE, CONFIG_MODE),
    "traefik/traefik.yml.j2": ("traefik/traefik.yml", CONFIG_MODE),
    "traefik/dynamic.yml.j2": ("traefik/dynamic/dynamic.yml", CONFIG_MODE),
    "nginx/nginx.conf.j2": ("nginx/nginx.conf", CONFIG_MODE),
    "env/n8n.env.j2": ("env/n8n.env", SECRET_MODE),
    "env/postgres.env.j2": ("env/postgres.env", SECRET_MODE),
    "env/migrate.env.j2": ("env/migrate.env", SECRET_MODE),
    "env/redis.env.j2": ("env/redis.env", SECRET_MODE),
    "env/postgres-exporter.env.j2": ("env/postgres-exporter.env", SECRET_MODE),
    "env/redis-exporter.env.j2": ("env/redis-exporter.env", SECRET_MODE),
}

# The monitoring stack's files, rendered from the `monitoring` settings and shipped in every release
# beside compose.yml, whose monitoring services mount them. alertmanager.yml holds ALERT_WEBHOOK_URL,
# which carries the destination's token: 0600, owned on the host by the user Alertmanager runs as
# (CONTAINER_OWNED_FILES).
MONITORING_FILES: dict[str, tuple[str, int]] = {
    "monitoring/prometheus.yml.j2": ("monitoring/prometheus/prometheus.yml", CONFIG_MODE),
    "monitoring/alerts.yml.j2": ("monitoring/prometheus/alerts.yml", CONFIG_MODE),
    "monitoring/alertmanager.yml.j2": ("monitoring/alertmanager/alertmanager.yml", SECRET_MODE),
    "monitoring/restobot.tmpl.j2": ("monitoring/alertmanager/restobot.tmpl", CONFIG_MODE),
    "monitoring/blackbox.yml.j2": ("monitoring/blackbox/config.yml", CONFIG_MODE),
    "monitoring/postgres-exporter-queries.yml.j2": ("monitoring/postgres-exporter/queries.yml", CONFIG_MODE),
}

# Release files a container reads as its own user rather than the deploy user's: path -> uid. The
# official prom/* images (and their stand-ins) run as nobody; a 0600 file must be nobody's to be read.
NOBODY_UID = 65534
CONTAINER_OWNED_FILES: dict[str, int] = {"monitoring/alertmanager/alertmanager.yml": NOBODY_UID}


# The release directories a container mounts (compose key -> release path). On the host each is copied to
# configs/<key>-<hash of its files>, and compose mounts that copy: the mounted path changes only when what
# the service reads changes, so compose recreates only that service. Mounted from releases/<id>/, every path
# changed with every release and a monitoring threshold recreated every container, n8n main included.
MOUNTED_CONFIGS: dict[str, str] = {
    "traefik": "traefik",
    "nginx": "nginx",
    "n8n-hooks": "docker/n8n",
    "prometheus": "monitoring/prometheus",
    "alertmanager": "monitoring/alertmanager",
    "postgres-exporter": "monitoring/postgres-exporter",
    "blackbox": "monitoring/blackbox",
    "pgbackrest": "pgbackrest",
}

# pgBackRest's configuration (templates/backup/), rendered from the `offsite_backup` settings; a release
# ships it when offsite_backup is enabled (compose hands it to postgres as a secret). It holds the
# encryption passphrase: 0600. So does the SFTP login key beside it.
OFFSITE_BACKUP_FILES: dict[str, tuple[str, int]] = {
    "backup/pgbackrest.conf.j2": ("pgbackrest/pgbackrest.conf", SECRET_MODE),
}
OFFSITE_KEY_PATH = "pgbackrest/sftp_key"
# Where the PostgreSQL image (the official one and the stand-in) keeps its cluster.
PGDATA = "/var/lib/postgresql/data"

# security_events.event_type's allowed values (the CHECK of the last migration that sets it, now
# migrations/0007_quarantine.sql; a unit test holds the two together): the exporter reports each, zero included.
SECURITY_EVENT_TYPES = (
    "SIGNATURE_INVALID", "SIGNATURE_MISSING", "VERIFY_TOKEN_INVALID", "RATE_LIMIT",
    "REPLAY", "AUTH_FAILED", "SCOPE_DENIED", "PAYLOAD_INVALID", "QUARANTINED",
)


@dataclass(frozen=True)
class Probe:
    """One blackbox probe: its name (the ``probe`` label), the module and the target."""

    name: str
    module: str
    target: str


@dataclass(frozen=True)
class MonitoringOptions:
    """How Prometheus scrapes; tests shorten the interval."""

    scrape_interval: str = "30s"
    probes: tuple[Probe, ...] = ()


def monitoring_options(settings: Settings) -> MonitoringOptions:
    """The deployed scrape options: the settings' interval, the api's health over https, the console's TLS handshake."""
    return MonitoringOptions(scrape_interval=f"{settings.monitoring.scrape_interval_seconds}s", probes=(
        Probe("api-healthz", "https_2xx", f"https://{settings.domains.api_host}/healthz"),
        Probe("console-tls", "tls_connect", f"{settings.domains.console_host}:443"),
    ))


@dataclass(frozen=True)
class GatewayOptions:
    """Nginx knobs that tests change (upstream, resolver, port); production uses the defaults."""

    listen: str = "8080"
    upstream: str = "n8n-main:5678"
    resolver: str | None = "127.0.0.11"
    # A Meta webhook is a few KiB; a batch of many updates stays well under this.
    max_body_meta: str = "64k"
    max_body_admin: str = "8k"
    rate_per_second: int = 50
    burst: int = 100
    timeout: str = "20s"
    connect_timeout: str = "5s"
    trusted_proxies: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    runtime_dir: str = "/tmp"


@dataclass(frozen=True)
class TraefikOptions:
    """Traefik addresses and paths inside its container; tests move them to loopback."""

    web_address: str = ":80"
    websecure_address: str = ":443"
    internal_address: str = "127.0.0.1:8082"
    dynamic_dir: str = "/etc/traefik/dynamic"
    acme_storage: str = "/acme/acme.json"
    gateway_url: str = "http://nginx:8080"
    console_url: str = "http://n8n-main:5678"


@dataclass(frozen=True)
class RenderedFile:
    text: str
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class RenderContext:
    release: str = "dev"
    migrate_image: str = "restobot/migrate:dev"
    # The postgres service's image when offsite_backup is enabled (built on the host, tagged by its inputs).
    postgres_image: str = "restobot/postgres-pgbackrest:dev"
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    traefik: TraefikOptions = field(default_factory=TraefikOptions)
    # The release's source files (path -> bytes) that a container mounts as they are (docker/n8n/);
    # None: this checkout's.
    sources: Mapping[str, bytes] | None = None


def env_quote(value: object) -> str:
    """Quote a value for a compose env_file so compose reads it back verbatim.

    Single quotes are literal in compose's env files; a value holding a single
    quote is double-quoted with backslash escapes instead.
    """
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError("env values cannot hold line breaks")
    if "'" not in text:
        return f"'{text}'"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def make_environment(directory: Path = TEMPLATES_DIR) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters["env_quote"] = env_quote
    return environment


def render_release(settings: Settings, context: RenderContext | None = None) -> dict[str, RenderedFile]:
    """Every rendered configuration file of one release, keyed by relative path."""
    context = context or RenderContext()
    environment = make_environment()
    password = settings.database.password.get_secret_value()
    variables = {
        "credentials_overwrite_data": credentials_overwrite_data(
            db_host="postgres", db_port=5432, db_name=settings.database.name, db_user=settings.database.user,
            db_password=password, redis_host="redis", redis_password=settings.redis.password.get_secret_value(),
        ),
        "s": settings,
        "m": settings.monitoring,
        "textfile_dir": HostLayout(settings.host.base_dir).textfile_dir,
        "configs_dir": HostLayout(settings.host.base_dir).configs_dir,
        "release": context.release,
        "project": COMPOSE_PROJECT,
        "migrate_image": context.migrate_image,
        "postgres_image": context.postgres_image,
        "postgres_command": ["postgres", *postgres_archiving_args(settings)],
        "gateway": context.gateway,
        "traefik": context.traefik,
        "channels": CHANNELS,
    }
    rendered: dict[str, RenderedFile] = {}
    for template_name, (path, mode) in RELEASE_FILES.items():
        if path != COMPOSE_FILE:
            rendered[path] = RenderedFile(text=environment.get_template(template_name).render(**variables), mode=mode)
    rendered.update(render_monitoring(settings, release=context.release))
    if settings.offsite_backup.enabled:
        rendered.update(render_offsite_backup(settings))
        rendered.update(offsite_login_key(settings))
    sources = mounted_sources() if context.sources is None else context.sources
    mounts = config_mounts(release_entries(rendered, sources))
    layout = HostLayout(settings.host.base_dir)
    variables["mounts"] = {key: layout.config_dir(directory) for directory, key in mounts.items()}
    compose_template = next(name for name, (path, _) in RELEASE_FILES.items() if path == COMPOSE_FILE)
    rendered[COMPOSE_FILE] = RenderedFile(
        text=environment.get_template(compose_template).render(**variables), mode=RELEASE_FILES[compose_template][1]
    )
    return rendered


def mounted_sources(root: Path = REPO_ROOT) -> dict[str, bytes]:
    """This checkout's source files under a mounted release path (the rendered ones are not in git)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for prefix in MOUNTED_CONFIGS.values()
        for path in sorted((root / prefix).rglob("*"))
        if path.is_file()
    }


def release_entries(rendered: Mapping[str, RenderedFile], sources: Mapping[str, bytes]) -> dict[str, tuple[bytes, int]]:
    """Release path -> (content, mode), as the archive holds them."""
    entries = {path: (content, 0o644) for path, content in sources.items()}
    entries.update({path: (item.text.encode(), item.mode) for path, item in rendered.items()})
    return entries


def config_mounts(entries: Mapping[str, tuple[bytes, int]]) -> dict[str, str]:
    """The release's mounted config directories: ``<key>-<hash>`` (the copy's name under ``configs/``) -> key.

    The hash covers each file's path within the directory, content, mode and owner, so two releases
    whose copies would differ in anything a container sees never share one."""
    mounts: dict[str, str] = {}
    for key, prefix in MOUNTED_CONFIGS.items():
        files = {path: entry for path, entry in entries.items() if path.startswith(prefix + "/")}
        if not files:
            continue
        hasher = hashlib.sha256()
        for path in sorted(files):
            content, mode = files[path]
            owner = CONTAINER_OWNED_FILES.get(path, 0)
            hasher.update(f"{path[len(prefix) + 1:]}\0{mode:o}\0{owner}\0".encode() + hashlib.sha256(content).digest())
        mounts[f"{key}-{hasher.hexdigest()[:12]}"] = key
    return mounts


def window_words(minutes: int) -> str:
    """``monitoring.events_window_minutes`` as the alerts' text says it: "hour", "minute", "30 minutes"."""
    if minutes == 60:
        return "hour"
    return "minute" if minutes == 1 else f"{minutes} minutes"


def render_monitoring(settings: Settings, options: MonitoringOptions | None = None,
                      release: str = "dev") -> dict[str, RenderedFile]:
    """The monitoring stack's configuration files (Prometheus, its rules, Alertmanager, the exporters')."""
    options = options or monitoring_options(settings)
    url = settings.pipeline.alert_webhook_url
    max_age = settings.backup_max_age_seconds
    variables = {
        "s": settings,
        "m": settings.monitoring,
        "release": release,
        "monitoring": options,
        "url": None if url is None else str(url),
        "backup_max_age_seconds": max_age,
        "backup_max_age_hours": f"{max_age / 3600:g}",
        "offsite_max_age_seconds": settings.offsite_backup_max_age_seconds,
        "offsite_max_age_hours": f"{settings.offsite_backup_max_age_seconds / 3600:g}",
        "drill_max_age_seconds": settings.restore_drill_max_age_seconds,
        "drill_max_age_days": f"{settings.restore_drill_max_age_seconds / 86400:.1f}",
        "security_event_types": SECURITY_EVENT_TYPES,
        "events_window": window_words(settings.monitoring.events_window_minutes),
    }
    environment = make_environment()
    return {
        path: RenderedFile(text=environment.get_template(template).render(**variables), mode=mode)
        for template, (path, mode) in MONITORING_FILES.items()
    }


class OffsiteBackupDisabled(ValueError):
    """offsite_backup.enabled is false: there is no pgBackRest configuration to render."""


def render_offsite_backup(settings: Settings) -> dict[str, RenderedFile]:
    """pgBackRest's configuration file, from the ``offsite_backup`` settings (enabled ones only)."""
    offsite = settings.offsite_backup
    if not offsite.enabled:
        raise OffsiteBackupDisabled("offsite_backup.enabled is false: set it to true (with its repository) "
                                    "to render pgBackRest's configuration")
    variables = {
        "o": offsite,
        "repo": offsite.sftp if offsite.repository == "sftp" else offsite.s3,
        "pgdata": PGDATA,
        "pg_user": settings.database.user,
    }
    environment = make_environment()
    return {
        path: RenderedFile(text=environment.get_template(template).render(**variables), mode=mode)
        for template, (path, mode) in OFFSITE_BACKUP_FILES.items()
    }


class OffsiteKeyUnreadable(ValueError):
    """offsite_backup.sftp.key_path names no readable private key."""


def offsite_login_key(settings: Settings) -> dict[str, RenderedFile]:
    """The SFTP login key (``offsite_backup.sftp.key_path``, read on this machine), for the release, 0600.

    None for an S3 repository (its key pair is in pgbackrest.conf).
    """
    sftp = settings.offsite_backup.sftp
    if settings.offsite_backup.repository != "sftp" or sftp is None or sftp.key_path is None:
        return {}
    try:
        text = sftp.key_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise OffsiteKeyUnreadable(
            f"offsite_backup.sftp.key_path: {sftp.key_path} cannot be read ({error.__class__.__name__}); "
            "point it at the private key whose public half the off-site host accepts") from None
    if "PRIVATE KEY-----" not in text:
        raise OffsiteKeyUnreadable(
            f"offsite_backup.sftp.key_path: {sftp.key_path} is not a private key (no 'PRIVATE KEY' block); "
            "point it at the private key, not its .pub") from None
    return {OFFSITE_KEY_PATH: RenderedFile(text=text, mode=SECRET_MODE)}


def postgres_archiving_args(settings: Settings) -> tuple[str, ...]:
    """The ``postgres`` arguments that turn WAL archiving to pgBackRest on (a compose ``command:``'s tail).

    Without an enabled off-site backup: none (no archiving).
    """
    offsite = settings.offsite_backup
    if not offsite.enabled:
        return ()
    parameters = {
        "archive_mode": "on",
        "archive_command": f"pgbackrest --stanza={offsite.stanza} archive-push %p",
        "archive_timeout": str(offsite.archive_timeout_seconds),
        "wal_level": "replica",
    }
    return tuple(argument for name, value in parameters.items() for argument in ("-c", f"{name}={value}"))


def write_release(files: dict[str, RenderedFile], directory: Path) -> None:
    """Write rendered files under ``directory`` with their modes (for tests and --dry output)."""
    for path, rendered in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(mode=rendered.mode)
        target.chmod(rendered.mode)
        target.write_text(rendered.text)
