"""Conversations outlive their agent process and the proxy: the restore ladder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import pid_exists

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio


async def _pid(c: AcpClient, sid: str) -> int:
    return (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]


async def _two_turns(c: AcpClient, cwd: Path) -> str:
    sid = await c.new_session(str(cwd))
    for text in ("remember teal", "and amber"):
        assert (await c.prompt(sid, text)).error is None
    return sid


async def _close_agent(c: AcpClient, sid: str) -> int:
    """Free the session's agent with session/close and wait until its process is gone."""
    pid = await _pid(c, sid)
    assert (await c.request("session/close", {"sessionId": sid})).error is None
    await eventually(lambda: not pid_exists(pid))
    return pid


@pytest.mark.parametrize(
    ("rung", "agent_args"),
    [
        ("resume", ("--state-dir", "{state}")),
        ("load", ("--state-dir", "{state}", "--no-resume")),
        ("new", ("--no-resume", "--no-load")),
    ],
)
async def test_each_rung_restores_a_conversation_that_the_agent_then_holds(
    tmp: Path, rung: str, agent_args: tuple[str, ...]
) -> None:
    """After the agent is gone, the next prompt restores it; the agent holds the earlier turns."""
    args = [a.format(state=tmp / "agent-state") for a in agent_args]
    async with proxy(tmp, *args) as p, client(p) as c:
        sid = await _two_turns(c, tmp)
        old_pid = await _close_agent(c, sid)
        conversation = "SELECT count(*) FROM events WHERE kind != 'available_commands_update'"
        events_before = db_rows(p.db, conversation)[0][0]
        reply = await c.prompt(sid, "what did I say?")
        assert reply.error is None, reply.error
        assert "holds 2 earlier turns" in summary(reply.updates())
        assert reply.result["_meta"]["acp-proxy"]["agent"] == f"restored:{rung}"
        assert await _pid(c, sid) != old_pid
        # Nothing the agent replayed while being restored was recorded or forwarded.
        turn3 = db_rows(p.db, conversation + " AND turn = 3")[0][0]
        assert db_rows(p.db, conversation)[0][0] == events_before + turn3
        assert all(
            n["params"]["update"]["sessionUpdate"] != "user_message_chunk"
            for n in reply.notifications
        )
        # The seed (last rung) travels once: the next turn is small and the agent remembers.
        following = await c.prompt(sid, "and now?")
        assert "holds 3 earlier turns" in summary(following.updates())
        assert following.result["_meta"]["acp-proxy"]["agent"] == "warm"
        assert following.result["_meta"]["acp-proxy"]["bytes_upstream"] < 200
        if rung == "new":
            assert reply.result["_meta"]["acp-proxy"]["bytes_upstream"] > 500
        logs = [e for e in p.logs() if e["event"] == "session.restored"]
        assert [e["rung"] for e in logs] == [rung]
        # Only the load rung has the agent replay; all of it was drained, none recorded.
        assert [e["drained_updates"] > 0 for e in logs] == [rung == "load"]


async def test_mode_and_model_are_reapplied_after_restore(tmp: Path) -> None:
    """A restored session keeps the mode and model the client had chosen."""
    async with proxy(tmp, "--no-resume", "--no-load") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.request("session/set_mode", {"sessionId": sid, "modeId": "plan"})
        await c.request(
            "session/set_config_option",
            {"sessionId": sid, "configId": "model", "value": "fake/echo-2"},
        )
        await _close_agent(c, sid)
        reply = await c.prompt(sid, "which mode?")
        assert reply.error is None, reply.error
        assert "mode=plan; model=fake/echo-2" in summary(reply.updates())


async def test_proxy_sigkill_and_restart_keeps_the_conversation(tmp: Path) -> None:
    """kill -9 of the proxy: a new proxy on the same database loads and continues the session."""
    state = str(tmp / "agent-state")
    async with proxy(tmp / "a", "--state-dir", state, db=str(tmp / "sessions.db")) as p1:
        async with client(p1) as c:
            sid = await _two_turns(c, tmp)
            seen = [u for u in c.updates(sid)]
        p1.kill(signal.SIGKILL)
        await p1.process.wait()
    async with proxy(tmp / "b", "--state-dir", state, db=str(tmp / "sessions.db")) as p2:
        async with client(p2) as c:
            loaded = await c.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
            replay = [n["params"] for n in loaded.notifications]
            live_seen = [u for u in replay if u["update"]["sessionUpdate"] != "user_message_chunk"]
            assert [{k: v for k, v in u.items()} for u in live_seen] == [
                {k: v for k, v in u.items() if k != "_t"} for u in seen
            ]
            reply = await c.prompt(sid, "still there?")
        assert "holds 2 earlier turns" in summary(reply.updates())
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"


async def test_agent_sigkill_mid_turn_then_next_prompt_restores(tmp: Path) -> None:
    """The pending prompt fails fast with the signal; the next prompt restores the session."""
    async with proxy(tmp, "--state-dir", str(tmp / "agent-state")) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "first")
        pid = await _pid(c, sid)
        since = len(c.messages)
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(
            lambda m: (
                m.get("params", {}).get("update", {}).get("sessionUpdate") == "agent_message_chunk"
            ),
            since=since,
        )
        os.kill(pid, signal.SIGKILL)
        killed = trio.current_time()
        with trio.fail_after(5):
            failed = await c.wait_reply(ident)
        assert trio.current_time() - killed < 1.0
        assert failed.error["data"]["kind"] == "agent_exited"
        assert failed.error["data"]["signal"] == "SIGKILL"
        assert failed.error["data"]["turnOutcome"] == "unknown"
        assert db_rows(p.db, "SELECT seq, outcome FROM turns") == [(1, "completed"), (2, "unknown")]
        reply = await c.prompt(sid, "after the crash")
        assert reply.error is None
        assert "holds 1 earlier turns" in summary(reply.updates())
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"


async def test_load_of_a_closed_session_restores_and_replays(tmp: Path) -> None:
    """A closed session keeps its history: load brings it back with the full replay."""
    async with proxy(tmp, "--state-dir", str(tmp / "agent-state")) as p:
        async with client(p) as c:
            sid = await _two_turns(c, tmp)
            await _close_agent(c, sid)
        async with client(p) as c:
            loaded = await c.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
            kinds = [n["params"]["update"]["sessionUpdate"] for n in loaded.notifications]
            assert kinds.count("user_message_chunk") == 2
        assert db_rows(p.db, "SELECT state FROM sessions") == [("active",)]


async def test_seeding_survives_odd_recorded_updates(tmp: Path) -> None:
    """Whatever an agent recorded (object tool ids, U+2028 in text), the seeded restore works."""
    script = '[{"sessionUpdate": "tool_call", "toolCallId": {"a": 1}, "title": "x"}]'
    async with proxy(tmp, "--no-resume", "--no-load") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        first = await c.prompt(sid, f'fake:{{"script": {script}}} line\u2028break')
        assert first.error is None
        await _close_agent(c, sid)
        reply = await c.prompt(sid, "still with me?")
        assert reply.error is None, reply.error
        assert "holds 1 earlier turns" in summary(reply.updates())
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "restored:new"


async def test_mcp_servers_and_directories_given_on_load_reach_the_restored_agent(
    tmp: Path,
) -> None:
    """A load's mcpServers/additionalDirectories are what the new agent process is bound with;
    without them, the session's recorded ones are used."""
    extra_dir = tmp / "lib"
    extra_dir.mkdir()
    server = {"name": "fs", "command": "/bin/true", "args": [], "env": []}
    async with proxy(tmp, "--state-dir", str(tmp / "state")) as p, client(p) as c:
        sid = await c.new_session(str(tmp), mcpServers=[server])
        await c.prompt(sid, "one")
        await _close_agent(c, sid)
        loaded = await c.request(
            "session/load",
            {
                "sessionId": sid,
                "cwd": str(tmp),
                "mcpServers": [],
                "additionalDirectories": [str(extra_dir)],
            },
        )
        assert loaded.error is None
        state = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
        [bound] = [s["boundWith"] for s in state["sessions"].values()]
        assert bound == {"mcpServers": [], "additionalDirectories": [str(extra_dir)]}
        await _close_agent(c, sid)
        await c.prompt(sid, "two")  # restored by a prompt: the recorded binding
        state = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
        [bound] = [s["boundWith"] for s in state["sessions"].values()]
        assert bound == {"mcpServers": [server]}


async def test_a_restore_does_not_stall_other_sessions_on_the_connection(tmp: Path) -> None:
    """One connection, two sessions: while A's prompt waits for A's agent to be restored (a
    second of session set-up here), B's turns go on; A's later messages wait for A's prompt,
    so a cancel sent right after it still cancels that prompt."""
    state = str(tmp / "state")
    async with (
        proxy(tmp, "--state-dir", state, "--session-init-delay", "1.0") as p,
        client(p) as c,
    ):
        a = await _two_turns(c, tmp)
        b = await _two_turns(c, tmp)
        await _close_agent(c, a)
        ident = await c.start_prompt(a, "a, after the restore")
        reply_b = await c.prompt(b, "b goes on")
        assert "holds 2 earlier turns" in summary(reply_b.updates())
        reply_a = await c.wait_reply(ident)
        # The proxy's own log orders it (no clock involved): B's turn ended before A's
        # restore did. Handled on the connection's reader, B would not even have started.
        events = [(e["event"], e.get("session_id")) for e in p.logs()]
        b_third_turn = [i for i, e in enumerate(events) if e == ("turn.finished", b)][2]
        assert b_third_turn < events.index(("session.restored", a))
        assert reply_a.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"
        assert "holds 2 earlier turns" in summary(reply_a.updates())

        await _close_agent(c, a)
        ident = await c.start_prompt(a, 'fake:{"hang": true}')
        await c.notify("session/cancel", {"sessionId": a})  # queued behind the restore
        with trio.fail_after(10):
            reply_a = await c.wait_reply(ident)
        assert reply_a.result["stopReason"] == "cancelled"

        await _close_agent(c, a)
        ident = await c.start_prompt(a, 'fake:{"hang": true}')
        await c.notify("$/cancel_request", {"requestId": ident})  # also waits for its prompt
        with trio.fail_after(10):
            reply_a = await c.wait_reply(ident)
        assert reply_a.result["stopReason"] == "cancelled"
