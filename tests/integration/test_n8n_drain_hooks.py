"""docker/n8n/drain-hooks.js, the external hooks n8n main loads, run by the pinned n8n image's node:
from SIGTERM on, webhooks are refused with 503 (so Meta retries them), and n8n's stop waits for the
webhook requests already accepted to be answered (so none gets n8n's empty 200); and a 2xx no
workflow wrote (n8n's fallback when an execution's answer never reached main) is refused with 503."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.workflows_stack import N8N_IMAGE
from restobot.settings import REPO_ROOT

pytestmark = pytest.mark.integration

HOOKS = REPO_ROOT / "docker" / "n8n"
EXERCISE = Path(__file__).parent / "n8n_drain"


@pytest.fixture(scope="module")
def outcome() -> dict:
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "node",
         "-v", f"{HOOKS}:/hooks:ro", "-v", f"{EXERCISE}:/exercise:ro",
         N8N_IMAGE, "/exercise/exercise.js"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "log": run.stdout + run.stderr}


def test_webhooks_are_answered_before_the_stop(outcome):
    assert outcome["before"][:2] == [200, "EVENT_RECEIVED"]


def test_a_workflows_answer_goes_out_as_it_is_without_the_answer_header(outcome):
    """The header is the workflows' word to the gate: checked, then removed (set with setHeader or in writeHead)."""
    assert outcome["before"] == [200, "EVENT_RECEIVED", None, None]
    assert outcome["in_writehead"] == [200, "EVENT_RECEIVED", None, None]


def test_a_2xx_no_workflow_wrote_is_refused_with_503_so_meta_retries(outcome):
    assert outcome["fallback"][0] == 503
    assert outcome["fallback"][3] == "5"  # Retry-After
    assert outcome["fallback_empty"][0] == 503
    assert outcome["refused_count"] == 2


def test_the_refusal_is_logged_without_the_query(outcome):
    assert "n8n answered GET /webhook/fallback 200 without a workflow's answer: refused with 503" in outcome["log"]
    assert "secret-in-the-query" not in outcome["log"]


def test_a_workflows_own_refusal_is_left_as_it_is(outcome):
    assert outcome["refusal"] == [403, "forbidden", None, None]


def test_after_sigterm_a_webhook_on_an_open_keepalive_connection_is_refused_with_503(outcome):
    assert outcome["after_sigterm_keepalive"][0] == 503


def test_after_sigterm_a_webhook_on_a_new_connection_is_refused_with_503(outcome):
    assert outcome["after_sigterm_new"][0] == 503


def test_other_paths_are_left_to_n8n(outcome):
    assert outcome["after_sigterm_healthz"][:2] == [200, "EVENT_RECEIVED"]


def test_the_stop_waits_for_the_webhook_already_accepted_and_it_gets_its_answer(outcome):
    assert outcome["in_flight"][:2] == [200, "EVENT_RECEIVED"]
    assert outcome["stop_waited_ms"] >= 500  # the slow answer needed ~1.2 s more when the stop began
    assert outcome["state"] == {"draining": True, "inFlight": 0, "refused": 2}


def test_n8n_sees_only_hook_names(outcome):
    assert outcome["hook_names"] == ["n8n"]
