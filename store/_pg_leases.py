"""The lease SQL of the PostgreSQL store (see ``_leases.py`` for what leases are).

Times come from the database server's clock (``clock_timestamp()``): replicas on several
hosts agree on when a lease expires whatever their own clocks say.
"""

from __future__ import annotations

from typing import Any, Final

from ._leases import Lease, LeaseBook, LeaseHeldElsewhere
from ._records import StoreError

__all__ = ["acquire_lease_pg", "get_lease_pg", "release_lease_pg", "renew_leases_pg"]

_NOW: Final = "extract(epoch FROM clock_timestamp())::float8"  # the database's clock
_ACQUIRE = f"""
INSERT INTO session_leases AS l (session_id, owner, epoch, expires_at, address)
VALUES ($1, $2, 1, {_NOW} + $3, $4)
ON CONFLICT (session_id) DO UPDATE SET
    owner = excluded.owner,
    epoch = CASE WHEN l.owner = excluded.owner THEN l.epoch ELSE l.epoch + 1 END,
    expires_at = excluded.expires_at,
    address = excluded.address
WHERE l.owner = excluded.owner OR l.expires_at <= {_NOW}
RETURNING epoch, expires_at
"""
_RENEW = (
    f"UPDATE session_leases SET expires_at = {_NOW} + $3 "
    "WHERE owner = $1 AND session_id = ANY($2::text[]) RETURNING session_id, epoch"
)
_RELEASE = (
    "UPDATE session_leases SET expires_at = 0 WHERE session_id = $1 AND owner = $2 AND epoch = $3"
)
_GET_LEASE = "SELECT session_id, owner, epoch, expires_at, address FROM session_leases "


async def acquire_lease_pg(pool: Any, book: LeaseBook, session_id: str) -> Lease:
    """Take (or keep) the lease; see `PostgresStore.acquire_lease`."""
    for _attempt in range(3):
        row = await pool.fetchrow(_ACQUIRE, session_id, book.owner, book.ttl_s, book.address)
        if row is not None:
            book.held[session_id] = row[0]
            return Lease(session_id, book.owner, row[0], row[1], book.address)
        current = await get_lease_pg(pool, session_id)
        if current is not None:
            raise LeaseHeldElsewhere(current)
    raise StoreError(f"session {session_id}: lease keeps changing hands; retry")


async def renew_leases_pg(pool: Any, book: LeaseBook) -> set[str]:
    """Extend the wanted leases, release the others; forget and report the lost ones."""
    held, unwanted = book.for_renewal()
    for sid in unwanted:
        await release_lease_pg(pool, book, sid)
    if not held:
        return set()
    rows = await pool.fetch(_RENEW, book.owner, list(held), book.ttl_s)
    kept = {row[0]: row[1] for row in rows}
    lost = {sid for sid, epoch in held.items() if kept.get(sid) != epoch}
    for sid in lost:
        book.lost(sid, held[sid])
    return lost


async def release_lease_pg(pool: Any, book: LeaseBook, session_id: str) -> None:
    """Expire the lease now, keeping its epoch for the next owner to increment."""
    epoch = book.held.pop(session_id, None)
    if epoch is not None:
        await pool.execute(_RELEASE, session_id, book.owner, epoch)


async def get_lease_pg(pool: Any, session_id: str) -> Lease | None:
    """The lease row of a session, if any."""
    row = await pool.fetchrow(_GET_LEASE + "WHERE session_id = $1", session_id)
    return Lease(*row) if row is not None else None
