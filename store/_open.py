"""Open the store ``--db`` names: a ``postgresql://`` URL, or else a SQLite file path."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._leases import DEFAULT_LEASE_TTL_S
from ._postgres import PostgresStore, is_postgres_url, open_postgres_store
from ._sqlite import SqliteStore, open_sqlite_store

__all__ = ["AnyStore", "open_store"]

AnyStore = SqliteStore | PostgresStore
"""Either backend (both implement `SessionStore` and the lease API)."""


@asynccontextmanager
async def open_store(
    target: str | os.PathLike[str],
    *,
    close_timeout: float = 30.0,
    read_only: bool = False,
    owner: str | None = None,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    address: str | None = None,
) -> AsyncIterator[AnyStore]:
    """Open the store at ``target`` (see `open_sqlite_store` / `open_postgres_store`).

    Args:
        target: ``postgresql://...`` (or ``postgres://...``) for PostgreSQL, else a path.
        close_timeout: Upper bound in seconds for draining the writer on exit.
        read_only: SQLite only: open an existing database for reading (``sessions`` reads).
        owner: This process's id: leases on, every write fenced by its lease.
        lease_ttl_s: Lease duration.
        address: Advertised with each lease (``--advertise``).
    """
    if isinstance(target, str) and is_postgres_url(target):
        async with open_postgres_store(
            target,
            close_timeout=close_timeout,
            owner=owner,
            lease_ttl_s=lease_ttl_s,
            address=address,
        ) as pg:
            yield pg
    else:
        async with open_sqlite_store(
            target,
            close_timeout=close_timeout,
            read_only=read_only,
            owner=owner,
            lease_ttl_s=lease_ttl_s,
            address=address,
        ) as lite:
            yield lite
