"""The memory budget: the largest holder is disconnected once the total is over the limit."""

from __future__ import annotations

from acp_proxy.budget import MemoryBudget


def test_largest_holder_is_evicted_whoever_caused_the_excess() -> None:
    """Three holders; the third's growth takes the total over: the largest (not the third)
    goes, and its bytes are freed."""
    evicted: list[str] = []
    budget = MemoryBudget(100)
    for name in ("a", "b", "c"):
        budget.register(name, lambda reason, name=name: evicted.append(name))
    budget.set("a", "line", 60)
    budget.set("b", "outbox", 30)
    budget.set("c", "line", 20)
    assert evicted == ["a"]
    assert budget.total == 50 and budget.held("a") == 0


def test_shrinking_and_released_holders_free_their_bytes() -> None:
    """Sizes replace each other per kind; a released holder's bytes leave the total."""
    budget = MemoryBudget(1000)
    budget.register("x", lambda reason: None)
    budget.set("x", "line", 500)
    budget.set("x", "line", 10)
    budget.set("x", "outbox", 40)
    assert budget.total == 50
    budget.release("x")
    assert budget.total == 0
    budget.set("x", "line", 5000)  # unknown holder (already gone): ignored
    assert budget.total == 0
