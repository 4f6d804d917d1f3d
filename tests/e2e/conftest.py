"""Fixtures for the e2e tier: a local VPS container reached over real SSH, and
the real ``pyinfra`` CLI run against it as a subprocess.

The helpers live in the harness (harness/deploys.py: VPS containers, inventories,
pyinfra runs, a deployed stack); these fixtures only turn what the harness cannot
do into a test failure. A missing harness or image fails the tests with the
reason, it never skips them (CI must not go green on a machine that ran nothing).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from restobot.secrets import ensure_secrets_file
from restobot.settings import secrets_file


def _deploys():
    try:
        from harness import deploys
    except ImportError as error:  # pragma: no cover - the message is the point
        pytest.fail(f"the local VPS harness is missing (harness/deploys.py: {error}); "
                    "e2e tests need it and are never skipped", pytrace=False)
    return deploys


@contextlib.contextmanager
def harness_must_deliver(what: str) -> Iterator:
    """Run a harness step (``with harness_must_deliver("the VPS") as deploys: ...``): its failure fails the test."""
    deploys = _deploys()
    try:
        yield deploys
    except deploys.HarnessError as error:
        pytest.fail(f"{what}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def local_secrets() -> Path:
    """The local stage's git-ignored secrets file, generated once if missing."""
    return ensure_secrets_file(secrets_file("local"))


@pytest.fixture(scope="session")
def local_vps(local_secrets):
    """The shared local VPS (``restobot-vps-local`` on 127.0.0.1:2222), started if needed.

    Kept between sessions (other e2e tests deploy onto it); tests that need a
    brand new host use :func:`own_vps` instead.
    """
    _deploys()
    from harness import vps

    try:
        return vps.ensure_vps_running(out=None)
    except Exception as error:  # noqa: BLE001 - report whatever stopped the harness
        pytest.fail(f"the local VPS did not start: {error}", pytrace=False)


@pytest.fixture(scope="module")
def own_vps(local_secrets) -> Iterator[Callable]:
    """``own_vps(name)``: a brand new VPS container of the module's own (free ports), removed after the module."""
    started: list[str] = []

    def start(name: str):
        with harness_must_deliver(f"the VPS container {name}") as deploys:
            started.append(name)
            return deploys.start_vps(name, fresh=True)

    yield start
    deploys = _deploys()
    for name in started:
        deploys.stop_vps(name)


@pytest.fixture(scope="session")
def deployed_stack(local_secrets, tmp_path_factory):
    """A fresh VPS container, the local ACME server and the Meta double beside it, and deploy.py run once
    onto it (release ``e2e-base``): harness.deploys.bring_up_stack.

    Every e2e module that needs a running stack shares this one (a deploy from
    scratch takes minutes). Modules that break things on purpose put them back.
    RESTOBOT_KEEP_E2E_STACK=1 keeps it afterwards.
    """
    keep = os.environ.get(_deploys().KEEP_STACK_ENV) == "1"
    with harness_must_deliver("the e2e stack did not come up") as deploys:
        deploys.remove_stacks_of_dead_sessions("e2e")
        names = deploys.stack_names("e2e")
        stack = deploys.bring_up_stack(names, tmp_path_factory.mktemp("deployed-stack"), release="e2e-base",
                                       keep_on_failure=keep)
    yield stack
    if not keep:
        deploys.tear_down_stack(names)
