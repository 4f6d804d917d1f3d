"""postgres-exporter's custom queries (templates/monitoring/postgres-exporter-queries.yml.j2) on the real schema.

The bot's figures that the alert rules read (security events per type in the last
`monitoring.events_window_minutes`, inbound rows stuck in RECEIVED, outbound RETRY/DLQ counts) are
computed by these queries: each runs here on a PostgreSQL migrated with migrations/, over rows
written as the workflows write them.
"""

from __future__ import annotations

import io
import json

import psycopg
import pytest
import yaml

from harness.poll import poll
from harness.postgres import ThrowawayPostgres, postgres_bindir
from restobot.remote.migrate.lexer import DEFAULT_DIR
from restobot.remote.migrate.runner import apply
from restobot.render import SECURITY_EVENT_TYPES, render_monitoring
from restobot.secrets import generate_secrets
from tests.conftest import settings_for_stage
from tests.unit.test_alert_rules import OFFSITE


def rendered_queries(**monitoring) -> dict:
    settings = settings_for_stage("production", generate_secrets(), monitoring=monitoring)
    text = render_monitoring(settings)["monitoring/postgres-exporter/queries.yml"].text
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def queries() -> dict:
    return rendered_queries()


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
    counts = {row["event_type"]: row["in_window"] for row in run(database, queries, "restobot_security_events")}
    assert counts == {**dict.fromkeys(SECURITY_EVENT_TYPES, 0), "SIGNATURE_INVALID": 3, "RATE_LIMIT": 2}


def test_security_events_are_counted_over_the_settable_window(database):
    queries = rendered_queries(events_window_minutes=10)
    execute(database, "INSERT INTO security_events (event_type, channel, created_at) "
                      "VALUES (%s, 'whatsapp', now() - make_interval(mins => %s))",
            [("SIGNATURE_INVALID", 1), ("SIGNATURE_INVALID", 9), ("SIGNATURE_INVALID", 11), ("RATE_LIMIT", 30)])
    counts = {row["event_type"]: row["in_window"] for row in run(database, queries, "restobot_security_events")}
    assert counts == {**dict.fromkeys(SECURITY_EVENT_TYPES, 0), "SIGNATURE_INVALID": 2}


def test_no_event_reads_zero_for_every_type(database, queries):
    counts = {row["event_type"]: row["in_window"] for row in run(database, queries, "restobot_security_events")}
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


def test_outcome_unknown_counts_the_replies_w3_parked_and_nothing_else_in_the_dlq(database, queries):
    payload = json.dumps({"text": "x"})
    execute(database, "INSERT INTO outbound_messages (channel, msg_id, conversation_key, recipient, payload, status, "
                      "error_code, next_retry_at) VALUES ('whatsapp', %s, 'c', '33600000000', %s, %s, %s, %s)",
            [("u1", payload, "DLQ", "send_outcome_unknown", None), ("u2", payload, "DLQ", "131047", None),
             ("u3", payload, "RETRY", "network", "2026-01-01T00:00:00Z")])
    [row] = run(database, queries, "restobot_outbound_outcome")
    assert row["unknown"] == 1


# --- WAL archiving (rendered with the off-site backup): pg_stat_archiver on a server that archives ---


@pytest.fixture(scope="module")
def offsite_queries() -> dict:
    settings = settings_for_stage("production", generate_secrets(), offsite_backup=OFFSITE)
    text = render_monitoring(settings)["monitoring/postgres-exporter/queries.yml"].text
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def archiving_server():
    """A cluster that archives its WAL with an archive_command that succeeds, as pgBackRest's does."""
    # archive_command is set by ALTER SYSTEM, never with -c: a command-line setting outranks it.
    with ThrowawayPostgres(postgres_bindir(), settings=("archive_mode=on",)) as server:
        archive_command(server, "/bin/true")
        yield server


def archive_command(server: ThrowawayPostgres, command: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
        connection.execute("SELECT pg_reload_conf()")


def switch_wal(server: ThrowawayPostgres) -> None:
    """A write, then a new WAL segment: the full one goes to archive_command."""
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS written (at timestamptz)")
        connection.execute("INSERT INTO written VALUES (now())")
        connection.execute("SELECT pg_switch_wal()")


def wal_archive(server: ThrowawayPostgres, queries: dict) -> dict:
    [row] = run(server.url(), queries, "restobot_wal_archive")
    return row


def archived_after_a_switch(server: ThrowawayPostgres, queries: dict) -> dict:
    """A segment handed to archive_command, then the query (the archiver reloads its configuration
    when it gets to it: the first switch after a change may still go to the old command)."""
    switch_wal(server)
    return wal_archive(server, queries)


def test_wal_archive_reads_not_failing_while_segments_are_archived(archiving_server, offsite_queries):
    row = poll(lambda: archived_after_a_switch(archiving_server, offsite_queries),
               until=lambda row: row["archived_count"] > 0, timeout=30, interval=1, what="a segment archived")
    assert (row["failing"], row["failed_count"]) == (0, 0)


def test_wal_archive_reads_failing_while_archive_command_fails_and_not_once_it_succeeds_again(
        archiving_server, offsite_queries):
    archive_command(archiving_server, "/bin/false")
    try:
        failing = poll(lambda: archived_after_a_switch(archiving_server, offsite_queries),
                       until=lambda row: row["failing"] == 1, timeout=60, interval=1, what="the archiver's failure")
        assert failing["failed_count"] > 0
    finally:
        archive_command(archiving_server, "/bin/true")
    poll(lambda: archived_after_a_switch(archiving_server, offsite_queries), until=lambda row: row["failing"] == 0,
         timeout=120, interval=2, what="the archiver's next success")
