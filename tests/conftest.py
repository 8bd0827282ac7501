"""Fixtures shared by the store and integration tests: a throwaway PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from acp_proxy.testing.postgres import PostgresServer, PostgresUnavailable, postgres_server

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (skips, with the reason, where absent)."""
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL tests need a server: {exc}")


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the test server; dropped after the test."""
    name = f"acpx_{next(_names)}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)
