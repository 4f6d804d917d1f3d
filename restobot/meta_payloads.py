"""Builders of real Meta webhook payloads (WhatsApp Cloud API, Messenger,
Instagram), with the X-Hub-Signature-256 that Meta computes over the raw body.

Used by the demo's signed test message, the go-live checks and the tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid


def sign(body: bytes, app_secret: str) -> str:
    """The X-Hub-Signature-256 header value for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def new_wamid() -> str:
    return "wamid.HBgL" + uuid.uuid4().hex.upper()


def new_mid() -> str:
    return "m_" + uuid.uuid4().hex


def whatsapp_text(text: str, *, sender: str = "33612345678", msg_id: str | None = None,
                  phone_number_id: str = "109876543210", waba_id: str = "102938475610",
                  extra_messages: list[dict] | None = None) -> dict:
    """A WhatsApp Cloud API 'messages' webhook with one text message (timestamp in seconds, a string)."""
    message = {"from": sender, "id": msg_id or new_wamid(), "timestamp": str(int(time.time())),
               "type": "text", "text": {"body": text}}
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": "33123456789", "phone_number_id": phone_number_id},
                  "contacts": [{"profile": {"name": "Client"}, "wa_id": sender}],
                  "messages": [message, *(extra_messages or [])]},
    }]}]}


def whatsapp_status(provider_message_id: str, status: str = "delivered", *, recipient: str = "33612345678",
                    phone_number_id: str = "109876543210", callback_data: str | None = None) -> dict:
    """A WhatsApp status callback (sent / delivered / read / failed); ``callback_data``: the
    ``biz_opaque_callback_data`` the send carried, which Meta echoes."""
    entry = {"id": provider_message_id, "status": status, "timestamp": str(int(time.time())),
             "recipient_id": recipient,
             "conversation": {"id": "c0ffee", "origin": {"type": "service"}},
             "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}}
    if callback_data is not None:
        entry["biz_opaque_callback_data"] = callback_data
    return {"object": "whatsapp_business_account", "entry": [{"id": "102938475610", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": "33123456789", "phone_number_id": phone_number_id},
                  "statuses": [entry]},
    }]}]}


def messaging_text(channel: str, text: str, *, sender: str = "6543210987654321", page_id: str = "1122334455",
                   mid: str | None = None, is_echo: bool = False, metadata: str | None = None) -> dict:
    """A Messenger (object 'page') or Instagram (object 'instagram') message; timestamps in ms. An echo
    (the page's own send) carries the ``metadata`` that send had, as Meta's message_echoes do."""
    now_ms = int(time.time() * 1000)
    message = {"mid": mid or new_mid(), "text": text}
    if is_echo:
        message["is_echo"] = True
        message["app_id"] = 1517776481860111
        if metadata is not None:
            message["metadata"] = metadata
    return {"object": "page" if channel == "messenger" else "instagram", "entry": [{
        "id": page_id, "time": now_ms,
        "messaging": [{"sender": {"id": page_id if is_echo else sender},
                       "recipient": {"id": sender if is_echo else page_id},
                       "timestamp": now_ms, "message": message}],
    }]}
