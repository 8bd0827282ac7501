"""The agents' memory budget (``max_agents_memory_mb``): what the fleet uses, what fits.

An agent's cost is its whole process tree (``procmem``: PSS where readable, else RSS), spares
included. A new agent process fits when what the agents use now plus the largest tree seen so
far stays within the budget (before any agent was measured, only what is used counts). The
decisions (which agent to stop, whether to wait) belong to the pool and the hub; this module
only measures and compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import anyio

from .procmem import read_procs, tree_pss_bytes

__all__ = ["MEMORY_CHECK_S", "AgentMemoryBudget", "FleetMemory"]

_MIB: Final = 1 << 20


#: How often the fleet's memory is measured against ``max_agents_memory_mb``.
MEMORY_CHECK_S: Final = 2.0


class AgentMemoryBudget:
    """Resident memory of the agent process trees against a limit in bytes."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        #: agent pid → bytes of its tree, at the last measure
        self.usage: dict[int, int] = {}
        #: the largest single agent tree measured: what one more agent is expected to cost
        self.largest = 0
        self.measured_at = 0.0

    @classmethod
    def from_mb(cls, mb: int) -> AgentMemoryBudget | None:
        """A budget of ``mb`` MiB, or None for 0 (no budget)."""
        return cls(mb * _MIB) if mb > 0 else None

    def measure(self, pids: Iterable[int]) -> int:
        """Read ``/proc`` for the trees of ``pids``; returns the total bytes."""
        self.usage = tree_pss_bytes(list(pids), read_procs())
        self.largest = max([self.largest, *self.usage.values()])
        self.measured_at = time.monotonic()
        return self.used

    @property
    def used(self) -> int:
        """Bytes the agents used at the last measure."""
        return sum(self.usage.values())

    @property
    def excess(self) -> int:
        """Bytes over the limit at the last measure (0 when within)."""
        return max(0, self.used - self.limit)

    def fits_new(self) -> bool:
        """Whether one more agent process fits (by the last measure)."""
        return self.used + self.largest <= self.limit

    def describe(self) -> str:
        """``used of limit MiB`` for messages."""
        return f"{self.used // _MIB} MiB of {self.limit // _MIB} MiB"


class FleetMemory:
    """The pool's enforcement of :class:`AgentMemoryBudget` (a mixin of
    :class:`~acp_proxy.pool.AgentPool`, which provides the agents and the eviction hook)."""

    budget: AgentMemoryBudget | None
    hosts: dict[Any, Any]
    spares: list[Any]
    memory_stops: dict[str, int]
    log: Any
    _slot_freed: anyio.Event

    _make_room: Callable[[str], Any]

    def agent_pids(self) -> dict[int, str]:
        """Every live agent's pid and role (``session`` | ``spare``)."""
        pids = {a.pid: "session" for a in self.hosts if a.pid is not None and a.alive}
        pids.update({a.pid: "spare" for a in self.spares if a.pid is not None and a.alive})
        return pids

    def _memory_fits(self, *, measure: bool = False) -> bool:
        budget = self.budget
        if budget is None:
            return True
        if measure:
            budget.measure(self.agent_pids())
        return budget.fits_new()

    def enforce_memory(self) -> None:
        """One look at the fleet: while over budget, stop spares, then the least recently
        used idle agents (never one in a turn). Logged; counted in :attr:`memory_stops`."""
        budget = self.budget
        if budget is None:
            return
        budget.measure(self.agent_pids())
        excess = budget.excess
        if not excess:
            return
        stopped: list[dict[str, Any]] = []
        while excess > 0 and self.spares:
            agent = self._stop_spare_for_memory()
            excess -= budget.usage.get(agent.pid or 0, 0)
            stopped.append({"pid": agent.pid, "role": "spare"})
        while excess > 0:  # bounded: each round stops one more agent, or ends the loop
            evicted = self._make_room("memory")
            if evicted is None:
                break
            excess -= budget.usage.get(evicted.pid or 0, 0)
            stopped.append({"pid": evicted.pid, "role": "session"})
            self.memory_stops["session"] += 1
        self.log.warning(
            "agents.over_memory_budget",
            used_bytes=budget.used,
            limit_bytes=budget.limit,
            stopped=stopped,
            still_over_bytes=max(0, excess),
        )
        if stopped:
            self._slot_freed.set()  # a request waiting for memory looks again
            self._slot_freed = anyio.Event()

    def _stop_spare_for_memory(self) -> Any:
        agent = self.spares.pop()
        agent.stop()
        self.memory_stops["spare"] += 1
        self.log.info("agent.spare_stopped", reason="max_agents_memory_mb", agent_pid=agent.pid)
        return agent

    async def watch_memory(self) -> None:
        """Enforce the memory budget every ``MEMORY_CHECK_S`` (runs until cancelled)."""
        if self.budget is None:
            return
        while True:
            await anyio.sleep(MEMORY_CHECK_S)
            self.enforce_memory()
