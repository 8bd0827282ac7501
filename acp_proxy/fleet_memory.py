"""The agents' memory budget (``max_agents_memory_mb``): what the fleet uses, what fits.

An agent's cost is its whole process tree (``procmem``: PSS where readable, else RSS), spares
included. A new agent process fits when what the agents use now plus the largest tree seen so
far stays within the budget (before any agent was measured, only what is used counts). The
decisions (which agent to stop, whether to wait) belong to the pool and the hub; this module
only measures and compares.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

from .procmem import read_procs, tree_pss_bytes

__all__ = ["AgentMemoryBudget"]

_MIB: Final = 1 << 20


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
