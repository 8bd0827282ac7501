"""The agent cap in process, in virtual time: slots are counted from the request to the exit,
waiters make room by evicting, and a waiter that gets no slot fails at its deadline. No
subprocess and no wall-clock sleep (trio's autojump clock)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from acp_proxy.client_auth import AgentStartError
from acp_proxy.config import Config
from acp_proxy.pool import AgentPool

pytestmark = pytest.mark.trio


def _pool(nursery: trio.Nursery, make_room: Any = lambda reason: None) -> AgentPool:
    config = Config(
        socket="/tmp/unused.sock",
        db="/tmp/unused.db",
        agent_command=["true"],
        max_live_agents=2,
        agent_start_timeout_s=60.0,
    )
    return AgentPool(config, nursery, store=None, make_room=make_room)  # type: ignore[arg-type]


async def test_a_request_over_the_cap_fails_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two slots taken, nobody idle: the third request waits agent_start_timeout_s, then gets
    kind at_capacity; the count is unchanged (a failed wait reserves nothing)."""
    async with trio.open_nursery() as nursery:
        pool = _pool(nursery)
        await pool._reserve_slot(needs_memory=False)
        await pool._reserve_slot(needs_memory=False)
        started = trio.current_time()
        with pytest.raises(AgentStartError) as refused:
            await pool._reserve_slot(needs_memory=False)
        assert trio.current_time() - started == pytest.approx(60.0)
        assert refused.value.data["kind"] == "at_capacity"
        assert pool.bound == 2


async def test_a_waiter_evicts_once_and_gets_the_slot_when_the_agent_exits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At the cap, a waiter asks for room once (not once per wake-up) and takes the slot the
    evicted agent frees when it has exited, not before."""
    asked: list[str] = []
    evicted = object()

    def make_room(reason: str) -> Any:
        asked.append(reason)
        return evicted

    async with trio.open_nursery() as nursery:
        pool = _pool(nursery, make_room)
        await pool._reserve_slot(needs_memory=False)
        await pool._reserve_slot(needs_memory=False)
        got = trio.Event()

        async def waiter() -> None:
            await pool._reserve_slot(needs_memory=False)
            got.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert asked == ["max_live_agents"]
        pool.room_changed()  # another session became idle meanwhile: no second eviction
        await trio.testing.wait_all_tasks_blocked()
        assert asked == ["max_live_agents"] and not got.is_set()
        await trio.sleep(5)  # the evicted agent takes its time to exit
        assert not got.is_set()
        pool._release_slot()  # ... and exits: its slot goes to the waiter
        await trio.testing.wait_all_tasks_blocked()
        assert got.is_set() and pool.bound == 2
