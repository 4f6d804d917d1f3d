"""Generate throwaway secrets for a stage (the local demo, tests).

Production secrets are the operator's: this module never writes over an
existing file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from restobot.settings import SECRET_ENV


def generate_secrets() -> dict[str, str]:
    """A complete set of secrets, each random, URL-safe and long enough."""
    generated = {name: secrets.token_urlsafe(32) for name in SECRET_ENV}
    generated["META_APP_SECRET"] = secrets.token_hex(16)  # Meta app secrets are 32 hex chars
    generated["META_SIGNATURE_REQUIRED"] = "enforce"
    generated["WA_PHONE_NUMBER_ID"] = "100000000000099"
    return generated


def ensure_secrets_file(path: Path) -> Path:
    """Write generated secrets to ``path`` (mode 0600) unless it exists already."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("# Generated throwaway secrets for this stage. Never commit.\n")
        for name, value in sorted(generate_secrets().items()):
            handle.write(f"{name}={value}\n")
    return path
