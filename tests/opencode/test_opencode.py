"""The real ``opencode acp`` (1.18.33) behind the real proxy, with a local fake model.

Skipped unless ``scripts/install-opencode.sh`` has been run. Each test is bounded in time and
every process it starts is gone when it ends (the fixture checks, and kills leftovers by pid).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from tests.real_agent.model_server import seen
from tests.real_agent.scenarios import (
    check_agent_killed_after_a_turn,
    check_agent_killed_mid_turn,
    check_first_turn,
    check_permission_allowed,
    check_permission_rejected,
    check_proxy_restart,
    check_warm_continued_turn,
    first_turn,
    session_params,
)
from tests.real_agent.world import agent_pid

from .conftest import (
    TEST_LIMIT_S,
    Opencode,
    client,
    log_lines,
    proxy_meta,
    text_of,
)
from .fake_model import RUN_COMMAND

pytestmark = [pytest.mark.trio, pytest.mark.opencode, pytest.mark.timeout(240)]


async def test_first_turn(opencode: Opencode) -> None:
    """session/new + prompt through the proxy: opencode answers from the fake model."""
    _reply, upstream = await check_first_turn(opencode, "bash")
    assert upstream.startswith("ses_")


def _opencode_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _is_opencode(pid: int) -> None:
    # `env -C` exec'd: the pid the proxy knows is opencode itself.
    cmdline = _opencode_cmdline(pid)
    assert Path(cmdline[0]).name.startswith("opencode") and cmdline[1:] == ["acp"]


async def test_warm_continued_turn_from_a_new_connection(opencode: Opencode) -> None:
    """Turn 2 from a new connection goes to the same warm opencode process, which remembers."""
    await check_warm_continued_turn(opencode, _is_opencode)


@pytest.mark.parametrize("method", ["session/load", "session/resume"])
async def test_client_reconnects_with_load_or_resume(opencode: Opencode, method: str) -> None:
    """A new client attaches with load (replay from the proxy's store) or resume (no replay)."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p:
            async with client(p) as c:
                sid = await first_turn(c, oc)
                seen_live = c.updates(sid)
            requests_before = oc.model.count
            async with client(p) as c:
                attached = await c.request(method, session_params(oc, sid))
                assert attached.error is None, attached.error
                # The proxy answers from its store: opencode's config options, no model call.
                options = {o["id"] for o in attached.result.get("configOptions", [])}
                assert {"model", "mode"} <= options
                assert oc.model.count == requests_before
                replay = [n["params"] for n in attached.notifications]
                if method == "session/load":
                    assert all(u["sessionId"] == sid for u in replay)
                    kinds = [u["update"]["sessionUpdate"] for u in replay]
                    assert kinds.count("user_message_chunk") == 1
                    user = [
                        u for u in replay if u["update"]["sessionUpdate"] == "user_message_chunk"
                    ]
                    assert user[0]["update"]["content"]["text"] == "hello one"
                    # The rest is byte for byte what the first client saw live.
                    assert [u for u in replay if u not in user] == seen_live
                else:
                    assert replay == []
                reply = await c.prompt(sid, "hello two")
            assert reply.error is None, reply.error
            assert text_of(reply) == seen(2, "hello two")
            assert proxy_meta(reply)["agent"] == "warm"
            assert oc.model.last().user_texts() == ["hello one", "hello two"]


async def test_permission_round_trip_on_a_bash_tool_call(opencode: Opencode) -> None:
    """opencode asks session/request_permission through the proxy; allow runs the tool."""
    await check_permission_allowed(opencode)
    tool_result = opencode.model.chat_requests("tool_result")[-1]
    assert tool_result.messages[-1]["role"] == "tool"


async def test_permission_rejected_does_not_run_the_tool(opencode: Opencode) -> None:
    """The client rejects: opencode does not run bash, and the turn still ends."""
    after = await check_permission_rejected(opencode)
    assert seen(3, "still there?") in text_of(after)


async def test_agent_killed_then_next_prompt_restores(opencode: Opencode) -> None:
    """SIGKILL of the opencode process: the next prompt restores the conversation (resume)."""
    await check_agent_killed_after_a_turn(opencode, "resume")


async def test_agent_killed_mid_turn_then_next_prompt_restores(opencode: Opencode) -> None:
    """SIGKILL while opencode streams: the prompt fails fast, the next one restores."""
    await check_agent_killed_mid_turn(opencode)


async def test_proxy_restart_then_continued(opencode: Opencode) -> None:
    """SIGTERM the proxy (its opencode goes too); a new proxy on the same db continues."""
    replay, seen_live, _ = await check_proxy_restart(opencode, str(opencode.tmp / "sessions.db"))
    # The rest of the replay is what the first client saw live, except that opencode answers
    # the restore's session/resume with a fresh available_commands_update a few ms after its
    # response; the proxy records it, and whether it is in this replay or arrives just after
    # the load's response is a race.
    commands = "available_commands_update"
    assert [
        u for u in replay if u["update"]["sessionUpdate"] not in ("user_message_chunk", commands)
    ] == [u for u in seen_live if u["update"]["sessionUpdate"] != commands]


async def test_proxy_start_spawns_one_agent(fresh_opencode: Opencode) -> None:
    """First start on a fresh opencode data dir: a client connecting at once gets served."""
    oc = fresh_opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            assert len(log_lines(p, "agent.spawned")) == 1
            await first_turn(c, oc)


async def test_bash_tool_sees_each_turns_forwarded_token(opencode: Opencode) -> None:
    """Issue 11 item 1 on the real agent: five turns on one opencode process, each from a new
    ``attach`` bridge forwarding its own ``OD_TOOL_TOKEN``; opencode's bash tool (non-
    interactive /bin/bash, which reads $BASH_ENV) prints that turn's token every time."""
    oc = opencode
    command = f'{RUN_COMMAND} echo "token=$OD_TOOL_TOKEN"'
    with trio.fail_after(TEST_LIMIT_S * 2):
        async with oc.proxy() as p:
            sid, pids = None, set()
            for turn in range(5):
                token = f"tok-{turn}-{os.getpid()}"
                bridge = [
                    sys.executable, "-m", "acp_proxy", "attach", "--socket", p.socket,
                    "--forward-env-prefix", "OD_",
                ]  # fmt: skip
                env = {**os.environ, "OD_TOOL_TOKEN": token}
                async with AcpClient.spawn(bridge, env=env) as c:
                    await c.initialize()
                    if sid is None:
                        sid = await c.new_session(oc.cwd)
                    else:
                        await c.request("session/resume", {"sessionId": sid, "cwd": oc.cwd})
                    reply = await c.prompt(sid, command)
                    assert reply.error is None, reply.error
                    assert text_of(reply) == f"Tool said: token={token}"
                assert sid is not None
                pids.add(agent_pid(p, sid))
            assert len(pids) == 1  # one warm opencode process served all five
            assert not log_lines(p, "session.restored")
