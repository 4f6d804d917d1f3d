"""200 means durable, on the deployed stack: Meta-like traffic through Traefik while one service is
stopped or crashes. Every message must be refused (and retried by the sender, as Meta does) or
stored exactly once and replied to exactly once; the figures of each fault are printed."""

from __future__ import annotations

import time

import pytest

from harness.faults import LATE_GRAPH_ANSWERS, EngineRestart, Fault, GraphFault, stack_health, whole_stack_back
from harness.poll import PollTimeout, poll
from harness.traffic import MetaLikeSender, outcome

pytestmark = pytest.mark.e2e

BEFORE, AFTER = 4.0, 6.0  # seconds of traffic around the fault (the sender then waits for every retry)
# Redis stopped: n8n main answered a webhook it was waiting on with its fallback "200, no data"
# (bench_faults: 1 to 10 in 123 in 2 of 6 runs). n8n main's answer gate (docker/n8n/drain-hooks.js)
# now turns any 2xx no workflow wrote into a 503, proven on n8n's own fallback in
# tests/integration/test_workflows.py; a plain test since.
# The worker killed between the Graph API's answer and W3's record of it: Meta has the reply and the
# Graph API takes no idempotency key. W3 sends one reply at a time and records it before the next, so
# only a reply in flight is in doubt; each WhatsApp send carries biz_opaque_callback_data naming its
# row, and the "sent" status Meta posts for it (the sender below posts one per accepted send, as Meta
# does) marks that row SENT before its lease runs out. Before the statuses were read: 1 duplicate in 64
# (whole batches resent), then 0 in 24 with the reply in flight still sent again when hit.
# n8n main stopped: with docker/n8n/drain-hooks.js it passed here (76 sent, 0 lost, 0 duplicates), then
# failed once in the clean-clone CI run after the other e2e modules, its figures not kept; a 200
# "n8n is starting up" (refused since by the gateway's readiness check) is the likely cause. It has
# passed in every run since: two clean-clone CI runs, and bench_faults (103 and 104 sent, 0 lost).
# PostgreSQL gone under traffic answered 1 message in 25 (crashed) and 1 in 62 (stopped for 20 s) twice
# while W3 recorded a batch of sends in one UPDATE retried for 25 s at most. W3 now records each send as
# it is made and tries the record again for as long as the reply's lease runs: 63 sent and 24 sent, 0
# duplicates; tests/integration/test_workflows_faults.py holds PostgreSQL away for 40 s mid-record.
FAULTS = [
    Fault("redis", "stop"),
    Fault("n8n-main", "stop"),
    Fault("postgres", "stop"),
    Fault("nginx", "stop"),
    Fault("traefik", "stop"),
    Fault("n8n-worker", "stop"),
    Fault("n8n-main", "crash"),
    Fault("n8n-worker", "crash"),
    Fault("postgres", "crash"),
    Fault("redis", "crash"),
    Fault("nginx", "crash"),
    Fault("traefik", "crash"),
    GraphFault(500),
    GraphFault(429),
    GraphFault(0),
    LATE_GRAPH_ANSWERS,
    EngineRestart(),  # last: every container goes down with the engine
]


@pytest.fixture
def stack_put_back(deployed_stack):
    """The shared stack; deployed again afterwards if a fault left a service down (the modules after
    this one need it whole, and the failure is this test's)."""
    yield deployed_stack
    try:  # a service the fault restarted may still be starting; one still down after 90 s is redeployed
        poll(lambda: stack_health(deployed_stack), until=whole_stack_back, timeout=90, interval=2,
             what="every service back after the fault")
    except PollTimeout:
        again = deployed_stack.deploy(release="e2e-base")
        assert again.returncode == 0, f"deploying the stack back after the fault failed\n{again.output_tail()}"


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_no_message_is_lost_or_answered_twice(stack_put_back, fault, capsys):
    deployed_stack = stack_put_back
    sender = MetaLikeSender(deployed_stack, sender_prefix="3390", statuses=True)
    sender.start()
    try:  # a fault that fails to inject must not leave the sender's thread holding the run open
        time.sleep(BEFORE)
        fault.inject(deployed_stack)
        ended = sender.now()
        time.sleep(AFTER)
    finally:
        sender.stop()
    figures = outcome(deployed_stack, sender, fault_ended_at=ended)
    with capsys.disabled():  # into the run's log even when the test passes or is an expected failure
        print(f"\n{fault}: {figures.line()}")
    assert figures.answered_200 == figures.sent, figures.line()
    assert (figures.lost, figures.duplicates) == (0, 0), figures.line()
    assert figures.replied == figures.stored == figures.sent, figures.line()
