"""Two conversations on one real ``opencode acp`` process (``max_sessions_per_agent``)."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from acp_proxy.testing.client import AcpClient, Reply

from .conftest import (
    TEST_LIMIT_S,
    Opencode,
    agent_pid,
    client,
    log_lines,
    proxy_meta,
    text_of,
    wait_dead,
)

pytestmark = [pytest.mark.trio, pytest.mark.opencode, pytest.mark.timeout(240)]


def _seen(n: int, last: str) -> str:
    return f"I have seen {n} user messages. Last: {last}"


async def _both(turns: dict[str, tuple[AcpClient, str]]) -> dict[str, Reply]:
    """One turn on each conversation, at once (each from its own connection)."""
    replies: dict[str, Reply] = {}

    async def turn(sid: str, c: AcpClient, text: str) -> None:
        replies[sid] = await c.prompt(sid, text)

    async with trio.open_nursery() as nursery:
        for sid, (c, text) in turns.items():
            nursery.start_soon(turn, sid, c, text)
    return replies


async def test_two_conversations_on_one_process_and_its_crash_restores_both(
    opencode: Opencode,
) -> None:
    """Two conversations share one opencode process, run turns at the same time without
    seeing each other's messages; opencode is killed and both come back, with their own
    histories, onto one new process; closing one keeps the process for the other."""
    oc = opencode
    config = oc.tmp / "density.toml"
    config.write_text("max_sessions_per_agent = 4\nwarm_spares = 0\n")
    with trio.fail_after(TEST_LIMIT_S):
        async with (
            oc.proxy(extra_args=("--config", str(config))) as p,
            client(p) as c,
            client(p) as c2,
        ):
            a = await c.new_session(oc.cwd)
            b = await c2.new_session(oc.cwd)
            pid = agent_pid(p, a)
            assert agent_pid(p, b) == pid
            [created_b] = [e for e in log_lines(p, "session.created") if e["session_id"] == b]
            assert created_b["agent"] == "shared"

            first = await _both({a: (c, "alpha one"), b: (c2, "bravo one")})
            assert text_of(first[a]) == _seen(1, "alpha one")
            assert text_of(first[b]) == _seen(1, "bravo one")
            second = await _both({a: (c, "alpha two"), b: (c2, "bravo two")})
            assert text_of(second[a]) == _seen(2, "alpha two")
            assert text_of(second[b]) == _seen(2, "bravo two")

            os.kill(pid, signal.SIGKILL)  # the agent crashes
            await wait_dead(pid)
            after = {a: await c.prompt(a, "alpha three"), b: await c.prompt(b, "bravo three")}
            assert text_of(after[a]) == _seen(3, "alpha three")
            assert text_of(after[b]) == _seen(3, "bravo three")
            for reply in after.values():
                assert proxy_meta(reply)["agent"].startswith("restored:")
            new_pid = agent_pid(p, a)
            assert agent_pid(p, b) == new_pid != pid

            closed = await c.request("session/close", {"sessionId": a})
            assert closed.error is None
            reply = await c.prompt(b, "bravo four")
            assert text_of(reply) == _seen(4, "bravo four")
            assert proxy_meta(reply)["agent"] in ("warm", "shared")
            [retired] = log_lines(p, "session.retired")
            assert retired["agent_stopped"] is False
            os.kill(new_pid, 0)  # still running


async def test_a_new_conversation_takes_a_session_opened_ahead(opencode: Opencode) -> None:
    """After a conversation in the workspace, the next spare opens a session there ahead; a
    new conversation takes it (served by that opencode process, no session/new of its own),
    gets the available commands opencode announced for it, and both conversations keep
    their own histories."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            first = await c.new_session(oc.cwd)
            assert text_of(await c.prompt(first, "alpha one")) == _seen(1, "alpha one")
            with trio.fail_after(60):
                while not log_lines(p, "agent.preopened"):  # noqa: ASYNC110 (its log)
                    await trio.sleep(0.1)
            [ahead] = log_lines(p, "agent.preopened")
            second = await c.new_session(oc.cwd)
            reply = await c.prompt(second, "bravo one")
            assert text_of(reply) == _seen(1, "bravo one")
            assert proxy_meta(reply)["agent"] == "preopened"
            assert agent_pid(p, second) == ahead["agent_pid"] != agent_pid(p, first)
            kinds = [u["update"]["sessionUpdate"] for u in c.updates(second)]
            assert "available_commands_update" in kinds
            assert text_of(await c.prompt(first, "alpha two")) == _seen(2, "alpha two")
            assert text_of(await c.prompt(second, "bravo two")) == _seen(2, "bravo two")
