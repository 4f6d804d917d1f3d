"""What happens to a message when a service blinks, on the real stack of harness.workflows_stack
(n8n main + worker in queue mode, Redis, PostgreSQL 17 with the migrations, the rendered gateway,
the Graph API double). The rule: a message is refused with a non-2xx answer (Meta retries it) or
stored exactly once and answered exactly once. Every test asserts on rows in PostgreSQL and on the
requests the Graph API double received."""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import time

import pytest

from harness.poll import poll
from harness.workflows_stack import (
    previous_app_secret,
    Stack,
    docker,
    http,
    missing_images,
    run_workflow,
    running_stack,
)
from restobot import meta_payloads as meta
from restobot.remote import workflows

pytestmark = pytest.mark.integration

SWEEPER_ID = "RbW4Sweeper00000"
PHONE_NUMBER_ID = "109876543210"
GRAPH_MESSAGES = f"/v21.0/{PHONE_NUMBER_ID}/messages"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = missing_images()
    if missing:
        pytest.skip(f"local images not built ({', '.join(missing)}): run python -m harness.images build")
    with running_stack(tmp_path_factory.mktemp("wfstack"), tmp_path_factory.mktemp("wfdir"), {"w4": SWEEPER_ID},
                       previous_app_secret(hours=-1)) as running:
        yield running


def deliver(stack: Stack, payload: dict, timeout: float = 30):
    body = meta.encode(payload)
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, stack.app_secret)}
    return http("POST", f"{stack.gateway_url}/v1/inbound/whatsapp", body, headers, timeout=timeout)


def deliver_until_200(stack: Stack, payload: dict, seconds: float = 120) -> list[int]:
    """Meta's behaviour: every non-200 answer is retried (here every second) until a 200."""
    answers: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answers.append(deliver(stack, payload).status)
        except OSError as error:  # the connection itself failed: Meta retries that too
            answers.append(-1)
            print(f"delivery failed: {error}")
        if answers[-1] == 200:
            return answers
        time.sleep(1)
    raise AssertionError(f"no 200 within {seconds:g} s; answers: {answers}")


def wamid_of(payload: dict) -> str:
    return payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


def replies_sent_to(stack: Stack, sender: str) -> int:
    return sum(1 for r in stack.graph_requests() if r["path"] == GRAPH_MESSAGES and r["body"].get("to") == sender)


def assert_stored_once_and_replied_once(stack: Stack, wamid: str, sender: str) -> None:
    assert stack.query("select count(*) from inbound_messages where msg_id = %s", wamid) == [(1,)]
    stack.wait_rows("select status from inbound_messages where msg_id = %s", wamid,
                    predicate=lambda rows: rows == [("PROCESSED",)], timeout=90)
    stack.wait_rows("select status from outbound_messages where msg_id = %s", wamid,
                    predicate=lambda rows: rows == [("SENT",)], timeout=60)
    time.sleep(2)  # a second reply, if any, would have gone out by now
    assert replies_sent_to(stack, sender) == 1


def leave_received(stack: Stack, *, sender: str, age_seconds: int) -> str:
    """An inbound row as a background step that died leaves it: stored, still RECEIVED."""
    wamid = meta.new_wamid()
    stack.query("insert into inbound_messages (channel, msg_id, conversation_key, sender, text, payload, received_at) "
                "values ('whatsapp', %s, %s, %s, 'Bonjour, vos horaires ?', '{}', now() - make_interval(secs => %s))",
                wamid, f"whatsapp:{PHONE_NUMBER_ID}:{sender}", sender, age_seconds)
    return wamid


# --- W4 sweeper: rows left RECEIVED ---------------------------------------------------------


def test_a_message_left_received_is_redriven_and_answered_once(stack):
    wamid = leave_received(stack, sender="33600000401", age_seconds=120)
    assert run_workflow(stack, "w4").status == 200
    assert_stored_once_and_replied_once(stack, wamid, "33600000401")
    assert run_workflow(stack, "w4").status == 200  # a second sweep finds nothing to do
    assert stack.query("select redrive_count, redriven_at is not null from inbound_messages where msg_id = %s",
                       wamid) == [(1, True)]
    assert replies_sent_to(stack, "33600000401") == 1


def test_a_message_still_within_the_redrive_age_is_left_to_its_own_step(stack):
    wamid = leave_received(stack, sender="33600000402", age_seconds=5)
    assert run_workflow(stack, "w4").status == 200
    assert stack.query("select status, redrive_count from inbound_messages where msg_id = %s",
                       wamid) == [("RECEIVED", 0)]
    stack.query("delete from inbound_messages where msg_id = %s", wamid)


def test_a_message_stuck_past_the_alert_threshold_is_redriven_and_w4_posts_no_alert_of_its_own(stack):
    """RestobotMessagesStuck (Prometheus, through Alertmanager) is the one alert of this condition."""
    wamid = leave_received(stack, sender="33600000403", age_seconds=1200)
    assert run_workflow(stack, "w4").status == 200
    assert_stored_once_and_replied_once(stack, wamid, "33600000403")
    # W8's DLQ alert may post to the same sink on its own schedule; nothing else may.
    assert [r for r in stack.graph_requests() if r["path"] == "/alert" and r["body"].get("alert") != "dlq_threshold"] == []


def test_a_backlog_re_driven_at_once_is_rate_limited_by_when_each_message_was_received(stack):
    """After an outage one sweep re-drives a conversation's backlog: more messages than the limit,
    received a window apart, are not a flood (each is counted in the window it was received in)."""
    sender = f"3369{secrets.randbelow(10**8):08d}"  # its own conversation: other tests reply to theirs
    backlog = [leave_received(stack, sender=sender, age_seconds=120 + 31 * number)
               for number in range(stack.rate_limit + 2)]
    assert run_workflow(stack, "w4").status == 200
    rows = stack.wait_rows("select status from inbound_messages where msg_id = any(%s) and status <> 'RECEIVED'",
                           backlog, predicate=lambda r: len(r) == len(backlog), timeout=120)
    assert sorted(status for (status,) in rows) == ["PROCESSED"] * len(backlog)
    assert stack.query("select count(*) from security_events where event_type = 'RATE_LIMIT' "
                       "and detail ->> 'conversation_key' = %s", f"whatsapp:{PHONE_NUMBER_ID}:{sender}") == [(0,)]


# --- the intake fails closed ----------------------------------------------------------------


def test_a_replay_is_recognised_by_postgresql_alone(stack):
    payload = meta.whatsapp_text("bonjour", sender="33600000404")
    assert [deliver(stack, payload).status for _ in range(2)] == [200, 200]
    assert_stored_once_and_replied_once(stack, wamid_of(payload), "33600000404")
    replay = stack.wait_rows("select detail ->> 'by' from security_events where event_type = 'REPLAY' "
                             "and detail ->> 'msg_id' = %s", wamid_of(payload))
    assert replay == [("postgres",)]


def delivery_during_outage(stack: Stack, role: str, payload: dict, outage_seconds: float = 5) -> int:
    """Stop ``role``, deliver ``payload`` while it is down, start it again after ``outage_seconds``;
    the answer (-1: the connection failed), which may only come once the service is back."""
    docker("stop", stack.name(role))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda: deliver(stack, payload, timeout=90).status)
        time.sleep(outage_seconds)
        docker("start", stack.name(role))
        stack.forget_published_ports()
        try:
            answer = pending.result()
        except OSError as error:
            print(f"delivery during the {role} outage failed: {error}")
            answer = -1
    stack.wait_postgres()
    return answer


def assert_the_rule_held(stack: Stack, answer: int, payload: dict, sender: str) -> None:
    """Refused (Meta retries until a 200), or answered 200 and then already stored; either way, once
    the retries are done: stored once, replied once."""
    wamid = wamid_of(payload)
    if answer == 200:
        assert stack.query("select count(*) from inbound_messages where msg_id = %s", wamid) == [(1,)], \
            "answered 200 but not stored"
    workflows.wait_until_live(stack.target, timeout=180)
    retries = deliver_until_200(stack, payload) if answer != 200 else []
    print(f"answer during the outage: {answer}; Meta's retries: {retries}")
    assert_stored_once_and_replied_once(stack, wamid, sender)


def test_redis_stopped_under_a_delivery_loses_nothing(stack):
    payload = meta.whatsapp_text("bonjour", sender="33600000405")
    answer = delivery_during_outage(stack, "redis", payload)
    assert_the_rule_held(stack, answer, payload, "33600000405")


def test_postgres_stopped_under_a_delivery_loses_nothing(stack):
    payload = meta.whatsapp_text("bonjour", sender="33600000406")
    answer = delivery_during_outage(stack, "postgres", payload)
    assert_the_rule_held(stack, answer, payload, "33600000406")


def test_postgres_gone_while_meta_answers_a_reply_records_it_once_back_and_never_resends_it(stack):
    """The reply reached Meta, then PostgreSQL went away before W3 recorded it, for 40 s: longer than
    n8n's own retries of a node can last (5 tries, 5 s apart). W3 records again every 3 s while the
    reply's lease runs. Without that, the lease runs out and the reply is sent a second time."""
    stack.graph_reset()
    stack.graph_script({"status": 200, "delay": 4})  # Meta's answer comes while PostgreSQL is down
    sender = "33600000409"
    payload = meta.whatsapp_text("bonjour", sender=sender)
    assert deliver(stack, payload).status == 200
    poll(lambda: replies_sent_to(stack, sender), until=lambda sent: sent == 1, timeout=60, interval=0.3,
         what="the reply at the Graph API double")
    docker("stop", "--time", "1", stack.name("postgres"))
    time.sleep(40)
    docker("start", stack.name("postgres"))
    stack.forget_published_ports()
    stack.wait_postgres()
    rows = stack.wait_rows("select status, provider_message_id from outbound_messages where msg_id = %s",
                           wamid_of(payload), predicate=lambda rows: rows and rows[0][0] == "SENT", timeout=90)
    assert rows[0][1].startswith("wamid.DOUBLE")
    assert replies_sent_to(stack, sender) == 1
    stack.wait_n8n()  # left serving: n8n reconnects to PostgreSQL before it answers ready again


def queue_replies(stack: Stack, recipients: list[str]) -> None:
    """Replies as W2 writes them, due now, in the order of ``recipients``; W3's schedule sends them."""
    for recipient in recipients:
        stack.query("insert into outbound_messages (channel, msg_id, conversation_key, recipient, payload) "
                    "values ('whatsapp', %s, %s, %s, %s)", meta.new_wamid(),
                    f"whatsapp:{PHONE_NUMBER_ID}:{recipient}", recipient,
                    json.dumps({"messaging_product": "whatsapp", "to": recipient, "type": "text",
                                "text": {"body": "Bonjour !"}}))


def kill_the_worker_while_meta_holds_the_second_of(stack: Stack, recipients: list[str],
                                                   meta_posts_its_status: bool = False) -> dict[str, str]:
    """Queue a reply to each of ``recipients``; Meta answers the first at once and holds its answer to
    the second while the worker is killed (and started again), then posts that message's "sent" status
    if ``meta_posts_its_status``. Once every reply has an outcome: each recipient's final status."""
    stack.graph_reset()
    stack.graph_script({"status": 200}, {"status": 200, "delay": 15})
    queue_replies(stack, recipients)
    poll(lambda: len([r for r in stack.graph_requests() if r["path"] == GRAPH_MESSAGES]), until=lambda n: n >= 2,
         timeout=60, interval=0.2, what="the second reply at the Graph API double")
    docker("kill", stack.name("worker"))
    docker("start", stack.name("worker"))
    if meta_posts_its_status:
        [held] = [r for r in stack.graph_requests() if r["path"] == GRAPH_MESSAGES and r["body"]["to"] == recipients[1]]
        status = meta.whatsapp_status(held["message_id"], "sent", recipient=recipients[1],
                                      callback_data=held["body"].get("biz_opaque_callback_data"))
        print(f"Meta's status for the reply in flight: {deliver_until_200(stack, status)}")
    # without a status, the reply in flight waits for its lease to run out
    rows = stack.wait_rows("select recipient, status from outbound_messages where recipient = any(%s)", recipients,
                           predicate=lambda rows: len(rows) == len(recipients)
                           and {status for _, status in rows} <= {"SENT", "DLQ"}, timeout=200)
    time.sleep(2)  # a further send, if any, would have reached the double by now
    return dict(rows)


def test_a_worker_killed_mid_run_sends_the_reply_in_flight_again_and_no_other(stack):
    """W3 records each reply before it claims the next, so only the one in flight can go out twice
    (pipeline.on_uncertain_send = resend, the default: the Graph API takes no idempotency key). A run
    that sent all five before recording any would send all five twice."""
    recipients = [f"3360000042{n}" for n in range(5)]
    statuses = kill_the_worker_while_meta_holds_the_second_of(stack, recipients)
    sends = {recipient: replies_sent_to(stack, recipient) for recipient in recipients}
    print(f"sends per reply: {sends}")
    assert statuses == dict.fromkeys(recipients, "SENT")
    assert sends == {**dict.fromkeys(recipients, 1), recipients[1]: 2}


def test_meta_s_status_for_the_reply_in_flight_when_the_worker_dies_marks_it_sent_once(stack):
    """Each WhatsApp send carries biz_opaque_callback_data naming its row, and Meta echoes it in the
    message's statuses: the status of the reply whose answer the killed worker never read marks it SENT,
    with the id Meta gave it, and it is not sent again (the lease need not run out)."""
    recipients = [f"3360000044{n}" for n in range(5)]
    statuses = kill_the_worker_while_meta_holds_the_second_of(stack, recipients, meta_posts_its_status=True)
    sends = {recipient: replies_sent_to(stack, recipient) for recipient in recipients}
    print(f"sends per reply: {sends}")
    assert statuses == dict.fromkeys(recipients, "SENT")
    assert sends == dict.fromkeys(recipients, 1)
    [held] = [r for r in stack.graph_requests() if r["path"] == GRAPH_MESSAGES and r["body"]["to"] == recipients[1]]
    [(tag, provider_id, started, delivery)] = stack.query(
        "select 'restobot-outbound-' || id || ':' || md5(msg_id), provider_message_id, send_started_at, "
        "delivery_status from outbound_messages where recipient = %s", recipients[1])
    assert held["body"]["biz_opaque_callback_data"] == tag
    assert (provider_id, started, delivery) == (held["message_id"], None, "sent")


def test_a_send_meta_answered_too_late_is_not_sent_again_once_its_status_came(stack):
    """Meta accepts the reply but its answer comes after W3's 10 s time-out; its "sent" status comes
    first. W3 records the time-out as a transient error (RETRY, 1 s backoff on this stack), which must not
    undo the status: the reply stays SENT with Meta's id and goes out once."""
    stack.graph_reset()
    stack.graph_script({"status": 200, "delay": 12})
    recipient = "33600000451"
    queue_replies(stack, [recipient])
    [held] = poll(lambda: [r for r in stack.graph_requests() if r["path"] == GRAPH_MESSAGES], until=len,
                  timeout=60, interval=0.2, what="the reply at the Graph API double")
    deliver_until_200(stack, meta.whatsapp_status(held["message_id"], "sent", recipient=recipient,
                                                  callback_data=held["body"]["biz_opaque_callback_data"]))
    stack.wait_rows("select status from outbound_messages where recipient = %s", recipient,
                    predicate=lambda rows: rows == [("SENT",)], timeout=30)
    time.sleep(12)  # W3's time-out (10 s after the send), its record, and a retry 1 s later, had it been one
    assert stack.query("select status, provider_message_id, retry_count from outbound_messages "
                       "where recipient = %s", recipient) == [("SENT", held["message_id"], 0)]
    assert replies_sent_to(stack, recipient) == 1


def test_a_messenger_send_answered_too_late_is_not_sent_again_once_its_echo_came(stack):
    """Messenger's counterpart: the page's message_echoes carry the send's metadata, which names the row."""
    stack.graph_reset()
    stack.graph_script({"status": 200, "delay": 12})
    recipient, page = "6500000000000451", "1122334455"
    stack.query("insert into outbound_messages (channel, msg_id, conversation_key, recipient, payload) "
                "values ('messenger', %s, %s, %s, %s)", meta.new_mid(), f"messenger:{page}:{recipient}", recipient,
                json.dumps({"recipient": {"id": recipient}, "messaging_type": "RESPONSE",
                            "message": {"text": "Hello!"}}))
    path = f"/v21.0/{page}/messages"
    [held] = poll(lambda: [r for r in stack.graph_requests() if r["path"] == path], until=len,
                  timeout=60, interval=0.2, what="the reply at the Graph API double")
    echo = meta.messaging_text("messenger", "Hello!", sender=recipient, page_id=page, mid=held["message_id"],
                               is_echo=True, metadata=held["body"]["message"]["metadata"])
    answer = http("POST", f"{stack.gateway_url}/v1/inbound/messenger", meta.encode(echo),
                  {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(meta.encode(echo),
                                                                                      stack.app_secret)})
    assert answer.status == 200
    stack.wait_rows("select status from outbound_messages where recipient = %s", recipient,
                    predicate=lambda rows: rows == [("SENT",)], timeout=30)
    time.sleep(12)  # W3's time-out (10 s after the send), its record, and a retry 1 s later, had it been one
    assert stack.query("select status, provider_message_id from outbound_messages where recipient = %s",
                       recipient) == [("SENT", held["message_id"])]
    assert len([r for r in stack.graph_requests() if r["path"] == path]) == 1
    assert stack.query("select count(*) from inbound_messages where msg_id = %s", held["message_id"]) == [(0,)]


def test_only_a_status_with_the_exact_tag_of_an_unrecorded_reply_marks_it_sent(stack):
    """Two replies W3 has not sent yet (due in an hour). Statuses whose tag is foreign, malformed, or
    names the first by its id with another msg_id (a row of before a restore that rewound the
    sequence) change nothing; the exact tag of the second, in the same webhook, marks it SENT."""
    stack.graph_reset()
    recipients = ["33600000450", "33600000452"]
    for recipient in recipients:
        stack.query("insert into outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
                    "next_retry_at) values ('whatsapp', %s, %s, %s, '{}', 'RETRY', now() + interval '1 hour')",
                    meta.new_wamid(), f"whatsapp:{PHONE_NUMBER_ID}:{recipient}", recipient)
    [(first_id, first_tag), (_, second_tag)] = stack.query(
        "select id, 'restobot-outbound-' || id || ':' || md5(msg_id) from outbound_messages "
        "where recipient = any(%s) order by recipient", recipients)
    stale = f"restobot-outbound-{first_id}:{'0' * 32}"
    payload = meta.whatsapp_status("wamid.STATUS1", "sent", recipient=recipients[0], callback_data=stale)
    statuses = payload["entry"][0]["changes"][0]["value"]["statuses"]
    for number, tag in enumerate([f"restobot-outbound-{first_id}", f"{first_tag}; drop table outbound_messages",
                                  "someone-else-42", second_tag], start=2):
        statuses.append({**statuses[0], "id": f"wamid.STATUS{number}", "biz_opaque_callback_data": tag})
    try:
        deliver_until_200(stack, payload)
        stack.wait_rows("select status, provider_message_id from outbound_messages where recipient = %s",
                        recipients[1], predicate=lambda rows: rows == [("SENT", "wamid.STATUS5")], timeout=30)
        assert stack.query("select status, provider_message_id, send_started_at from outbound_messages "
                           "where recipient = %s", recipients[0]) == [("RETRY", None, None)]
        assert replies_sent_to(stack, recipients[0]) == replies_sent_to(stack, recipients[1]) == 0
    finally:  # the next tests wait for every reply to be settled (graph_reset)
        stack.query("delete from outbound_messages where recipient = any(%s) and status <> 'SENT'", recipients)


IG_ACCOUNT = "17841400000000000"
IG_MESSAGES = f"/v21.0/{IG_ACCOUNT}/messages"


def queue_instagram_reply(stack: Stack, recipient: str, text: str) -> None:
    stack.query("insert into outbound_messages (channel, msg_id, conversation_key, recipient, payload) "
                "values ('instagram', %s, %s, %s, %s)", meta.new_mid(), f"instagram:{IG_ACCOUNT}:{recipient}",
                recipient, json.dumps({"recipient": {"id": recipient}, "messaging_type": "RESPONSE",
                                       "message": {"text": text}}))


def instagram_sends(stack: Stack) -> list[dict]:
    return [r for r in stack.graph_requests() if r["path"] == IG_MESSAGES]


def echo_instagram_send(stack: Stack, send: dict) -> None:
    """Meta's echo of a message the account sent: is_echo, its mid and text, and no metadata (Instagram's
    Send API takes none)."""
    echo = meta.messaging_text("instagram", send["body"]["message"]["text"], sender=send["body"]["recipient"]["id"],
                               page_id=IG_ACCOUNT, mid=send["message_id"], is_echo=True)
    body = meta.encode(echo)
    answer = http("POST", f"{stack.gateway_url}/v1/inbound/instagram", body,
                  {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, stack.app_secret)})
    assert answer.status == 200


def test_an_instagram_send_answered_too_late_is_settled_by_its_echo_and_one_without_an_echo_is_sent_again(stack):
    """Instagram replies carry no tag, but Meta echoes each message the account sends. Two identical
    replies to one customer: Meta answers the first at once and the second after W3's 10 s time-out, and
    echoes both. W3, about to send the second again, takes the echo that no reply holds (the first's is
    held by the first's record). A reply to another customer answered too late, with no echo, is sent again."""
    stack.graph_reset()
    stack.graph_script({"status": 200}, {"status": 200, "delay": 12}, {"status": 200, "delay": 12})
    customer, other = "6800000000000461", "6800000000000462"
    text = "Bonjour, merci pour votre message !"
    for recipient in (customer, customer, other):
        queue_instagram_reply(stack, recipient, text)
    first, second = poll(lambda: instagram_sends(stack), until=lambda sends: len(sends) >= 2, timeout=60,
                         interval=0.2, what="two replies at the Graph API double")[:2]
    for send in (first, second):
        echo_instagram_send(stack, send)
    rows = stack.wait_rows("select recipient, status, provider_message_id from outbound_messages "
                           "where recipient = any(%s) order by id", [customer, other],
                           predicate=lambda rows: len(rows) == 3 and {r[1] for r in rows} == {"SENT"}, timeout=90)
    time.sleep(2)  # a further send, if any, would have reached the double by now
    sends = [send["body"]["recipient"]["id"] for send in instagram_sends(stack)]
    print(f"Instagram sends: {sends}")
    assert rows[:2] == [(customer, "SENT", first["message_id"]), (customer, "SENT", second["message_id"])]
    assert (sends.count(customer), sends.count(other)) == (2, 2)
    assert stack.query("select count(*) from outbound_echoes where mid = any(%s)",
                       [first["message_id"], second["message_id"]]) == [(2,)]


def test_a_run_with_nothing_due_sends_nothing(stack):
    """W3 runs every 10 s; with no reply due it must not call the Graph API at all (n8n's Postgres node may
    answer an UPDATE that changed no row with an item of its own, `{success: true}`, which W3's "Claimed
    one?" stops)."""
    stack.graph_reset()
    time.sleep(12)  # one run of the schedule at least
    assert [r["path"] for r in stack.graph_requests() if r["path"].endswith("/messages")] == []


def test_a_message_signed_with_the_previous_app_secret_after_its_overlap_is_refused_and_recorded(stack):
    """The overlap over (META_APP_SECRET_PREVIOUS_UNTIL an hour ago), the old secret is a wrong one."""
    stack.wait_n8n()  # a 503 from the gateway (n8n not ready) would say nothing of the signature
    payload = meta.whatsapp_text("bonjour", sender="33600000502")
    body = meta.encode(payload)
    before = stack.query("select count(*) from security_events where event_type = 'SIGNATURE_INVALID'")[0][0]
    answer = http("POST", f"{stack.gateway_url}/v1/inbound/whatsapp", body, {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta.sign(body, stack.environ["META_APP_SECRET_PREVIOUS"])})
    assert answer.status == 403
    assert stack.query("select count(*) from inbound_messages where msg_id = %s", wamid_of(payload)) == [(0,)]
    stack.wait_rows("select count(*) from security_events where event_type = 'SIGNATURE_INVALID'",
                    predicate=lambda rows: rows[0][0] == before + 1)


def test_a_message_postgresql_refuses_is_refused_and_so_is_its_retry(stack):
    """Its retry too: nothing may count the first delivery as seen (a replay check before the insert
    did, and answered the retry 200 with nothing stored)."""
    stack.wait_n8n()  # else the gateway's 503 for an n8n not ready would pass for PostgreSQL's refusal
    payload = meta.whatsapp_text("nul \u0000 byte", sender="33600000407")  # jsonb cannot hold \u0000
    answers = [deliver(stack, payload) for _ in range(2)]
    assert all(answer.status >= 500 for answer in answers), [(a.status, a.text[:200]) for a in answers]
    assert stack.query("select count(*) from inbound_messages where msg_id = %s", wamid_of(payload)) == [(0,)]


# --- pipeline.on_uncertain_send = park (a stack of its own, last: its lease is 30 s) -----------------


@pytest.fixture(scope="module")
def parking_stack(tmp_path_factory):
    """A stack of its own whose settings choose pipeline.on_uncertain_send = park."""
    with running_stack(tmp_path_factory.mktemp("wfpark"), tmp_path_factory.mktemp("wfparkdir"), {},
                       on_uncertain_send="park", lease_seconds=30) as running:
        yield running


def test_with_park_the_reply_in_flight_when_the_worker_dies_goes_to_the_dlq_unsent_again(parking_stack):
    stack = parking_stack
    recipients = [f"3360000043{n}" for n in range(5)]
    statuses = kill_the_worker_while_meta_holds_the_second_of(stack, recipients)
    assert statuses == {**dict.fromkeys(recipients, "SENT"), recipients[1]: "DLQ"}
    assert {recipient: replies_sent_to(stack, recipient) for recipient in recipients} == dict.fromkeys(recipients, 1)
    [(code, message, started)] = stack.query(
        "select error_code, error_message, send_started_at from outbound_messages where recipient = %s", recipients[1])
    assert (code, started) == ("send_outcome_unknown", None)
    assert "may have reached the customer" in message


def test_with_park_an_instagram_reply_in_flight_when_the_worker_dies_is_settled_by_its_echo(parking_stack):
    """The lease of an Instagram reply whose worker died runs out with no outcome; Meta's echo of the
    send (same recipient and text, after the send) marks it SENT with Meta's id instead of parking it."""
    stack = parking_stack
    stack.graph_reset()
    stack.graph_script({"status": 200, "delay": 15})
    recipient = "6800000000000471"
    queue_instagram_reply(stack, recipient, "Hello, thanks for your message!")
    [held] = poll(lambda: instagram_sends(stack), until=len, timeout=60, interval=0.2,
                  what="the reply at the Graph API double")
    echo_instagram_send(stack, held)
    # W2 keeps the echo after W1's 200, on the worker: killed before that, the echo would be lost (Meta
    # does not send an answered webhook again), and the reply parked
    stack.wait_rows("select mid from outbound_echoes where mid = %s", held["message_id"], predicate=bool, timeout=30)
    docker("kill", stack.name("worker"))
    docker("start", stack.name("worker"))
    rows = stack.wait_rows("select status, provider_message_id, error_code, send_started_at from outbound_messages "
                           "where recipient = %s", recipient, predicate=lambda rows: rows[0][0] != "PENDING",
                           timeout=120)
    time.sleep(2)  # a further send, if any, would have reached the double by now
    assert rows == [("SENT", held["message_id"], None, None)]
    assert len(instagram_sends(stack)) == 1
