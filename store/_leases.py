"""Session leases: one owner per conversation across replicas sharing a database.

A replica drives a session only while it holds the session's lease: a row of
``session_leases`` naming the owner (a replica id unique to one process run), a fencing
*epoch* and an expiry. Acquiring a lease that another owner holds fails with
`LeaseHeldElsewhere` until it expires; taking over an expired (or released) lease increments
the epoch. The owner renews its leases in the background while it keeps the session.

Every write a leasing store commits for a session carries the epoch it holds, and the store
checks it against the lease row inside the same transaction: a write of an owner that was
paused past its lease and lost it to another replica is rejected with `StaleLeaseError`, so
it can never interleave with the new owner's events. The store then forgets the lease and
tells its listeners (`LeaseBook.on_lost`), and the proxy drops the session and stops its
agent.

This module holds the records and the bookkeeping (no I/O); the backends run the SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from ._records import DeleteSession, PutSession, StoreError, WriteOp

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "Lease",
    "LeaseBook",
    "LeaseHeldElsewhere",
    "StaleLeaseError",
    "op_session_id",
    "require_book",
]

DEFAULT_LEASE_TTL_S: Final = 10.0
"""How long a lease lasts without renewal: how long a conversation waits for another replica
to take it over after its owner died. Renewed every third of it."""


class Lease(msgspec.Struct, frozen=True):
    """A session's lease as the database holds it.

    Attributes:
        session_id: The session.
        owner: The replica id holding it.
        epoch: Fencing epoch, incremented each time another owner takes the session.
        expires_at: When it expires unless renewed (seconds since the epoch, the database's
            clock).
        address: Where the owner can be reached (its ``--advertise``), if it said.
    """

    session_id: str
    owner: str
    epoch: int
    expires_at: float
    address: str | None = None


class LeaseHeldElsewhere(StoreError):
    """Another live owner holds the session's lease; `lease` says which and until when."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(
            f"session {lease.session_id} is owned by replica {lease.owner!r}"
            + (f" at {lease.address}" if lease.address else "")
            + f" (epoch {lease.epoch}); retry there, or here once its lease expires"
        )
        self.lease = lease


class StaleLeaseError(StoreError):
    """A write for a session whose lease this store does not hold (any more)."""

    def __init__(self, session_id: str, message: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        #: The epoch the write carried (None: the store held no lease on the session).
        self.epoch = epoch


def require_book(leases: LeaseBook | None) -> LeaseBook:
    """The store's lease book, or the error of a store opened without an owner."""
    if leases is None:
        raise StoreError("this store was opened without an owner id: leases are off")
    return leases


def op_session_id(op: WriteOp) -> str:
    """The session a write op belongs to."""
    if isinstance(op, PutSession):
        return op.record.id
    return op.session_id


class LeaseBook:
    """The leases one store holds: which epoch of each session, and who to tell on loss.

    Args:
        owner: This replica's id (unique per process run).
        ttl_s: Lease duration.
        address: Advertised address stored with each lease.
    """

    def __init__(self, owner: str, ttl_s: float, address: str | None = None) -> None:
        if not owner:
            raise ValueError("a leasing store needs a non-empty owner id")
        if ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, not {ttl_s}")
        self.owner = owner
        self.ttl_s = ttl_s
        self.address = address
        self.held: dict[str, int] = {}
        self.on_lost: list[Callable[[str], None]] = []
        #: Whether a held lease is still wanted (the proxy: the session's agent is live or
        #: being bound); a lease it says no to is released at the next renewal, not renewed.
        self.keep: Callable[[str], bool] = lambda _sid: True

    def for_renewal(self) -> tuple[dict[str, int], dict[str, int]]:
        """The held leases split in (to renew, to release), by `keep`."""
        renew: dict[str, int] = {}
        release: dict[str, int] = {}
        for sid, epoch in self.held.items():
            (renew if self.keep(sid) else release)[sid] = epoch
        return renew, release

    def fences(self, ops: Sequence[WriteOp]) -> dict[str, int]:
        """The epoch each session written by ``ops`` must still have.

        Raises:
            StaleLeaseError: ``ops`` write a session whose lease is not held.
        """
        fences: dict[str, int] = {}
        for op in ops:
            sid = op_session_id(op)
            if sid in fences:
                continue
            epoch = self.held.get(sid)
            if epoch is None:
                raise StaleLeaseError(
                    sid,
                    f"session {sid}: this replica ({self.owner}) holds no lease on it; "
                    "acquire the lease before writing",
                )
            fences[sid] = epoch

        return fences

    def check(self, sid: str, epoch: int, found: tuple[str, int] | None) -> None:
        """Compare a fence with the lease row the transaction read.

        Raises:
            StaleLeaseError: the row names another owner or epoch (or is gone).
        """
        if found != (self.owner, epoch):
            raise self.stale(sid, epoch, found)

    def stale(self, sid: str, epoch: int, found: tuple[str, int] | None) -> StaleLeaseError:
        """The error for a fence that failed (the store calls `lost` once it is final)."""
        now = "no lease" if found is None else f"replica {found[0]!r} epoch {found[1]}"
        return StaleLeaseError(
            sid,
            f"session {sid}: lease epoch {epoch} of {self.owner} is stale (now {now}); "
            "the write was rejected and the session dropped here",
            epoch,
        )

    def committed(self, ops: Sequence[WriteOp]) -> None:
        """A committed `DeleteSession` removed its session's lease row: forget the lease."""
        for op in ops:
            if isinstance(op, DeleteSession):
                self.held.pop(op.session_id, None)

    def failed(self, errors: Sequence[BaseException | None]) -> None:
        """Forget the leases that batches' `StaleLeaseError` s proved lost."""
        for error in errors:
            if isinstance(error, StaleLeaseError) and error.epoch is not None:
                self.lost(error.session_id, error.epoch)

    def lost(self, sid: str, epoch: int) -> None:
        """The lease of ``sid`` at ``epoch`` is gone: forget it and tell the listeners."""
        if self.held.get(sid) != epoch:
            return
        del self.held[sid]
        for listener in list(self.on_lost):
            listener(sid)
