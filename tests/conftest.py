"""Fixtures shared by every tier."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import jinja2
import pytest

from restobot.secrets import generate_secrets
from restobot.settings import load_inventory, load_settings

__all__ = ["load_inventory", "settings_for_stage"]

NO_SKIP = "RESTOBOT_NO_SKIP"
"""Set by scripts/test: on a machine it has set up, a skipped test is a failure (CI must not
go green with tests that did not run). Unset, as in a bare `pytest` on a laptop, skips stay skips."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(NO_SKIP) == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped under {NO_SKIP}=1 (scripts/test): {reason}\n"
                           "scripts/setup-host and scripts/build-images install and start what the tests need")


def settings_for_stage(stage: str, secrets: dict[str, str], **overrides):
    """The shipped inventory's settings for ``stage`` with ``secrets``, sections overridden."""
    [(_, data)] = load_inventory(stage, secrets)[stage]
    tree = copy.deepcopy(data["resto"])
    for section, values in overrides.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    return load_settings(tree, secrets)


@pytest.fixture
def secret_env() -> dict[str, str]:
    """Freshly generated throwaway secrets, as the environment would hold them."""
    return generate_secrets()


@pytest.fixture
def with_secrets(monkeypatch, secret_env) -> dict[str, str]:
    """The generated secrets placed in the process environment."""
    for name, value in secret_env.items():
        monkeypatch.setenv(name, value)
    return secret_env


@pytest.fixture
def production_data(secret_env) -> dict:
    """The shipped production inventory's settings tree (a deep copy to mutate)."""
    return copy.deepcopy(load_inventory("production", secret_env)["SETTINGS"])


def render_script(template: Path, values: Mapping[str, object], dest: Path) -> Path:
    """A host script template rendered into ``dest`` as the deploy renders it (every value required)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    dest.write_text(env.from_string(template.read_text()).render(**values))
    return dest
