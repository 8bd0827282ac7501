"""The lease SQL of the SQLite store (see ``_leases.py`` for what leases are).

Lease changes run on a connection beside the writer's; the writer checks the fences inside
its own ``BEGIN IMMEDIATE`` transaction, so no takeover commits between check and write.
Times come from this host's clock: processes sharing one SQLite file share a host.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from ._leases import Lease, LeaseBook, LeaseHeldElsewhere
from ._records import StoreError, WriteOp

__all__ = [
    "acquire_lease_sqlite",
    "check_fences_sync",
    "get_lease_sqlite",
    "release_lease_sqlite",
    "renew_leases_sqlite",
]

_ACQUIRE: Final = """
INSERT INTO session_leases AS l (session_id, owner, epoch, expires_at, address)
VALUES (:sid, :owner, 1, :now + :ttl, :address)
ON CONFLICT (session_id) DO UPDATE SET
    owner = excluded.owner,
    epoch = CASE WHEN l.owner = excluded.owner THEN l.epoch ELSE l.epoch + 1 END,
    expires_at = excluded.expires_at,
    address = excluded.address
WHERE l.owner = excluded.owner OR l.expires_at <= :now
RETURNING epoch, expires_at
"""
_GET: Final = (
    "SELECT session_id, owner, epoch, expires_at, address FROM session_leases WHERE session_id = ?"
)


async def _write(conn: Any, sql: str, params: Any) -> list[Any]:
    """One statement in its own transaction on an aiosqlite connection; its rows."""
    try:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            rows = list(await conn.execute_fetchall(sql, params))
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"lease update failed: {exc}") from exc
    return rows


async def acquire_lease_sqlite(conn: Any, book: LeaseBook, session_id: str) -> Lease:
    """Take or keep the lease (see `PostgresStore.acquire_lease`)."""
    params = {
        "sid": session_id,
        "owner": book.owner,
        "now": time.time(),
        "ttl": book.ttl_s,
        "address": book.address,
    }
    rows = await _write(conn, _ACQUIRE, params)
    if rows:
        book.held[session_id] = rows[0][0]
        return Lease(session_id, book.owner, rows[0][0], rows[0][1], book.address)
    current = await get_lease_sqlite(conn, session_id)
    if current is None:
        raise StoreError(f"session {session_id}: lease vanished while acquiring it; retry")
    raise LeaseHeldElsewhere(current)


async def renew_leases_sqlite(conn: Any, book: LeaseBook) -> set[str]:
    """Extend the held leases still wanted (release the others); forget and report those
    lost. Returns the lost ids."""
    held, unwanted = book.for_renewal()
    for sid in unwanted:
        await release_lease_sqlite(conn, book, sid)
    if not held:
        return set()
    marks = ", ".join("?" * len(held))
    sql = (
        f"UPDATE session_leases SET expires_at = ? WHERE owner = ? AND session_id IN ({marks}) "
        "RETURNING session_id, epoch"
    )
    rows = await _write(conn, sql, (time.time() + book.ttl_s, book.owner, *held))
    kept = {row[0]: row[1] for row in rows}
    lost = {sid for sid, epoch in held.items() if kept.get(sid) != epoch}
    for sid in lost:
        book.lost(sid, held[sid])
    return lost


async def release_lease_sqlite(conn: Any, book: LeaseBook, session_id: str) -> None:
    """Expire the lease now, keeping its epoch for the next owner to increment."""
    epoch = book.held.pop(session_id, None)
    if epoch is not None:
        sql = (
            "UPDATE session_leases SET expires_at = 0 "
            "WHERE session_id = ? AND owner = ? AND epoch = ?"
        )
        await _write(conn, sql, (session_id, book.owner, epoch))


async def get_lease_sqlite(conn: Any, session_id: str) -> Lease | None:
    """The lease row of a session, if any."""
    rows = list(await conn.execute_fetchall(_GET, (session_id,)))
    return Lease(*rows[0]) if rows else None


def check_fences_sync(conn: sqlite3.Connection, book: LeaseBook, ops: Sequence[WriteOp]) -> None:
    """Inside the writer's transaction: every session ``ops`` write still at our epoch.

    Raises:
        StaleLeaseError: not held, or another owner took it.
    """
    for sid, epoch in book.fences(ops).items():
        row = conn.execute(
            "SELECT owner, epoch FROM session_leases WHERE session_id = ?", (sid,)
        ).fetchone()
        book.check(sid, epoch, (row[0], row[1]) if row is not None else None)
