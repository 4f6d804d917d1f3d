"""The statuses the Meta-like sender posts (harness.traffic): one "sent" per WhatsApp send the Graph
API double accepted, echoing the send's biz_opaque_callback_data, as Meta does."""

from __future__ import annotations

from harness.traffic import statuses_for_accepted_sends


def request(status=200, message_id="wamid.DOUBLE000001", **body):
    return {"path": "/v21.0/109876543210/messages", "status": status, "message_id": message_id,
            "body": {"messaging_product": "whatsapp", "to": "33611112222", "type": "text", **body}}


def test_an_accepted_send_gets_a_sent_status_echoing_its_tag():
    [(message_id, payload)] = statuses_for_accepted_sends(
        [request(biz_opaque_callback_data="restobot-outbound-7")], "109876543210")
    value = payload["entry"][0]["changes"][0]["value"]
    assert message_id == "wamid.DOUBLE000001"
    assert value["metadata"]["phone_number_id"] == "109876543210"
    [status] = value["statuses"]
    assert (status["id"], status["status"], status["recipient_id"], status["biz_opaque_callback_data"]) == (
        "wamid.DOUBLE000001", "sent", "33611112222", "restobot-outbound-7")


def test_a_send_without_a_tag_gets_a_status_without_one():
    [(_, payload)] = statuses_for_accepted_sends([request()], "109876543210")
    assert "biz_opaque_callback_data" not in payload["entry"][0]["changes"][0]["value"]["statuses"][0]


def test_refused_or_cut_sends_alerts_and_other_channels_get_none():
    refused = request(status=503, message_id=None)
    cut = request(status=0, message_id=None)
    alert = {"path": "/alerts", "status": 200, "message_id": None, "body": {"alerts": []}}
    messenger = {"path": "/v21.0/me/messages", "status": 200, "message_id": "m_DOUBLE000002",
                 "body": {"recipient": {"id": "6543210987654321"}, "message": {"text": "Bonjour"}}}
    assert statuses_for_accepted_sends([refused, cut, alert, messenger], "109876543210") == []
