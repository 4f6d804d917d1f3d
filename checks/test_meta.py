"""Meta's webhooks: verify token, signature policy, the callback URLs, a message inbound -> outbound.

The runbook's "META_VERIFY_TOKEN configuré et testé", "META_APP_SECRET configuré",
"META_SIGNATURE_REQUIRED=enforce", "Webhooks configurés dans Meta Developer Portal",
"GET verify réussi sur les 3 canaux", "Test message inbound → outbound sur chaque canal".
"""

from __future__ import annotations

import secrets
import socket
import time
import urllib.parse

import pytest
from conftest import CHANNELS, manual, sha256

from restobot import meta_payloads


def _verify_path(channel: str, token: str, challenge: str) -> str:
    query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge})
    return f"/v1/inbound/{channel}?{query}"


def test_verify_token_is_configured_in_n8n(target, evidence):
    running = target.container_env_sha256("n8n-main", "META_VERIFY_TOKEN")
    assert running is not None, "META_VERIFY_TOKEN is not set in n8n-main's environment"
    assert running == sha256(target.settings.meta.verify_token.get_secret_value()), (
        "META_VERIFY_TOKEN in n8n-main differs from the settings' (deploy again)"
    )
    evidence("n8n-main's META_VERIFY_TOKEN matches the settings (compared by sha256)")


@pytest.mark.parametrize("channel", CHANNELS)
def test_verify_handshake_answers_the_challenge(target, channel, evidence):
    challenge = f"golive-{secrets.token_hex(6)}"
    answer = target.request("api", _verify_path(channel, target.settings.meta.verify_token.get_secret_value(),
                                                  challenge))
    assert (answer.status, answer.text) == (200, challenge), (
        f"GET /v1/inbound/{channel} verify answered {answer.status} {answer.text[:80]!r}, want 200 {challenge!r}"
    )
    evidence(f"200 {challenge} through https://{target.public_name('api')}")


@pytest.mark.parametrize("channel", CHANNELS)
def test_verify_handshake_refuses_a_wrong_token(target, channel, evidence):
    challenge = f"golive-{secrets.token_hex(6)}"
    answer = target.request("api", _verify_path(channel, f"wrong-{secrets.token_hex(12)}", challenge))
    assert answer.status == 403 and challenge not in answer.text, (
        f"GET /v1/inbound/{channel} with a wrong token answered {answer.status} {answer.text[:80]!r}, want 403"
    )
    evidence("403")


def test_app_secret_is_configured_in_n8n(target, evidence):
    configured = target.settings.meta.app_secret
    assert configured is not None, "meta.app_secret is not set (META_APP_SECRET): signatures cannot be checked"
    running = target.container_env_sha256("n8n-main", "META_APP_SECRET")
    assert running == sha256(configured.get_secret_value()), (
        "META_APP_SECRET in n8n-main is " + ("unset" if running is None else "not the settings' (deploy again)")
    )
    evidence("n8n-main's META_APP_SECRET matches the settings (compared by sha256)")


@pytest.mark.parametrize("service", ["n8n-main", "n8n-worker"])
def test_signature_mode_is_enforce(target, service, evidence):
    mode = target.container_env(service, "META_SIGNATURE_REQUIRED")
    assert mode == "enforce", f"META_SIGNATURE_REQUIRED is {mode!r} in the running {service}, want 'enforce'"
    evidence(f"{service}: META_SIGNATURE_REQUIRED=enforce")


@pytest.mark.parametrize("channel", CHANNELS)
def test_bad_signature_is_refused_and_recorded(target, channel, evidence):
    body = meta_payloads.encode(_payload(target, channel, sender="33600000000", text="go-live: must be refused"))
    since = target.sql("select now()")
    answer = target.request("api", f"/v1/inbound/{channel}", method="POST", body=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secrets.token_hex(32))})
    assert answer.status == 403, (
        f"badly-signed POST /v1/inbound/{channel} answered {answer.status} {answer.text[:80]!r}, want 403"
    )
    query = ("select count(*) from security_events where event_type = 'SIGNATURE_INVALID' "
             "and channel = :'channel' and created_at >= :'since'::timestamptz")
    count = target.sql_until(query, lambda out: out not in ("", "0"), timeout=10,
                             variables={"channel": channel, "since": since})
    assert count not in ("", "0"), "the refused badly-signed POST left no SIGNATURE_INVALID row in security_events"
    evidence("403, SIGNATURE_INVALID recorded")


@pytest.mark.parametrize("channel", CHANNELS)
def test_unsigned_post_is_refused_at_the_gateway(target, channel, evidence):
    """Neither X-Hub-Signature-256 nor x-api-token: the gateway refuses it and n8n never runs for it."""
    body = meta_payloads.encode(_payload(target, channel, sender="33600000000", text="go-live: unsigned"))
    answer = target.request("api", f"/v1/inbound/{channel}", method="POST", body=body,
                            headers={"Content-Type": "application/json"})
    assert (answer.status, answer.text) == (403, '{"error":"forbidden"}'), (
        f"unsigned POST /v1/inbound/{channel} answered {answer.status} {answer.text[:80]!r}, "
        "want the gateway's 403 {\"error\":\"forbidden\"} (signature mode enforce)"
    )
    evidence("403 from the gateway")


def _payload(target, channel: str, *, sender: str, text: str) -> dict:
    meta = target.settings.meta
    if channel == "whatsapp":
        return meta_payloads.whatsapp_text(text, sender=sender, phone_number_id=meta.wa_phone_number_id)
    page = (meta.ig_account_id if channel == "instagram" else meta.msg_page_id) or "1122334455"
    return meta_payloads.messaging_text(channel, text, sender=sender, page_id=page)


def test_public_names_resolve(target, evidence):
    if target.settings.checks.public_address:
        manual(f"checks.public_address ({target.settings.checks.public_address}) replaces DNS for this stage: "
               f"confirm that {target.public_name('api')} and {target.public_name('console')} resolve to the VPS")
    resolved = {}
    for which in ("api", "console"):
        name = target.public_name(which)
        try:
            resolved[name] = sorted({info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)})
        except socket.gaierror as error:
            pytest.fail(f"{name} does not resolve: {error}")
    evidence(", ".join(f"{name} -> {' '.join(addresses)}" for name, addresses in resolved.items()))


@pytest.mark.parametrize("channel", CHANNELS)
def test_meta_webhook_subscription_is_confirmed(target, channel):
    url = f"https://{target.public_name('api')}/v1/inbound/{channel}"
    product = {"whatsapp": "WhatsApp > Configuration", "instagram": "Instagram > Webhooks",
               "messenger": "Messenger > Webhooks"}[channel]
    # Messenger's message_echoes carry the metadata W3 puts on each reply: how a reply whose answer
    # was lost is known as sent (WhatsApp's statuses and Instagram's echoes come with 'messages').
    fields = "fields 'messages' and 'message_echoes'" if channel == "messenger" else "field 'messages'"
    manual(f"in Meta's App Dashboard ({product}): callback URL {url}, the verify token of the settings, "
           f"{fields} subscribed (the handshake itself is checked by verify_handshake_answers_the_challenge)")


@pytest.mark.parametrize("channel", CHANNELS)
def test_signed_message_produces_an_outbound_reply(target, channel, evidence):
    recipient = target.settings.checks.test_recipients.get(channel)
    if recipient is None:
        manual(f"no checks.test_recipients.{channel}: send a message to the bot on {channel} from a test "
               "account and confirm the reply arrives")
    secret = target.settings.meta.app_secret
    assert secret is not None, "meta.app_secret is not set: a signed test message cannot be built"
    payload = _payload(target, channel, sender=recipient, text="Bonjour, quels sont vos horaires ?")
    body = meta_payloads.encode(payload)
    message_id = (payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"] if channel == "whatsapp"
                  else payload["entry"][0]["messaging"][0]["message"]["mid"])
    answer = target.request("api", f"/v1/inbound/{channel}", method="POST", body=body, headers={
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta_payloads.sign(body, secret.get_secret_value())})
    assert answer.status == 200, f"signed POST /v1/inbound/{channel} answered {answer.status} {answer.text[:80]!r}"
    started = time.monotonic()
    query = (
        "select coalesce((select string_agg(concat_ws('|', o.status, o.provider_message_id, o.error_code, "
        "left(o.error_message, 120)), ';') from outbound_messages o join inbound_messages i "
        "on i.id = o.inbound_message_id where i.channel = :'channel' and i.msg_id = :'message_id'), "
        "'no outbound row; inbound ' || coalesce((select status || ' ' || coalesce(status_reason, '') "
        "from inbound_messages where channel = :'channel' and msg_id = :'message_id'), 'not stored'))"
    )
    # A first attempt that failed (RETRY with its error) ends the wait: the reply did not go out.
    row = target.sql_until(query, lambda out: out.split("|")[0] in ("SENT", "DLQ", "RETRY"),
                           timeout=target.settings.checks.outbound_timeout_seconds,
                           variables={"channel": channel, "message_id": message_id})
    assert row.startswith("SENT|") and row.split("|")[1], (
        f"{channel}: the reply to test message {message_id} is not sent after "
        f"{time.monotonic() - started:.0f} s: {row}"
    )
    evidence(f"reply SENT to {recipient}, provider id {row.split('|')[1]} ({time.monotonic() - started:.1f} s)")
