"""200 means durable, on the deployed stack: Meta-like traffic through Traefik while one service is
stopped or crashes. Every message must be refused (and retried by the sender, as Meta does) or
stored exactly once and replied to exactly once; the figures of each fault are printed."""

from __future__ import annotations

import time

import pytest

from harness.faults import Fault, GraphFault
from harness.traffic import MetaLikeSender, outcome

pytestmark = pytest.mark.e2e

BEFORE, AFTER = 6.0, 10.0  # seconds of traffic around the fault
# A graceful stop of n8n main (docker stop; or n8n exiting by itself when Redis is gone longer than
# QUEUE_BULL_REDIS_TIMEOUT_THRESHOLD) answers the webhook requests it was still waiting on with n8n's
# fallback "200, no data" (webhooks/webhook-helpers.js: an execution that ended without reaching the
# Respond node answers the webhook node's response code, 200 in responseNode mode, which n8n does not
# let a workflow change). bench_faults measured 1 message in 104 answered 200 and never stored with
# n8n main stopped, 1 to 10 in 123 in 2 of 6 runs with Redis stopped. Open in issue #12.
N8N_MAIN_SHUTDOWN_ANSWERS_200 = pytest.mark.xfail(
    reason="n8n main's graceful shutdown answers waiting webhooks 200 without the workflow's answer (issue #12)",
    strict=False,
)
# The worker killed between the Graph API's answer and W3's record of it: the reply's lease runs out
# and W3 sends it again (bench_faults: 1 duplicate in 64). The Graph API takes no idempotency key;
# the way out (park such a row for review instead of resending) trades a duplicate for a silence.
WORKER_KILLED_MID_SEND_REPLIES_TWICE = pytest.mark.xfail(
    reason="a worker killed mid-send leaves a reply whose lease runs out and is sent again (issue #12)",
    strict=False,
)
FAULTS = [
    pytest.param(Fault("redis", "stop"), marks=N8N_MAIN_SHUTDOWN_ANSWERS_200, id="redis stopped"),
    pytest.param(Fault("n8n-main", "stop"), marks=N8N_MAIN_SHUTDOWN_ANSWERS_200, id="n8n-main stopped"),
    Fault("postgres", "stop"),
    Fault("nginx", "stop"),
    Fault("traefik", "stop"),
    Fault("n8n-worker", "stop"),
    Fault("n8n-main", "crash"),
    pytest.param(Fault("n8n-worker", "crash"), marks=WORKER_KILLED_MID_SEND_REPLIES_TWICE, id="n8n-worker crashed"),
    Fault("postgres", "crash"),
    Fault("redis", "crash"),
    Fault("nginx", "crash"),
    Fault("traefik", "crash"),
    GraphFault(500),
    GraphFault(429),
    GraphFault(0),
]


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_no_message_is_lost_or_answered_twice(deployed_stack, fault):
    sender = MetaLikeSender(deployed_stack, sender_prefix="3390")
    sender.start()
    time.sleep(BEFORE)
    fault.inject(deployed_stack)
    ended = sender.now()
    time.sleep(AFTER)
    sender.stop()
    figures = outcome(deployed_stack, sender, fault_ended_at=ended)
    print(f"{fault}: {figures.line()}")
    assert figures.answered_200 == figures.sent, figures.line()
    assert (figures.lost, figures.duplicates) == (0, 0), figures.line()
    assert figures.replied == figures.stored == figures.sent, figures.line()
