"""Rotating one secret of a stage: which secrets can be, where the new value comes from, and the
pieces that change it without writing it anywhere it could leak (the secrets file, the role's
password as a SCRAM verifier).

The command that drives a rotation is ``resto STAGE secrets rotate NAME`` (restobot/cli.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from restobot.settings import read_env_file


@dataclasses.dataclass(frozen=True)
class Rotation:
    """How one secret is rotated.

    + issued: a provider issues the value (Meta, the S3 host): the operator pastes it on stdin;
      otherwise a new random value is generated
    + afterwards: what the operator still has to do elsewhere, printed when the rotation is done
    + database_role: the value is also the database role's password, changed before the deploy
    + previous: the line that keeps the old value accepted for an overlap (its end in ``previous``_UNTIL)
    """

    name: str
    issued: bool = False
    afterwards: str = ""
    database_role: bool = False
    previous: str | None = None

    @property
    def names_written(self) -> tuple[str, ...]:
        """The secrets file's lines this rotation writes."""
        return (self.name,) if self.previous is None else (self.name, self.previous, f"{self.previous}_UNTIL")

    def lines_written(self, new: str, old: str, now: datetime, overlap_seconds: int) -> dict[str, str]:
        """The new value; with an overlap, also the old one and the end of the overlap."""
        if self.previous is None:
            return {self.name: new}
        until = (now + timedelta(seconds=overlap_seconds)).astimezone(timezone.utc).replace(microsecond=0)
        return {self.name: new, self.previous: old, f"{self.previous}_UNTIL": until.isoformat()}


ROTATIONS: dict[str, Rotation] = {rotation.name: rotation for rotation in (
    Rotation("POSTGRES_PASSWORD", afterwards="the database role's password was changed too", database_role=True),
    Rotation("REDIS_PASSWORD"),
    Rotation("ADMIN_API_TOKEN", afterwards="give the new token to whoever calls the admin API"),
    Rotation("N8N_OWNER_PASSWORD", afterwards="n8n's owner logs in with the new password (n8n applies it at start)"),
    Rotation("META_VERIFY_TOKEN", afterwards="paste the new token in the Meta app's webhook settings the next time "
                                             "the callback URL is verified"),
    Rotation("LEGACY_SHARED_TOKEN", afterwards="give the new token to the legacy caller"),
    Rotation("META_APP_SECRET", issued=True, previous="META_APP_SECRET_PREVIOUS",  # pragma: allowlist secret
             afterwards="deliveries signed with the old secret are still accepted until the overlap ends "
                        "(META_APP_SECRET_PREVIOUS_UNTIL in the secrets file)"),
    Rotation("WA_API_TOKEN", issued=True),
    Rotation("IG_API_TOKEN", issued=True),
    Rotation("MSG_API_TOKEN", issued=True),
    Rotation("OFFSITE_S3_KEY", issued=True),
    Rotation("OFFSITE_S3_KEY_SECRET", issued=True),
)}

NOT_ROTATABLE: dict[str, str] = {
    "N8N_ENCRYPTION_KEY": "n8n's stored credentials are encrypted with it: a new key makes them unreadable",
    "OFFSITE_BACKUP_PASSPHRASE": "the off-site repository is encrypted with it: a new passphrase cannot read it",  # nosec B105 # a reason, not a password
    "META_SIGNATURE_REQUIRED": "it is a mode (enforce, warn, off), not a secret: change it in the secrets file "
                               "and deploy",
    "WA_PHONE_NUMBER_ID": "it is the WhatsApp number's id, not a secret: change it in the secrets file and deploy",
    "META_APP_SECRET_PREVIOUS": "it is the app secret before the last rotation, which rotating META_APP_SECRET "  # pragma: allowlist secret
                                "sets (with the end of its overlap)",
}
DEFAULT_OVERLAP_SECONDS = 86_400
MAX_OVERLAP_SECONDS = 7 * 86_400


class RotationRefused(ValueError):
    """A rotation that cannot start: nothing was changed."""


def rotation_for(name: str) -> Rotation:
    """The rotation of ``name``; RotationRefused names the rule and the way out."""
    if name in ROTATIONS:
        return ROTATIONS[name]
    if name in NOT_ROTATABLE:
        raise RotationRefused(f"NAME: {name} is not rotated by this command: {NOT_ROTATABLE[name]}")
    known = ", ".join(sorted(ROTATIONS))
    raise RotationRefused(f"NAME: unknown secret '{name}'; the rotatable secrets are {known}")


def check_kept_in_file(rotation: Rotation, path: Path, environ: dict[str, str] | os._Environ) -> None:
    """The value must live in the secrets file, since that is what the rotation rewrites."""
    name = rotation.name
    for written in rotation.names_written:
        if environ.get(written):
            raise RotationRefused(f"{written} is set in this process's environment (a CI secret?), which wins over "
                                  f"{path}: rotate it where it is kept, or unset it here and keep it in {path}")
    if name not in read_env_file(path):
        raise RotationRefused(f"{path}: has no {name}= line; the rotation rewrites that line "
                              f"(add the current value there first)")


def generated_value(name: str) -> str:
    """A new random value that meets the setting's rule (n8n's password rule for the owner)."""
    if name == "N8N_OWNER_PASSWORD":
        return f"Rb7-{secrets.token_urlsafe(24)}"
    return secrets.token_urlsafe(32)


def issued_value(name: str, text: str) -> str:
    """The value the operator pasted: one line, surrounding blanks removed."""
    value = text.strip()
    if not value or "\n" in value:
        raise RotationRefused(f"{name}: paste the new value on stdin, on one line (it was "
                              f"{'empty' if not value else 'several lines'}); e.g. "
                              f"pbpaste | resto STAGE secrets rotate {name} --from-stdin")
    return value


ENV_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=)")


def with_value(text: str, name: str, value: str) -> str:
    """The secrets file's text with ``name``'s line holding ``value`` (quoted); other lines as they were."""
    if "'" in value or "\n" in value:
        raise RotationRefused(f"{name}: the value holds a quote or a line break, which the secrets file cannot keep")
    lines, found = [], False
    for line in text.splitlines(keepends=True):
        match = ENV_LINE.match(line)
        if match and match.group(2) == name:
            ending = "\n" if line.endswith("\n") else ""
            line, found = f"{match.group(1)}{name}='{value}'{ending}", True
        lines.append(line)
    if not found:
        raise RotationRefused(f"no {name}= line to rewrite")
    return "".join(lines)


def with_values(text: str, values: dict[str, str]) -> str:
    """Each of ``values`` on its line: rewritten where the line is, appended where it is not."""
    for name, value in values.items():
        if name not in {match.group(2) for match in map(ENV_LINE.match, text.splitlines()) if match}:
            separator = "\n" if text and not text.endswith("\n") else ""
            text = f"{text}{separator}{name}=\n"
        text = with_value(text, name, value)
    return text


def secrets_file_written(path: Path, text: str) -> None:
    """``path`` holds ``text``, replaced at once (a new file renamed over it, mode 0600)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_sha256_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    ``ALTER ROLE ... PASSWORD '<verifier>'`` sets the password without the clear text ever reaching
    the server, its statement log or its process list.
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def role_password_sql(role: str, verifier: str) -> str:
    """The statement that sets ``role``'s password to ``verifier`` (both checked: no quoting to get wrong)."""
    if not ROLE_NAME.match(role):
        raise ValueError(f"role {role!r}: not a plain PostgreSQL role name")
    if not re.fullmatch(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", verifier):
        raise ValueError("not a SCRAM-SHA-256 verifier")
    return f"ALTER ROLE \"{role}\" PASSWORD '{verifier}';\n"

