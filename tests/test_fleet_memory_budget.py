"""The agents' memory budget: what fits, what is over (pure, after one real measure)."""

from __future__ import annotations

import os

from acp_proxy.fleet_memory import AgentMemoryBudget as MemoryBudget


def test_no_budget_for_zero() -> None:
    """0 MiB means no budget at all."""
    assert MemoryBudget.from_mb(0) is None
    budget = MemoryBudget.from_mb(3)
    assert budget is not None and budget.limit == 3 << 20


def test_a_new_agent_fits_when_the_largest_seen_still_fits() -> None:
    """used + the largest tree seen must stay within the limit; excess is what is over."""
    budget = MemoryBudget(1000)
    assert budget.fits_new()  # nothing measured: nothing known to be used
    budget.usage, budget.largest = {1: 400, 2: 300}, 400
    assert not budget.fits_new()  # 700 + 400 > 1000
    assert budget.excess == 0
    budget.usage = {1: 400, 2: 300, 3: 350}
    assert budget.excess == 50
    budget.usage = {1: 400}
    assert budget.fits_new()


def test_measure_reads_this_process_tree() -> None:
    """A real measure of this process: its tree has memory, and it becomes the largest."""
    budget = MemoryBudget(1 << 40)
    used = budget.measure([os.getpid()])
    assert used > 1 << 20
    assert budget.largest == used
    assert "MiB of" in budget.describe()
