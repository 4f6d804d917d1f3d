"""The cron.d files the operations install: one shape, naming the module that manages each."""

from __future__ import annotations

CRON_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def managed_cron_file(module: str, what: str, change: str, line: str) -> str:
    """A whole cron.d file: ``module`` manages it, ``what`` it runs, ``change`` (how its schedule is
    changed), its one ``line`` (pure: tested by value where each is built)."""
    return "\n".join([
        f"# Managed by restobot ({module}): {what}.",
        f"# {change}; do not edit on the host.",
        "SHELL=/bin/sh",
        CRON_PATH,
        line,
        "",
    ])
