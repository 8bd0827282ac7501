"""Several conversations per agent process: routing, cancel, permissions, crash, eviction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.real_agent.world import log_lines

from .conftest import client, config_args, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio


def _is_update(sid: str, kind: str) -> Any:
    return lambda m: (
        m.get("method") == "session/update"
        and m["params"]["sessionId"] == sid
        and m["params"]["update"].get("sessionUpdate") == kind
    )


async def _state(c: Any, sid: str) -> dict[str, Any]:
    """The fake agent's state, every session of the process that serves ``sid``."""
    params = {"sessionId": sid, "all": True}
    result: dict[str, Any] = (await c.request("_fake/state", params)).unwrap()
    return result


SHARED = "max_sessions_per_agent = 4\nwarm_spares = 0\n"


async def test_conversations_share_one_process_and_stay_apart(tmp: Path) -> None:
    """Two conversations run concurrent turns on one agent process; each client gets only
    its own session's stream, and each session records only its own events."""
    extra = config_args(tmp, SHARED)
    async with proxy(tmp, "--chunks", "30", "--chunk-delay", "0.002", extra_args=extra) as p:
        async with client(p) as c0:
            a = await c0.new_session(str(tmp))
            b = await c0.new_session(str(tmp))
            state = await _state(c0, a)
            assert (await _state(c0, b))["pid"] == state["pid"]
            assert len(state["sessions"]) == 2  # two agent sessions in one process
        replies: dict[str, Any] = {}

        async def converse(sid: str, word: str) -> None:
            async with client(p) as c:
                replies[sid] = await c.prompt(sid, f"{word} speaking")
                assert {u["sessionId"] for u in c.updates()} == {sid}

        async with trio.open_nursery() as nursery:
            nursery.start_soon(converse, a, "alpha")
            nursery.start_soon(converse, b, "bravo")
        for sid, mine, theirs in ((a, "alpha", "bravo"), (b, "bravo", "alpha")):
            said = summary(replies[sid].updates())
            assert f"last user message: {mine}" in said and theirs not in said
            assert len(replies[sid].updates()) > 30  # the whole streamed turn
            stored = b"".join(
                r[0] for r in db_rows(p.db, "SELECT payload FROM events WHERE session_id=?", sid)
            )
            assert mine.encode() in stored and theirs.encode() not in stored
        [created_b] = [e for e in log_lines(p, "session.created") if e["session_id"] == b]
        assert created_b["agent"] == "shared"


async def test_one_turn_never_blocks_another_and_cancel_is_per_session(tmp: Path) -> None:
    """While a's turn hangs on the shared process, b's turns run to their end; cancelling a
    ends a's turn only."""
    async with proxy(tmp, extra_args=config_args(tmp, SHARED)) as p, client(p) as c:
        a = await c.new_session(str(tmp))
        b = await c.new_session(str(tmp))
        hanging = await c.start_prompt(a, 'fake:{"hang": true}')
        await c.wait_for(_is_update(a, "agent_message_chunk"))
        with trio.fail_after(10):
            for n in range(3):
                reply = await c.prompt(b, f"b turn {n}")
                assert reply.result["stopReason"] == "end_turn"
        await c.notify("session/cancel", {"sessionId": a})
        with trio.fail_after(5):
            cancelled = await c.wait_reply(hanging)
        assert cancelled.result["stopReason"] == "cancelled"
        assert "holds 3 earlier turns" in summary((await c.prompt(b, "b again")).updates())
        outcomes = db_rows(
            p.db, "SELECT session_id, outcome FROM turns WHERE outcome != 'completed'"
        )
        assert outcomes == [(a, "cancelled")]


async def test_permission_requests_reach_their_own_sessions_client(tmp: Path) -> None:
    """Each conversation's permission request goes to its own client, whose answer decides
    that conversation's tool call only."""

    def reject(method: str, params: dict[str, Any]) -> tuple[dict[str, Any], None]:
        return {"outcome": {"outcome": "selected", "optionId": "reject"}}, None

    extra = config_args(tmp, SHARED)
    async with (
        proxy(tmp, "--permission", extra_args=extra) as p,
        client(p) as allow_c,
        client(p, policy=reject) as reject_c,
    ):
        a = await allow_c.new_session(str(tmp))
        b = await reject_c.new_session(str(tmp))
        assert (await _state(allow_c, a))["pid"] == (await _state(reject_c, b))["pid"]
        results: dict[str, Any] = {}

        async def turn(c: Any, sid: str) -> None:
            results[sid] = await c.prompt(sid, "tool please")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(turn, allow_c, a)
            nursery.start_soon(turn, reject_c, b)
        assert [r["params"]["sessionId"] for r in allow_c.requests] == [a]
        assert [r["params"]["sessionId"] for r in reject_c.requests] == [b]
        assert "permission=selected:once" in summary(results[a].updates())
        assert "permission=selected:reject" in summary(results[b].updates())


async def test_agent_crash_restores_every_session_it_carried(tmp: Path) -> None:
    """The shared process dies in a's turn: a and b both come back through the ladder, with
    their histories, onto one new process."""
    extra = config_args(tmp, SHARED)
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        async with client(p) as c:
            a = await c.new_session(str(tmp))
            b = await c.new_session(str(tmp))
            await c.prompt(a, "a one")
            await c.prompt(b, "b one")
            old_pid = (await _state(c, a))["pid"]
            crashed = await c.prompt(a, 'fake:{"crash_after": 1}')
            assert crashed.error is not None
            after_a = await c.prompt(a, "a two")
            after_b = await c.prompt(b, "b two")
            pid_a, pid_b = (await _state(c, a))["pid"], (await _state(c, b))["pid"]
        assert "holds 1 earlier turns" in summary(after_a.updates())
        assert "holds 1 earlier turns" in summary(after_b.updates())
        assert after_a.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"
        assert after_b.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"
        assert pid_a == pid_b != old_pid
        gone = {e["session_id"] for e in log_lines(p, "session.agent_gone")}
        assert gone == {a, b}


async def test_closing_one_conversation_keeps_the_shared_process(tmp: Path) -> None:
    """``session/close`` of one conversation closes its agent session only (the agent
    advertises close); the process stays for the other, which continues warm."""
    async with proxy(tmp, extra_args=config_args(tmp, SHARED)) as p, client(p) as c:
        a = await c.new_session(str(tmp))
        b = await c.new_session(str(tmp))
        before = await _state(c, b)
        assert (await c.request("session/close", {"sessionId": a})).error is None
        await eventually(lambda: bool(log_lines(p, "session.retired")))
        [retired] = log_lines(p, "session.retired")
        assert retired["agent_stopped"] is False
        reply = await c.prompt(b, "still here")
        assert reply.result["_meta"]["acp-proxy"]["agent"] in ("warm", "shared")
        after = await _state(c, b)
        assert after["pid"] == before["pid"]
        assert len(after["sessions"]) == 1  # the agent closed a's session


async def test_eviction_stops_an_agent_only_when_all_its_conversations_are_idle(
    tmp: Path,
) -> None:
    """max_live_agents = 1 and two conversations fill the process: a third needs a process
    of its own; while b is in a turn the agent is not evicted (the request times out); once
    b is idle, the whole agent goes (both conversations)."""
    extra = config_args(
        tmp,
        "max_sessions_per_agent = 2\nwarm_spares = 0\nmax_live_agents = 1\n"
        "agent_start_timeout_s = 1.5\nidle_timeout_s = 0\n",
    )
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        async with client(p) as c:
            a = await c.new_session(str(tmp))
            b = await c.new_session(str(tmp))
            hanging = await c.start_prompt(b, 'fake:{"hang": true}')
            await c.wait_for(_is_update(b, "agent_message_chunk"))
            refused = await c.request("session/new", {"cwd": str(tmp), "mcpServers": []})
            assert refused.error is not None
            assert refused.error["data"]["kind"] == "at_capacity"
            assert log_lines(p, "session.evicted") == []
            await c.notify("session/cancel", {"sessionId": b})
            await c.wait_reply(hanging)
            await c.new_session(str(tmp))
            evicted = {e["session_id"] for e in log_lines(p, "session.evicted")}
            assert evicted == {a, b}
            back = await c.prompt(a, "a again")
        assert back.result["_meta"]["acp-proxy"]["agent"].startswith("restored:")
