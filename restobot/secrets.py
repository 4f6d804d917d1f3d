"""Generate throwaway secrets for a stage (the local demo, tests).

Production secrets are the operator's: this module never writes over an
existing file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from restobot.settings import SECRET_ENV, read_env_file


# Optional secrets that a generated set leaves out unless asked: a legacy shared
# token weakens the webhooks' authentication (production refuses it by default).
OPTIONAL_SECRETS = ("LEGACY_SHARED_TOKEN",)
# Secrets only a rotation writes (the app secret before it, accepted for a while).
ROTATION_SECRETS = ("META_APP_SECRET_PREVIOUS",)
# Secrets a provider issues (an S3 bucket's access key pair): never generated.
ISSUED_SECRETS = ("OFFSITE_S3_KEY", "OFFSITE_S3_KEY_SECRET")


def generate_secrets(*, legacy_shared_token: bool = False) -> dict[str, str]:
    """A complete set of secrets, each random, URL-safe and long enough."""
    names = [name for name in SECRET_ENV
             if name not in ISSUED_SECRETS + ROTATION_SECRETS and (legacy_shared_token or name not in OPTIONAL_SECRETS)]
    generated = {name: secrets.token_urlsafe(32) for name in names}
    generated["META_APP_SECRET"] = secrets.token_hex(16)  # Meta app secrets are 32 hex chars
    generated["META_SIGNATURE_REQUIRED"] = "enforce"
    generated["WA_PHONE_NUMBER_ID"] = "100000000000099"
    # n8n's password rule: a digit and an upper-case letter, at most 64 characters.
    generated["N8N_OWNER_PASSWORD"] = f"Rb7-{secrets.token_urlsafe(24)}"
    return generated


def ensure_secrets_file(path: Path) -> Path:
    """Write generated secrets to ``path`` (mode 0600); an existing file only gains the names it lacks.

    A value already in the file is never changed: a newer version that needs a
    new secret (N8N_OWNER_PASSWORD...) adds it, and the stage's others stay.
    """
    generated = generate_secrets()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("# Generated throwaway secrets for this stage. Never commit.\n")
            handle.writelines(f"{name}={value}\n" for name, value in sorted(generated.items()))
        return path
    present = read_env_file(path)
    missing = {name: value for name, value in generated.items() if name not in present}
    if missing:
        with path.open("a") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in sorted(missing.items()))
    return path
