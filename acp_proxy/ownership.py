"""One owner per conversation across replicas: the proxy's side of the store's leases.

A replica drives a session only while it holds the session's lease (``store/_leases.py``):
`claim_session` takes it before the session is created, restored or changed here, and
answers ``session_owned_elsewhere`` (with the owner's advertised address, so a router can
retry there) while another live replica holds it. The store renews held leases in the
background; when one is lost (a takeover after this replica was paused past its lease, seen
at renewal or by a rejected fenced write), `Ownership` drops the session and stops its
agent: nothing it would write can reach the store any more. When a session's agent is
stopped here, its lease is released so another replica may take it at once.

With a store opened without an owner (one SQLite proxy, the default), all of this is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from anyio.abc import TaskGroup

from store import LeaseHeldElsewhere

from .logs import get_logger
from .protocol import SESSION_OWNED_ELSEWHERE, LocalProtocolError

__all__ = ["Ownership"]


class Ownership:
    """Leases of one proxy's sessions (``Hub.ownership``)."""

    def __init__(
        self,
        store: Any,
        tg: TaskGroup,
        *,
        busy: Callable[[str], bool],
        on_lost: Callable[[str], None],
    ) -> None:
        self._store = store
        self._tg = tg
        self._busy = busy
        self._lost = on_lost
        self._book = getattr(store, "leases", None)
        self.enabled = self._book is not None
        self.log = get_logger(component="ownership")
        self._claimed: dict[str, float] = {}  # session id -> when its lease was taken
        if self._book is not None:
            self._book.on_lost.append(self._on_lost)
            self._book.keep = self._wanted

    def holds(self, sid: str) -> bool:
        """Whether this replica holds the lease of ``sid`` (always, with leases off)."""
        return self._book is None or sid in self._book.held

    async def claim_session(self, sid: str) -> bool:
        """Hold the lease of ``sid`` before driving it.

        Returns:
            True when the lease was (re)taken just now: what this replica knew of the session
            may be stale (another replica may have written since), reload it from the store.

        Raises:
            LocalProtocolError: ``session_owned_elsewhere``: another live replica holds it.
        """
        if self.holds(sid):
            return False
        try:
            lease = await self._store.acquire_lease(sid)
        except LeaseHeldElsewhere as exc:
            held = exc.lease
            data: dict[str, Any] = {
                "kind": "session_owned_elsewhere",
                "sessionId": sid,
                "owner": held.owner,
                "retryAfterMs": max(0, round((held.expires_at - time.time()) * 1000)),
            }
            if held.address:
                data["address"] = held.address
            raise LocalProtocolError(
                f"session {sid} is served by another replica ({held.owner}"
                + (f" at {held.address}" if held.address else "")
                + "); send it there, or retry here once that replica is gone",
                SESSION_OWNED_ELSEWHERE,
                data,
            ) from None
        self._claimed[sid] = time.monotonic()
        self.log.info("lease.acquired", session_id=sid, epoch=lease.epoch)
        return True

    def _wanted(self, sid: str) -> bool:
        """Keep renewing a lease while the session's agent is live, being bound, or in a
        turn, and for one ttl after it was taken (``session/new`` binds before the session is
        listed); release it otherwise (the agent crashed or was stopped)."""
        if self._busy(sid):
            return True
        assert self._book is not None
        claimed = self._claimed.get(sid)
        if claimed is not None and time.monotonic() - claimed < self._book.ttl_s:
            return True
        self._claimed.pop(sid, None)
        return False

    def release(self, sid: str) -> None:
        """This replica stopped the session's agent: let another replica take it."""
        if self._book is not None and sid in self._book.held:
            self._tg.start_soon(self._release, sid)

    async def _release(self, sid: str) -> None:
        try:
            await self._store.release_lease(sid)
        except Exception:  # it expires by itself; nothing else depends on this
            self.log.exception("lease.release_failed", session_id=sid)

    def _on_lost(self, sid: str) -> None:
        self.log.warning(
            "lease.lost",
            session_id=sid,
            hint="another replica took this session over; its agent here is stopped",
        )
        self._lost(sid)
