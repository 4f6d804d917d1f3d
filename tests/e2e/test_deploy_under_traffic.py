"""A deploy and a rollback while Meta delivers: each completes, and every message Meta delivers in the
meantime is refused (and retried, as Meta does) or stored exactly once and replied to exactly once.

The upgrade changes a workflow, so the importer imports, restarts n8n main and waits for the webhooks
while the sender keeps posting; the rollback does it again the other way."""

from __future__ import annotations

import time

import pytest

from harness.deploys import make_checkout, verify_handshake
from harness.poll import poll
from harness.traffic import MetaLikeSender, outcome

pytestmark = pytest.mark.e2e

SETTLE = 5.0  # seconds of traffic before and after the deploy
# The rollback right after the upgrade, under the same traffic, failed on this machine and in CI:
# n8n main restarted, the importer's probes of the webhooks waited behind the executions the
# outage had queued until its 300 s ran out, and the revert failed the same way, leaving the
# intake down. The importer now counts a webhook whose execution is still queued as registered;
# the rollback then passed (sent 207, 0 lost, 0 duplicates), once. It stays an expected failure
# until bench/bench_deploy.py --runs 5 passes 5 of 5 (issue #12, item 5).
ROLLBACK_RESTART_SLOW = pytest.mark.xfail(
    reason="a rollback under traffic: passed once since the importer's fix, not yet 5 runs of 5 (issue #12)",
    strict=False,
)


def under_traffic(stack, prefix: str, action):
    """Run ``action`` while a Meta-like sender posts: (the action's result, the traffic's figures)."""
    sender = MetaLikeSender(stack, sender_prefix=prefix)
    sender.start()
    try:  # an action that raises must not leave the sender's thread holding the run open
        time.sleep(SETTLE)
        result = action()
        time.sleep(SETTLE)
    finally:
        sender.stop()
    return result, outcome(stack, sender)


@pytest.fixture(scope="module")
def before(deployed_stack):
    """The release serving before this module (whatever the modules before it left) and its W0's X-Release."""
    release = deployed_stack.ssh("readlink", "/opt/resto/current").stdout.strip().rsplit("/", 1)[-1]
    return release, verify_handshake(deployed_stack, "before")[2]


@pytest.fixture(scope="module")
def upgrade(deployed_stack, before, tmp_path_factory):
    checkout = make_checkout(tmp_path_factory.mktemp("traffic"), "traffic-v2", {}, "traffic-v2")
    return under_traffic(deployed_stack, "3391", lambda: deployed_stack.deploy(source=checkout))


@pytest.fixture(scope="module")
def rollback(deployed_stack, before, upgrade):
    release, _ = before
    yield under_traffic(deployed_stack, "3392", lambda: deployed_stack.rollback(release))
    # The modules after this one share the stack: hand it on serving, whatever the rollback did.
    poll(lambda: verify_handshake(deployed_stack, "handed-on")[0], until=lambda status: status == 200,
         timeout=600, interval=5, tolerate=(OSError,), what="the stack answering Meta again after the rollback")


def assert_nothing_lost(figures, capsys, what: str) -> None:
    with capsys.disabled():  # into the run's log even when the test passes or is an expected failure
        print(f"\n{what}: {figures.line()}")
    assert figures.answered_200 == figures.sent, figures.line()
    assert (figures.lost, figures.duplicates) == (0, 0), figures.line()
    assert figures.replied == figures.stored == figures.sent, figures.line()


def test_an_upgrade_with_a_changed_workflow_completes_under_traffic(deployed_stack, upgrade):
    run, _ = upgrade
    assert run.returncode == 0, run.output_tail()
    assert verify_handshake(deployed_stack, "upgraded") == (200, "upgraded", "traffic-v2")


def test_an_upgrade_under_traffic_loses_nothing_and_answers_nothing_twice(upgrade, capsys):
    _, figures = upgrade
    assert_nothing_lost(figures, capsys, "upgrade")


@ROLLBACK_RESTART_SLOW
def test_a_rollback_completes_under_traffic(deployed_stack, before, rollback):
    run, _ = rollback
    assert run.returncode == 0, run.output_tail()
    assert verify_handshake(deployed_stack, "rolled-back") == (200, "rolled-back", before[1])


@ROLLBACK_RESTART_SLOW
def test_a_rollback_under_traffic_loses_nothing_and_answers_nothing_twice(rollback, capsys):
    _, figures = rollback
    assert_nothing_lost(figures, capsys, "rollback")
