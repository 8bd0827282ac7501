"""The real ``claude-agent-acp`` (0.23.1) behind the real proxy, with a local fake Messages API.

Skipped unless ``scripts/install-claude-agent.sh`` has been run. Each test is bounded in time and
every process it starts is gone when it ends (the fixture checks, and kills leftovers by pid).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient, Reply
from tests.real_agent.model_server import SLOW_REPLY, seen
from tests.real_agent.scenarios import (
    TEST_LIMIT_S,
    check_agent_killed_after_a_turn,
    check_agent_killed_mid_turn,
    check_first_turn,
    check_permission_allowed,
    check_permission_rejected,
    check_proxy_restart,
    first_turn,
    session_params,
    two_turns,
    user_texts,
)
from tests.real_agent.world import agent_pid, client, log_lines, proxy_meta, text_of, wait_dead

from .conftest import KILL_GRACE_S, Claude
from .harness import agent_command

pytestmark = [pytest.mark.trio, pytest.mark.claude, pytest.mark.timeout(240)]

COMMANDS = "available_commands_update"


def _kinds(updates: list[dict[str, Any]]) -> list[str]:
    return [u["update"]["sessionUpdate"] for u in updates]


def _not_user(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [u for u in updates if u["update"]["sessionUpdate"] != "user_message_chunk"]


async def test_first_turn(claude: Claude) -> None:
    """session/new + prompt through the proxy: claude-agent-acp answers from the fake API."""
    reply, _upstream = await check_first_turn(claude, "Bash")
    # The agent reports its usage, both ways: an update and the prompt's answer.
    assert "usage_update" in [u["sessionUpdate"] for u in reply.updates()]
    assert reply.result["usage"]["totalTokens"] > 0


@pytest.mark.parametrize("method", ["session/load", "session/resume"])
async def test_client_reconnects_with_load_or_resume(claude: Claude, method: str) -> None:
    """A new client attaches with load (replay from the store, equal to what was seen live)
    or resume (no replay); neither calls the agent or the model."""
    cl = claude
    with trio.fail_after(TEST_LIMIT_S):
        async with cl.proxy() as p:
            async with client(p) as c:
                sid, seen_live = await two_turns(c, cl)
            requests_before = cl.model.count
            async with client(p) as c:
                attached = await c.request(method, session_params(cl, sid))
                assert attached.error is None, attached.error
                assert cl.model.count == requests_before
                replay = [n["params"] for n in attached.notifications]
                if method == "session/load":
                    assert all(u["sessionId"] == sid for u in replay)
                    assert user_texts(replay) == ["hello one", "hello two"]
                    # The rest is byte for byte what the first client saw live.
                    assert _not_user(replay) == seen_live
                    assert COMMANDS in _kinds(replay) and "usage_update" in _kinds(replay)
                else:
                    assert replay == []
                reply = await c.prompt(sid, "hello three")
            assert text_of(reply) == seen(3, "hello three")
            assert proxy_meta(reply)["agent"] == "warm"


async def test_permission_allowed_runs_the_tool(claude: Claude) -> None:
    """The CLI's Bash tool asks session/request_permission through the proxy; allow runs it."""
    await check_permission_allowed(claude)


async def test_permission_rejected_does_not_run_the_tool(claude: Claude) -> None:
    """The client rejects: the CLI does not run Bash, and the session goes on."""
    await check_permission_rejected(claude)


async def _cancel_script(c: AcpClient, cwd: str) -> tuple[str, list[Reply]]:
    """turn 1, a slow turn cancelled after its first words, then three more turns."""
    sid = await c.new_session(cwd)
    replies = [await c.prompt(sid, "hello one")]
    since = len(c.messages)
    ident = await c.start_prompt(sid, f"{SLOW_REPLY} please")
    await c.wait_for(
        lambda m: bool(
            m.get("params", {}).get("update", {}).get("sessionUpdate") == "agent_message_chunk"
            and m["params"]["update"]["content"].get("text")
        ),
        since=since,
    )
    await c.notify("session/cancel", {"sessionId": sid})
    replies.append(await c.wait_reply(ident))
    for text in ("after cancel", "and then", "and more"):
        replies.append(await c.prompt(sid, text))
    return sid, replies


def _outline(replies: list[Reply]) -> list[tuple[str, str]]:
    return [(r.result["stopReason"], text_of(r)) for r in replies]


async def test_cancel_and_the_agents_own_one_turn_slip(claude: Claude) -> None:
    """session/cancel stops the turn (``cancelled``). Then claude-agent-acp itself slips by one
    turn: the next prompt ends at once with no output and its answer comes during the prompt
    after. The proxy records that faithfully: the same outline as the agent on plain stdio,
    and a load replays exactly what was seen live."""
    cl = claude
    with trio.fail_after(TEST_LIMIT_S):
        async with AcpClient.spawn(agent_command(), env=cl.env()) as direct:
            await direct.initialize()
            direct_sid, direct_replies = await _cancel_script(direct, cl.cwd)
            await direct.request("session/close", {"sessionId": direct_sid})
        async with cl.proxy() as p:
            async with client(p) as c:
                sid, replies = await _cancel_script(c, cl.cwd)
                seen_live = c.updates(sid)
            outline = _outline(replies)
            assert outline == _outline(direct_replies)
            assert outline[1][0] == "cancelled"
            assert outline[2] == ("end_turn", "")  # the slip: no output at all
            # ... its answer comes first in the next turn (the CLI merged the interrupted and
            # the next message into one user message), then the next turn's own answer.
            assert outline[3][1].startswith(seen(2, f"{SLOW_REPLY} please"))
            assert outline[3][1].endswith(seen(3, "and then"))
            assert outline[4] == ("end_turn", seen(4, "and more"))
            async with client(p) as c:
                loaded = await c.request("session/load", session_params(cl, sid))
            replay = [n["params"] for n in loaded.notifications]
            assert _not_user(replay) == seen_live
            assert user_texts(replay) == [
                "hello one",
                f"{SLOW_REPLY} please",
                "after cancel",
                "and then",
                "and more",
            ]


async def test_agent_killed_after_a_turn_then_next_prompt_restores(claude: Claude) -> None:
    """SIGKILL of claude-agent-acp: the next prompt restores the conversation (resume)."""
    await check_agent_killed_after_a_turn(claude, "resume")


async def test_agent_killed_mid_turn_then_next_prompt_restores(claude: Claude) -> None:
    """SIGKILL while the agent streams: the prompt fails fast, the next one restores."""
    await check_agent_killed_mid_turn(claude)


async def test_proxy_restart_then_continued(claude: Claude) -> None:
    """SIGTERM the proxy (its agents go too, promptly); a new proxy on the same db continues,
    and its replay is byte for byte what the first client saw live."""
    replay, seen_live, stop_s = await check_proxy_restart(claude, str(claude.tmp / "sessions.db"))
    assert _not_user(replay) == seen_live
    # The agent holding a session was asked to close it, so it did not sit out the kill
    # grace (it ignores stdin EOF while it holds a session).
    assert stop_s < KILL_GRACE_S


async def test_replay_after_restore_has_every_line_the_client_saw(claude: Claude) -> None:
    """After a restore, the agent repeats its ``available_commands_update`` before the next
    prompt; what the attached client got and what a later replay holds are the same (in
    particular no line the client saw is missing from the replay)."""
    cl = claude
    db = str(cl.tmp / "sessions.db")
    with trio.fail_after(TEST_LIMIT_S):
        async with cl.proxy("proxy-1", db=db) as p1, client(p1) as c:
            await first_turn(c, cl)
        async with cl.proxy("proxy-2", db=db) as p2, client(p2) as c:
            sessions = (await c.request("session/list", {})).unwrap("session/list")["sessions"]
            sid = sessions[0]["sessionId"]
            loaded = await c.request("session/load", session_params(cl, sid))  # restores: resume
            assert loaded.error is None, loaded.error
            # The agent repeats its commands after the load's answer: an identical repeat is
            # neither delivered nor recorded, a changed one is both.
            reply = await c.prompt(sid, "hello two")
            assert text_of(reply) == seen(2, "hello two")
            seen_by_c = c.updates(sid)
        async with cl.proxy("proxy-3", db=db) as p3, client(p3) as c:
            loaded = await c.request("session/load", session_params(cl, sid))
            replay = [n["params"] for n in loaded.notifications]
            assert _not_user(replay) == _not_user(seen_by_c)


async def test_closing_a_session_lets_the_agent_exit_by_itself(claude: Claude) -> None:
    """session/close from the client: the proxy closes the agent's session before its stdin,
    so claude-agent-acp (which ignores EOF while it holds a session) exits at once, code 0."""
    cl = claude
    with trio.fail_after(TEST_LIMIT_S):
        async with cl.proxy() as p:
            async with client(p) as c:
                sid = await first_turn(c, cl)
                pid = agent_pid(p, sid)
                started = trio.current_time()
                closed = await c.request("session/close", {"sessionId": sid})
                assert closed.error is None, closed.error
                await wait_dead(pid, within_s=3 * KILL_GRACE_S)
                assert trio.current_time() - started < KILL_GRACE_S / 2
            (closing,) = log_lines(p, "agent.sessions_closed")
            assert closing["all_answered"] is True and len(closing["sessions"]) == 1
            exits = [e for e in log_lines(p, "agent.exited") if e.get("agent_pid") == pid]
            assert [e["returncode"] for e in exits] == [0]  # by itself, not by SIGTERM
