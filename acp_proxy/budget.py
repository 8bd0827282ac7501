"""Bounds on what peers make the proxy hold in memory.

Clients: a global budget (``max_buffered_bytes``) over every connection's unterminated line
and queued output (replays included: a ``session/load`` is queued to the client's outbox as it
is read from the store). When a change takes the total over the budget, the connection
holding the most is disconnected, whoever caused the change: one client holding 64 MiB lines
open on 16 connections, or loading a 100 MB session 8 times without reading, can no longer
take the proxy to a gigabyte. Its sessions and their agents go on.

Agents: the queue to one agent's stdin is bounded (``agent_stdin_bytes``). A client sending
to an agent whose queue is over it waits before its next message is handled
(`wait_for_agent_stdin`): its connection stops being read, the kernel's socket buffer fills
and the client's own writes block. An agent that leaves the bound plus one line unread is
stuck, and is stopped (``AgentProcess``); its session is restored on next use.

Worst case, in bytes: ``max_buffered_bytes`` + per connection one read (64 KiB), + per live
agent ``agent_stdin_bytes + max_line_bytes`` (stdin) and one ``max_line_bytes`` line being
read from its stdout plus ``PIPELINE_BATCHES`` reads of 64 KiB awaiting their commit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final

from .logs import get_logger
from .outbox import Outbox

__all__ = ["MemoryBudget", "wait_for_agent_stdin"]

_POLL_S: Final = 0.01


class _Account:
    __slots__ = ("kinds", "on_evict", "total")

    def __init__(self, on_evict: Callable[[str], None]) -> None:
        self.on_evict = on_evict
        self.kinds: dict[str, int] = {}
        self.total = 0


class MemoryBudget:
    """Bytes buffered on behalf of peers, by holder; evicts the largest holder when over."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.evictions = 0
        self._accounts: dict[Hashable, _Account] = {}
        self.log = get_logger(component="budget")

    def register(self, holder: Hashable, on_evict: Callable[[str], None]) -> None:
        """Start accounting for ``holder``; ``on_evict(reason)`` disconnects it."""
        self._accounts[holder] = _Account(on_evict)

    def release(self, holder: Hashable) -> None:
        """``holder`` is gone: what it held is freed."""
        account = self._accounts.pop(holder, None)
        if account is not None:
            self.total -= account.total

    def set(self, holder: Hashable, kind: str, nbytes: int) -> None:
        """``holder`` now holds ``nbytes`` of ``kind``; evicts while over the budget."""
        account = self._accounts.get(holder)
        if account is None:
            return
        delta = nbytes - account.kinds.get(kind, 0)
        if not delta:
            return
        account.kinds[kind] = nbytes
        account.total += delta
        self.total += delta
        if delta > 0 and self.total > self.limit:
            self._evict()

    def held(self, holder: Hashable) -> int:
        """What ``holder`` holds now."""
        account = self._accounts.get(holder)
        return account.total if account is not None else 0

    def _evict(self) -> None:
        while self.total > self.limit and self._accounts:
            holder, account = max(self._accounts.items(), key=lambda item: item[1].total)
            self.release(holder)
            self.evictions += 1
            self.log.warning(
                "budget.evicted",
                holder=str(holder),
                held_bytes=account.total,
                held=dict(account.kinds),
                total_bytes=self.total,
                limit_bytes=self.limit,
                hint="the connection holding the most buffered bytes was disconnected; "
                "raise max_buffered_bytes if such loads are legitimate",
            )
            account.on_evict(f"over max_buffered_bytes ({self.limit}): held {account.total}")


async def wait_for_agent_stdin(outbox: Outbox, limit: int) -> None:
    """Return once ``outbox`` (an agent's stdin queue) holds at most ``limit`` bytes, or is
    closed (the agent is gone: the caller's message fails on its own)."""
    while outbox.queued > limit and not outbox.closed:
        await outbox.wait_written()
