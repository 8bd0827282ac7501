"""New conversations at warm speed: sessions opened ahead on spares; no idle spare while a
shared agent process has room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.real_agent.world import log_lines

from .conftest import client, config_args, db_rows, eventually, proxy

pytestmark = pytest.mark.trio

#: An MCP server in session/new params: such a conversation cannot take a session opened
#: ahead without MCP servers.
MCP = [{"name": "files", "command": "/bin/true", "args": [], "env": []}]


async def test_a_new_conversation_takes_the_session_its_spare_opened_ahead(tmp: Path) -> None:
    """After a conversation in a directory, the next spare opens a session there; a new
    conversation in that directory gets it: answered from it, served by that spare, and what
    the agent said about the session before (its available commands) is the conversation's."""
    async with proxy(tmp) as p, client(p) as c:
        first = await c.new_session(str(tmp))
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 1)
        [ahead] = log_lines(p, "agent.preopened")
        assert ahead["cwd"] == str(tmp) and ahead["reused"] is False
        status = (await c.request("_acp-proxy/status", {})).unwrap()
        [spare] = [a for a in status["agents"] if a["role"] == "spare"]
        assert spare["pid"] == ahead["agent_pid"] and spare["preopened"] == str(tmp)

        second = await c.new_session(str(tmp))
        reply = await c.prompt(second, "hello")
        assert reply.error is None, reply.error
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "preopened"
        [(upstream,)] = db_rows(p.db, "SELECT upstream_session_id FROM sessions WHERE id=?", second)
        assert upstream == ahead["upstream_session_id"]
        state = (await c.request("_fake/state", {"sessionId": second})).unwrap()
        assert state["pid"] == ahead["agent_pid"]
        # Said by the agent when the session was opened ahead, before anyone asked: it
        # reaches the conversation (recorded, and sent after the session/new answer).
        commands = [
            u
            for u in c.updates(second)
            if u["update"]["sessionUpdate"] == "available_commands_update"
        ]
        assert commands and commands[0]["sessionId"] == second
        kinds = db_rows(p.db, "SELECT kind FROM events WHERE session_id=?", second)
        assert ("available_commands_update",) in kinds
        # The first conversation (a spare that had opened nothing yet) was a plain spare.
        reply = await c.prompt(first, "hi")
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "spare"


async def test_a_session_opened_ahead_and_not_used_is_resumed_not_piled_up(tmp: Path) -> None:
    """Conversations that cannot take the session opened ahead (they bring MCP servers) leave
    it unused; the next spare resumes that same session instead of opening another, so the
    agent's own history holds one unused session, not one per spare."""
    state_dir = tmp / "agent-sessions"
    state_dir.mkdir()
    async with proxy(tmp, "--state-dir", str(state_dir)) as p, client(p) as c:
        await c.new_session(str(tmp))
        for n in range(1, 4):
            await eventually(lambda n=n: len(log_lines(p, "agent.preopened")) == n)  # type: ignore[misc]
            sid = (await c.request("session/new", {"cwd": str(tmp), "mcpServers": MCP})).unwrap()[
                "sessionId"
            ]
            reply = await c.prompt(sid, "with tools")
            assert reply.result["_meta"]["acp-proxy"]["agent"] == "spare"
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 4)
        ahead = log_lines(p, "agent.preopened")
        assert [e["reused"] for e in ahead] == [False, True, True, True]
        assert len({e["upstream_session_id"] for e in ahead}) == 1
        # 4 conversations + the one session opened ahead (8 without the reuse: one per spare).
        assert len(list(state_dir.glob("*.json"))) == 5


async def test_a_conversation_in_another_directory_opens_its_own(tmp: Path) -> None:
    """A spare that opened ahead in one directory, taken for a conversation in another, gives
    that conversation a session of its own; nothing the agent says about the unused one
    reaches the conversation, and the next spare opens ahead where conversations went last."""
    other = tmp / "other"
    other.mkdir()
    async with proxy(tmp) as p, client(p) as c:
        await c.new_session(str(tmp))
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 1)
        sid = await c.new_session(str(other))
        reply = await c.prompt(sid, "elsewhere")
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "spare"
        state = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
        assert state["sessions"][next(iter(state["sessions"]))]["cwd"] == str(other)
        assert {u["sessionId"] for u in c.updates()} <= {sid, *_created_ids(p)}
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 2)
        assert log_lines(p, "agent.preopened")[-1]["cwd"] == str(other)


async def _spare_ready(c: Any) -> None:
    with trio.fail_after(10):
        while True:  # bounded by the deadline
            status = (await c.request("_acp-proxy/status", {})).unwrap()
            if any(a["role"] == "spare" for a in status["agents"]):
                return
            await trio.sleep(0.05)


def _created_ids(p: Any) -> set[str]:
    return {e["session_id"] for e in log_lines(p, "session.created")}


async def test_opening_ahead_can_be_turned_off(tmp: Path) -> None:
    async with proxy(tmp, extra_args=("--no-preopen-sessions",)) as p, client(p) as c:
        await c.new_session(str(tmp))
        await _spare_ready(c)
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, "hello")
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "spare"
        assert log_lines(p, "agent.preopened") == []


async def test_no_idle_spare_while_a_shared_process_has_room(tmp: Path) -> None:
    """With several conversations per process, a spare is started only once the last free
    place is taken (a new conversation would share the process anyway): one process less."""
    extra = config_args(tmp, "max_sessions_per_agent = 3\nwarm_spares = 1\n")
    async with proxy(tmp, extra_args=extra) as p, client(p) as c:
        await eventually(lambda: len(log_lines(p, "agent.spawned")) == 1)
        await c.new_session(str(tmp))  # takes the spare: its process has 2 free places
        await c.new_session(str(tmp))
        with trio.move_on_after(2.0):
            await eventually(lambda: len(log_lines(p, "agent.spawned")) > 1, within_s=3)
        assert len(log_lines(p, "agent.spawned")) == 1, "a spare was started beside free places"
        await c.new_session(str(tmp))  # the last place: now a spare is started
        await eventually(lambda: len(log_lines(p, "agent.spawned")) == 2)
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 1)
        fourth = await c.new_session(str(tmp))
        reply = await c.prompt(fourth, "hi")
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "preopened"
        status = (await c.request("_acp-proxy/status", {})).unwrap()
        assert len(status["agents"]) == 2  # the full process and the fourth's


async def test_a_conversation_waits_for_the_spare_being_started(tmp: Path) -> None:
    """No spare is ready, one is starting: the conversation takes it when it is ready rather
    than starting one more process beside it (which would leave a spare idle)."""
    async with proxy(tmp, "--startup-delay", "1.5") as p, client(p) as c:
        await _spare_ready(c)
        await c.new_session(str(tmp))  # takes the spare; its replacement takes 1.5 s
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, "hello")
        assert reply.result["_meta"]["acp-proxy"]["agent"] in ("spare", "preopened")
        spawned = log_lines(p, "agent.spawned")
        assert len(spawned) <= 3  # the first spare, its replacement, the next replacement


async def test_a_client_that_authenticated_never_gets_a_session_opened_before(
    tmp: Path,
) -> None:
    """A spare that opened a session ahead and is then authenticated for a client serves that
    client with a session opened after its credentials, never the one opened before."""
    key = {"methodId": "api-key", "_meta": {"key": "secret-a"}}
    async with proxy(tmp) as p, client(p) as c, client(p) as a:
        await c.new_session(str(tmp))
        await eventually(lambda: len(log_lines(p, "agent.preopened")) == 1)
        (await a.request("authenticate", key)).unwrap()
        sid = await a.new_session(str(tmp))
        reply = await a.prompt(sid, "hello")
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "spare"
        state = (await a.request("_fake/state", {"sessionId": sid})).unwrap()
        assert state["authenticated"] == [key]
        [(upstream,)] = db_rows(p.db, "SELECT upstream_session_id FROM sessions WHERE id=?", sid)
        assert upstream != log_lines(p, "agent.preopened")[0]["upstream_session_id"]
