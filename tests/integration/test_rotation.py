"""The role's password set as a SCRAM-SHA-256 verifier (restobot/rotation.py) on a real PostgreSQL:
the new password logs in over TCP (scram-sha-256 in pg_hba), the old one no longer does."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql
import pytest

from restobot.rotation import generated_value, role_password_sql, scram_sha256_verifier


@pytest.fixture
def role(postgres_server):
    name = f"rotated_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'first-password'").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def role_url(postgres_server, role: str, password: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{postgres_server.port}/postgres"


def test_the_verifier_is_the_new_password_and_the_old_one_stops_working(postgres_server, role):
    new = generated_value("POSTGRES_PASSWORD")
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(role_password_sql(role, scram_sha256_verifier(new)))
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$4096:") and new not in stored
    with psycopg.connect(role_url(postgres_server, role, new)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(role_url(postgres_server, role, "first-password"))
