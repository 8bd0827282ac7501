"""Scenarios every real agent goes through behind the proxy, with the checks that hold for all.

Each ``check_*`` runs one whole scenario in a test's world (its own proxy, fake model and
private agent home) and returns what an agent-specific test may check further. The worlds of
``tests/opencode`` and ``tests/claude`` satisfy :class:`World`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import trio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle, pid_exists

from .model_server import BASH_OUTPUT, RUN_BASH, SLOW_REPLY, ModelServer, seen
from .world import agent_pid, client, log_lines, proxy_meta, text_of, wait_dead

__all__ = [
    "TEST_LIMIT_S",
    "World",
    "check_agent_killed_after_a_turn",
    "check_agent_killed_mid_turn",
    "check_first_turn",
    "check_permission_allowed",
    "check_permission_rejected",
    "check_proxy_restart",
    "check_warm_continued_turn",
    "first_turn",
    "session_params",
    "two_turns",
    "user_texts",
]

#: bound on any single scenario: a real agent starts in 0.5-1.5 s and a cold turn takes ~3 s on
#: an idle 2-core machine, but 5-10x that when the machine is loaded (other suites in parallel)
TEST_LIMIT_S = 150.0


class World(Protocol):
    """One test's real-agent world."""

    @property
    def cwd(self) -> str: ...

    @property
    def model(self) -> ModelServer: ...

    def proxy(
        self, name: str = ..., *, db: str | None = ..., extra_args: tuple[str, ...] = ...
    ) -> AbstractAsyncContextManager[ProxyHandle]: ...


async def first_turn(c: AcpClient, world: World, text: str = "hello one") -> str:
    """``session/new`` and one turn, checked; returns the session id."""
    sid = await c.new_session(world.cwd)
    reply = await c.prompt(sid, text)
    assert reply.error is None, reply.error
    assert text_of(reply) == seen(1, text)
    return sid


def session_params(world: World, sid: str) -> dict[str, object]:
    """Params of ``session/load`` / ``session/resume``."""
    return {"sessionId": sid, "cwd": world.cwd, "mcpServers": []}


def user_texts(updates: list[dict[str, Any]]) -> list[str]:
    """The texts of the ``user_message_chunk`` updates among ``session/update`` params."""
    return [
        u["update"]["content"]["text"]
        for u in updates
        if u["update"]["sessionUpdate"] == "user_message_chunk"
    ]


async def check_warm_continued_turn(
    world: World, check_agent: Callable[[int], None] = lambda pid: None
) -> None:
    """Turn 2 from a new connection goes to the same warm agent, which remembers turn 1.
    ``check_agent`` gets the agent's pid while it runs."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p:
            async with client(p) as c:
                sid = await first_turn(c, world)
            pid = agent_pid(p, sid)
            check_agent(pid)
            async with client(p) as c:
                loaded = await c.request("session/load", session_params(world, sid))
                assert loaded.error is None, loaded.error
                reply = await c.prompt(sid, "hello two")
            assert reply.error is None, reply.error
            assert text_of(reply) == seen(2, "hello two")
            assert proxy_meta(reply)["agent"] == "warm"
            assert proxy_meta(reply)["cli_ready_ms"] == 0
            assert agent_pid(p, sid) == pid and pid_exists(pid)
            assert len(log_lines(p, "session.created")) == 1
            assert not log_lines(p, "session.restored")
            assert world.model.last().user_texts() == ["hello one", "hello two"]


async def check_permission_allowed(world: World) -> None:
    """The agent's bash tool asks session/request_permission through the proxy; the client
    allows (its first allow option) and the tool runs."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p, client(p) as c:
            sid = await first_turn(c, world)
            reply = await c.prompt(sid, f"please {RUN_BASH} now")
            assert reply.error is None, reply.error
            asks = [r for r in c.requests if r["method"] == "session/request_permission"]
            assert len(asks) == 1
            ask = asks[0]["params"]
            assert ask["sessionId"] == sid  # rewritten to the proxy's id
            assert {o["kind"] for o in ask["options"]} >= {"allow_once", "reject_once"}
            assert BASH_OUTPUT in ask["toolCall"]["rawInput"]["command"]
            assert (Path(world.cwd) / "bash-ran.txt").read_text().strip() == BASH_OUTPUT
            call_id = ask["toolCall"]["toolCallId"]
            assert any(
                u.get("sessionUpdate") == "tool_call_update"
                and u.get("toolCallId") == call_id
                and u.get("status") == "completed"
                for u in reply.updates()
            ), "no completed tool_call_update for the bash call"
            assert text_of(reply) == f"Tool said: {BASH_OUTPUT}"
            assert world.model.chat_requests("tool_result"), "the tool's result never came back"
            # The client answered it, not the proxy's no-client fallback.
            assert not log_lines(p, "permission.answered_unattached")


def _reject(method: str, params: object) -> tuple[object, dict[str, object] | None]:
    assert method == "session/request_permission"
    assert isinstance(params, dict)
    option = next(o for o in params["options"] if o["kind"] == "reject_once")
    return {"outcome": {"outcome": "selected", "optionId": option["optionId"]}}, None


async def check_permission_rejected(world: World) -> Reply:
    """The client rejects: the tool does not run, the turn ends, the session goes on.
    Returns the answer to the prompt after."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p, client(p, policy=_reject) as c:
            sid = await first_turn(c, world)
            reply = await c.prompt(sid, f"please {RUN_BASH} now")
            assert reply.error is None, reply.error
            assert [r["method"] for r in c.requests] == ["session/request_permission"]
            assert not (Path(world.cwd) / "bash-ran.txt").exists()
            statuses = [
                u.get("status")
                for u in reply.updates()
                if u.get("sessionUpdate") == "tool_call_update"
            ]
            assert "completed" not in statuses
            after = await c.prompt(sid, "still there?")
            assert text_of(after).endswith("Last: still there?")
            return after


async def check_agent_killed_after_a_turn(world: World, rung: str) -> None:
    """SIGKILL of the agent: the next prompt restores the conversation with ``rung``; a later
    load replays every turn once."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p:
            async with client(p) as c:
                sid, _ = await two_turns(c, world)
                pid = agent_pid(p, sid)
                os.kill(pid, signal.SIGKILL)
                await wait_dead(pid)
                with trio.fail_after(10):
                    while not log_lines(p, "session.agent_gone"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                reply = await c.prompt(sid, "after the kill")
                assert reply.error is None, reply.error
                assert proxy_meta(reply)["agent"] == f"restored:{rung}"
                assert text_of(reply) == seen(3, "after the kill")
                expected = ["hello one", "hello two", "after the kill"]
                assert world.model.last().user_texts() == expected
                new_pid = agent_pid(p, sid)
                assert new_pid != pid and pid_exists(new_pid)
                assert [e["rung"] for e in log_lines(p, "session.restored")] == [rung]
                following = await c.prompt(sid, "and now")
                assert proxy_meta(following)["agent"] == "warm"
                assert text_of(following) == seen(4, "and now")
            # Nothing the agent sent while being restored was recorded twice.
            async with client(p) as c:
                loaded = await c.request("session/load", session_params(world, sid))
                assert user_texts([n["params"] for n in loaded.notifications]) == [
                    *expected,
                    "and now",
                ]


async def check_agent_killed_mid_turn(world: World) -> None:
    """SIGKILL while the agent streams: the prompt fails fast with an unknown outcome, the
    next one restores (resume), and the model sees the interrupted message too (the agent had
    stored it before it was killed)."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p, client(p) as c:
            sid = await first_turn(c, world)
            pid = agent_pid(p, sid)
            since = len(c.messages)
            ident = await c.start_prompt(sid, f"{SLOW_REPLY} please")
            await c.wait_for(
                lambda m: (
                    m.get("params", {}).get("update", {}).get("sessionUpdate")
                    == "agent_message_chunk"
                ),
                since=since,
            )
            os.kill(pid, signal.SIGKILL)
            killed = trio.current_time()
            failed = await c.wait_reply(ident)
            assert trio.current_time() - killed < 2.0
            assert failed.error is not None
            assert failed.error["data"]["kind"] == "agent_exited"
            assert failed.error["data"]["signal"] == "SIGKILL"
            assert failed.error["data"]["turnOutcome"] == "unknown"
            reply = await c.prompt(sid, "after the crash")
            assert reply.error is None, reply.error
            assert proxy_meta(reply)["agent"] == "restored:resume"
            assert text_of(reply).endswith("Last: after the crash")
            expected = ["hello one", f"{SLOW_REPLY} please", "after the crash"]
            assert world.model.last().user_texts() == expected


async def two_turns(c: AcpClient, world: World) -> tuple[str, list[dict[str, Any]]]:
    """A new session with two turns, checked; returns its id and every update seen live."""
    sid = await first_turn(c, world)
    second = await c.prompt(sid, "hello two")
    assert text_of(second) == seen(2, "hello two")
    return sid, c.updates(sid)


async def check_proxy_restart(
    world: World, db: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """SIGTERM the proxy after two turns (its agents go too); a new proxy on the same db loads
    the session (the replay holds both user messages) and continues it (restored by resume).

    Returns the replay, the updates the first client saw live (the caller compares them: what
    an agent sends around a restore differs) and the seconds the first proxy took to stop.
    """
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy("proxy-1", db=db) as p1:
            async with client(p1) as c:
                sid, seen_live = await two_turns(c, world)
            pids = [e["agent_pid"] for e in log_lines(p1, "agent.spawned")]
            p1.kill(signal.SIGTERM)
            stopping = trio.current_time()
            await p1.process.wait()
            stop_s = trio.current_time() - stopping
            assert p1.process.returncode == 0
            for pid in pids:  # the proxy stopped its agents on the way out
                await wait_dead(pid)
        async with world.proxy("proxy-2", db=db) as p2, client(p2) as c:
            loaded = await c.request("session/load", session_params(world, sid))
            assert loaded.error is None, loaded.error
            replay = [n["params"] for n in loaded.notifications]
            assert user_texts(replay) == ["hello one", "hello two"]
            reply = await c.prompt(sid, "after the restart")
            assert reply.error is None, reply.error
            assert proxy_meta(reply)["agent"] == "restored:resume"
            assert text_of(reply) == seen(3, "after the restart")
            expected = ["hello one", "hello two", "after the restart"]
            assert world.model.last().user_texts() == expected
    return replay, seen_live, stop_s


async def check_first_turn(world: World, bash_tool: str) -> tuple[Reply, str]:
    """session/new + prompt through the proxy: the agent answers from the fake model, which
    saw one user message and the agent's ``bash_tool``. Returns the answer and the agent's own
    session id."""
    with trio.fail_after(TEST_LIMIT_S):
        async with world.proxy() as p, client(p) as c:
            sid = await c.new_session(world.cwd)
            reply = await c.prompt(sid, "hello one")
            assert reply.error is None, reply.error
            assert reply.result["stopReason"] == "end_turn"
            assert text_of(reply) == seen(1, "hello one")
            assert reply.first_update_at is not None
            meta = proxy_meta(reply)
            assert meta["agent"] in ("spare", "cold")
            assert meta["ttft_ms"] > 0
            (created,) = log_lines(p, "session.created")
            assert created["upstream_session_id"] != sid  # the proxy mints its own ids
            assert pid_exists(agent_pid(p, sid))
            assert world.model.last().user_texts() == ["hello one"]
            assert bash_tool in world.model.last().tool_names()
            return reply, created["upstream_session_id"]
