"""postgres-exporter's custom queries (templates/monitoring/postgres-exporter-queries.yml.j2) on the real schema.

The bot's figures that the alert rules read (security events per type in the last hour, inbound rows
stuck in RECEIVED, outbound RETRY/DLQ counts) are computed by these queries: each runs here on a
PostgreSQL migrated with migrations/, over rows written as the workflows write them.
"""

from __future__ import annotations

import io
import json

import psycopg
import pytest
import yaml

from restobot.remote.migrate.lexer import DEFAULT_DIR
from restobot.remote.migrate.runner import apply
from restobot.render import SECURITY_EVENT_TYPES, render_monitoring
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage


@pytest.fixture(scope="module")
def queries() -> dict:
    settings = settings_for_stage("production", generate_secrets())
    text = render_monitoring(settings)["monitoring/postgres-exporter/queries.yml"].text
    return yaml.safe_load(text)


@pytest.fixture
def database(empty_database) -> str:
    apply(empty_database, DEFAULT_DIR, io.StringIO())
    return empty_database


def run(url: str, queries: dict, name: str) -> list[dict]:
    with psycopg.connect(url) as connection:
        cursor = connection.execute(queries[name]["query"])
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def execute(url: str, sql: str, rows: list[tuple]) -> None:
    with psycopg.connect(url) as connection:
        connection.cursor().executemany(sql, rows)


def test_every_query_returns_the_columns_its_metrics_name(database, queries):
    for name, query in queries.items():
        declared = [column for metric in query["metrics"] for column in metric]
        with psycopg.connect(database) as connection:
            cursor = connection.execute(query["query"])
            assert [column.name for column in cursor.description] == declared, name


def test_security_events_are_counted_per_type_over_the_last_hour(database, queries):
    execute(database, "INSERT INTO security_events (event_type, channel, created_at) "
                      "VALUES (%s, 'whatsapp', now() - make_interval(mins => %s))",
            [("SIGNATURE_INVALID", 1), ("SIGNATURE_INVALID", 30), ("SIGNATURE_INVALID", 59),
             ("SIGNATURE_INVALID", 61), ("SIGNATURE_INVALID", 600), ("RATE_LIMIT", 5), ("RATE_LIMIT", 6)])
    counts = {row["event_type"]: row["last_hour"] for row in run(database, queries, "restobot_security_events")}
    assert counts == {**dict.fromkeys(SECURITY_EVENT_TYPES, 0), "SIGNATURE_INVALID": 3, "RATE_LIMIT": 2}


def test_no_event_reads_zero_for_every_type(database, queries):
    counts = {row["event_type"]: row["last_hour"] for row in run(database, queries, "restobot_security_events")}
    assert counts == dict.fromkeys(SECURITY_EVENT_TYPES, 0)


def test_inbound_reports_rows_left_received_and_the_oldest_one_s_age(database, queries):
    payload = json.dumps({"id": "x"})
    execute(database, "INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, payload, received_at, "
                      "status, processed_at) VALUES ('whatsapp', %s, 'c', '33600000000', %s, "
                      "now() - make_interval(secs => %s), %s, %s)",
            [("wamid.old", payload, 1500, "RECEIVED", None), ("wamid.new", payload, 2, "RECEIVED", None),
             ("wamid.done", payload, 90000, "PROCESSED", "2026-01-01T00:00:00Z")])
    [row] = run(database, queries, "restobot_inbound")
    assert row["received"] == 2
    assert 1500 <= float(row["received_oldest_age_seconds"]) < 1560


def test_no_received_row_reads_zero_age(database, queries):
    [row] = run(database, queries, "restobot_inbound")
    assert (row["received"], float(row["received_oldest_age_seconds"])) == (0, 0.0)


def test_outbound_counts_pending_retry_and_dlq_rows(database, queries):
    payload = json.dumps({"text": "x"})
    execute(database, "INSERT INTO outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
                      "next_retry_at, sent_at, provider_message_id) VALUES ('whatsapp', %s, 'c', '33600000000', %s, "
                      "%s, %s, %s, %s)",
            [("m1", payload, "DLQ", None, None, None), ("m2", payload, "DLQ", None, None, None),
             ("m3", payload, "RETRY", "2026-01-01T00:00:00Z", None, None),
             ("m4", payload, "SENT", None, "2026-01-01T00:00:00Z", "wamid.sent")])
    counts = {row["status"]: row["messages"] for row in run(database, queries, "restobot_outbound")}
    assert counts == {"PENDING": 0, "RETRY": 1, "DLQ": 2}
