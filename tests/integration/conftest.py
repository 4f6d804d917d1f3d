"""Fixtures for integration tests that need real services started on this machine.

PostgreSQL (owned by the migrations work): ``postgres_server`` starts one
throwaway cluster per test session (harness/postgres.py: initdb into a temp dir,
``postgres`` on 127.0.0.1 and a free port, run as the ``postgres`` system user when
the tests run as root, scram password generated per session, fsync off) and stops it
at the end; ``empty_database`` gives each test a fresh database URL and drops the
database afterwards. Other fixtures go below, in their own sections.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from harness.postgres import ThrowawayPostgres, postgres_bindir

# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the whole session (127.0.0.1, generated password)."""
    with ThrowawayPostgres(postgres_bindir()) as server:
        yield server


@pytest.fixture
def empty_database(postgres_server: ThrowawayPostgres) -> Iterator[str]:
    """The URL of a fresh, empty database on ``postgres_server``, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
