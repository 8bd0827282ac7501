"""Session leases and fenced writes, on SQLite and on PostgreSQL (a real server).

Two stores opened with different owners on one database stand for two replicas.
"""

from __future__ import annotations

import anyio
import pytest

from store import (
    AppendEvent,
    DeleteSession,
    Lease,
    LeaseHeldElsewhere,
    PutSession,
    StaleLeaseError,
    StoreError,
    open_store,
)

from .test_sqlite_store import event, session

pytestmark = pytest.mark.anyio


async def test_one_owner_at_a_time(target: str) -> None:
    """A live lease is refused to another owner, with the owner and its address."""
    async with (
        open_store(target, owner="A", lease_ttl_s=30, address="10.0.0.1:7000") as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        lease = await a.acquire_lease("s1")
        assert (lease.owner, lease.epoch, lease.address) == ("A", 1, "10.0.0.1:7000")
        with pytest.raises(LeaseHeldElsewhere) as info:
            await b.acquire_lease("s1")
        assert info.value.lease.owner == "A"
        assert info.value.lease.address == "10.0.0.1:7000"
        assert "10.0.0.1:7000" in str(info.value)
        again = await a.acquire_lease("s1")  # the owner keeps its epoch
        assert again.epoch == 1 and again.expires_at >= lease.expires_at
        assert await b.get_lease("s1") == Lease("s1", "A", 1, again.expires_at, "10.0.0.1:7000")
        assert await b.get_lease("nope") is None


async def test_expired_lease_is_taken_over_with_a_new_epoch(target: str) -> None:
    async with (
        open_store(target, owner="A", lease_ttl_s=0.3) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        assert (await a.acquire_lease("s1")).epoch == 1
        a.leases.held.clear()  # A stops renewing (as a paused or dead owner would)
        await anyio.sleep(0.5)
        taken = await b.acquire_lease("s1")
        assert (taken.owner, taken.epoch) == ("B", 2)


async def test_released_lease_is_free_at_once(target: str) -> None:
    async with (
        open_store(target, owner="A", lease_ttl_s=30) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        await a.acquire_lease("s1")
        await a.release_lease("s1")
        assert "s1" not in a.leases.held
        assert (await b.acquire_lease("s1")).epoch == 2
        with pytest.raises(LeaseHeldElsewhere):
            await a.acquire_lease("s1")


async def test_renewal_keeps_the_lease_past_its_ttl(target: str) -> None:
    """The store renews what it holds every third of the ttl: nobody can take it."""
    async with (
        open_store(target, owner="A", lease_ttl_s=0.4) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        await a.acquire_lease("s1")
        for _ in range(4):
            await anyio.sleep(0.25)
            with pytest.raises(LeaseHeldElsewhere):
                await b.acquire_lease("s1")
        assert a.leases.held == {"s1": 1}


async def test_writes_need_the_lease(target: str) -> None:
    """A leasing store refuses to write a session it holds no lease on."""
    async with open_store(target, owner="A", lease_ttl_s=30) as a:
        with pytest.raises(StaleLeaseError, match="holds no lease"):
            await a.commit([PutSession(session("s1"))])
        await a.acquire_lease("s1")
        await a.commit([PutSession(session("s1")), event("s1", 1)])
        assert await a.last_event_seq("s1") == 1


async def test_stale_owner_cannot_write_after_a_takeover(target: str) -> None:
    """An owner paused past its lease wakes up: its writes are rejected, nothing of them
    reaches the store, and it is told it lost the session."""
    async with (
        open_store(target, owner="A", lease_ttl_s=0.3) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        lost: list[str] = []
        a.leases.on_lost.append(lost.append)
        await a.acquire_lease("s1")
        await a.commit([PutSession(session("s1")), event("s1", 1)])
        held = dict(a.leases.held)
        a.leases.held.clear()  # paused: no renewal
        await anyio.sleep(0.5)
        await b.acquire_lease("s1")
        await b.commit([event("s1", 2, text="from B")])
        a.leases.held.update(held)  # wakes up believing it still owns s1
        with pytest.raises(StaleLeaseError, match="stale") as info:
            await a.commit([event("s1", 3, text="from A")])
        assert info.value.session_id == "s1"
        assert lost == ["s1"]
        assert "s1" not in a.leases.held
        assert await b.event_payloads("s1") == [
            event("s1", 1).payload,
            event("s1", 2, text="from B").payload,
        ]
        await b.commit([event("s1", 3, text="B again")])  # B goes on undisturbed


async def test_stale_batch_fails_alone_in_a_group(target: str) -> None:
    """Batches of other sessions committed in the same group are not harmed."""
    async with (
        open_store(target, owner="A", lease_ttl_s=30) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        await a.acquire_lease("mine")
        await b.acquire_lease("theirs")
        await b.commit([PutSession(session("theirs"))])
        await a.commit([PutSession(session("mine"))])
        a.leases.held["theirs"] = 1  # a forged belief: B holds it
        results: dict[str, BaseException | None] = {}

        async def attempt(name: str, op: AppendEvent) -> None:
            try:
                await a.commit([op])
            except StoreError as exc:
                results[name] = exc
            else:
                results[name] = None

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "mine", event("mine", 1))
            tg.start_soon(attempt, "theirs", event("theirs", 1))
        assert results["mine"] is None
        assert isinstance(results["theirs"], StaleLeaseError)
        assert await a.last_event_seq("theirs") == 0


async def test_lost_renewal_is_reported(target: str) -> None:
    async with (
        open_store(target, owner="A", lease_ttl_s=30) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        lost: list[str] = []
        a.leases.on_lost.append(lost.append)
        await a.acquire_lease("s1")
        await a.acquire_lease("s2")
        await a.release_lease("s2")
        a.leases.held["s2"] = 1  # forged: released, then taken by B below
        await b.acquire_lease("s2")
        assert await a.renew_leases() == {"s2"}
        assert lost == ["s2"]
        assert a.leases.held == {"s1": 1}


async def test_lease_api_needs_an_owner(target: str) -> None:
    async with open_store(target) as db:
        with pytest.raises(StoreError, match="without an owner"):
            await db.acquire_lease("s1")
        await db.commit([PutSession(session("s1"))])  # no owner: no fencing (admin tools)


async def test_unwanted_lease_is_released_at_renewal(target: str) -> None:
    """A lease the owner no longer wants (its agent is gone) is released, not renewed."""
    async with (
        open_store(target, owner="A", lease_ttl_s=30) as a,
        open_store(target, owner="B", lease_ttl_s=30) as b,
    ):
        await a.acquire_lease("idle")
        await a.acquire_lease("busy")
        a.leases.keep = lambda sid: sid == "busy"
        assert await a.renew_leases() == set()
        assert a.leases.held == {"busy": 1}
        assert (await b.acquire_lease("idle")).epoch == 2
        with pytest.raises(LeaseHeldElsewhere):
            await b.acquire_lease("busy")


async def test_deleting_a_session_forgets_its_lease(target: str) -> None:
    """The lease row goes with the session; the owner stops renewing it (no false loss)."""
    async with open_store(target, owner="A", lease_ttl_s=30) as a:
        lost: list[str] = []
        a.leases.on_lost.append(lost.append)
        await a.acquire_lease("s1")
        await a.commit([PutSession(session("s1")), event("s1", 1)])
        await a.commit([DeleteSession("s1")])
        assert a.leases.held == {}
        assert await a.get_lease("s1") is None
        assert await a.renew_leases() == set()
        assert lost == []
