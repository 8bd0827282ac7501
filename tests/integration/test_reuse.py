"""A conversation keeps its warm agent across client connections."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .conftest import client, db_rows, proxy, summary

pytestmark = pytest.mark.trio


async def agent_state(c, session_id: str) -> dict:
    return (await c.request("_fake/state", {"sessionId": session_id})).unwrap()


async def test_turn_two_reuses_the_same_agent_process(tmp: Path) -> None:
    """Turn 2 from a new connection reaches the same process: no spawn, no initialize."""
    async with proxy(tmp) as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            first = await c1.prompt(sid, "turn one")
            assert "holds 0 earlier turns" in summary(first.updates())
            before = await agent_state(c1, sid)
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
            second = await c2.prompt(sid, "turn two")
            after = await agent_state(c2, sid)
        assert second.error is None
        assert "holds 1 earlier turns" in summary(second.updates())
        assert after["pid"] == before["pid"]
        assert after["initializeCount"] == before["initializeCount"] == 1
        assert len(after["sessions"]) == 1  # no new agent session was created
        assert second.result["_meta"]["acp-proxy"]["agent"] == "warm"
        assert second.result["_meta"]["acp-proxy"]["cli_ready_ms"] == 0
        turns = db_rows(p.db, "SELECT seq, outcome, stop_reason FROM turns ORDER BY seq")
        assert turns == [(1, "completed", "end_turn"), (2, "completed", "end_turn")]


async def test_resume_replays_nothing_and_continues(tmp: Path) -> None:
    """``session/resume`` attaches without replay; the next prompt is a continued turn."""
    async with proxy(tmp) as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            await c1.prompt(sid, "one")
        async with client(p) as c2:
            resumed = await c2.request("session/resume", {"sessionId": sid, "cwd": str(tmp)})
            assert resumed.error is None
            assert resumed.notifications == []
            assert resumed.result["modes"]["currentModeId"] == "build"
            second = await c2.prompt(sid, "two")
        assert "holds 1 earlier turns" in summary(second.updates())


async def test_sessions_get_distinct_agents_and_ids(tmp: Path) -> None:
    """Each conversation gets its own process and a proxy-minted 128-bit id."""
    async with proxy(tmp) as p, client(p) as c:
        a = await c.new_session(str(tmp))
        b = await c.new_session(str(tmp))
        assert a != b
        assert a.startswith("sess_") and len(a) == 5 + 32
        pid_a = (await agent_state(c, a))["pid"]
        pid_b = (await agent_state(c, b))["pid"]
        assert pid_a != pid_b
        upstream = db_rows(p.db, "SELECT upstream_session_id FROM sessions WHERE id = ?", a)
        assert upstream[0][0].startswith("fake_")


async def test_concurrent_sessions_never_see_each_other(tmp: Path) -> None:
    """Two clients streaming at once each receive only their own session's updates."""
    async with proxy(tmp, "--chunks", "40", "--chunk-delay", "0.001") as p:
        results: dict[str, list] = {}

        async def converse(name: str) -> None:
            async with client(p) as c:
                sid = await c.new_session(str(tmp))
                for turn in range(3):
                    reply = await c.prompt(sid, f"{name} turn {turn}")
                    assert reply.error is None
                    assert f"last user message: {name} turn {turn}" in summary(reply.updates())
                assert {u["sessionId"] for u in c.updates()} == {sid}
                results[name] = c.updates()

        async with trio.open_nursery() as nursery:
            for name in ("alpha", "beta", "gamma"):
                nursery.start_soon(converse, name)
        assert len(results) == 3
