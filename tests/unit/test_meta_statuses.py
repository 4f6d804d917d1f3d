"""The statuses the Meta-like sender posts (harness.traffic): one "sent" per WhatsApp send the Graph
API double accepted, echoing the send's biz_opaque_callback_data, as Meta does."""

from __future__ import annotations

import json
from pathlib import Path

from harness.traffic import statuses_for_accepted_sends

W3 = Path(__file__).resolve().parents[2] / "workflows" / "W3_OUTBOUND_SENDER.json"


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


def test_a_late_graph_answer_is_scripted_as_an_accepted_send_held_past_w3s_time_out():
    from harness.faults import LATE_GRAPH_ANSWERS, GraphFault

    [send] = [node for node in json.loads(W3.read_text())["nodes"] if node["name"] == "Send through Graph API"]
    assert LATE_GRAPH_ANSWERS.answer() == {"status": 200, "delay": 12}
    assert LATE_GRAPH_ANSWERS.delay > send["parameters"]["options"]["timeout"] / 1000
    assert str(LATE_GRAPH_ANSWERS) == "graph api answers 200 after 12 s x3"
    assert GraphFault(429).answer() == {"status": 429, "code": 130429}
