"""The real ``opencode acp`` (1.18.33) behind the real proxy, with a local fake model.

Skipped unless ``scripts/install-opencode.sh`` has been run. Each test is bounded in time and
every process it starts is gone when it ends (the fixture checks, and kills leftovers by pid).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import pid_exists

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
from .fake_model import BASH_OUTPUT, RUN_BASH, RUN_COMMAND, SLOW_REPLY

pytestmark = [pytest.mark.trio, pytest.mark.opencode, pytest.mark.timeout(240)]


def _seen(n: int, last: str) -> str:
    return f"I have seen {n} user messages. Last: {last}"


async def _first_turn(c: AcpClient, oc: Opencode, text: str = "hello one") -> str:
    sid = await c.new_session(oc.cwd)
    reply = await c.prompt(sid, text)
    assert reply.error is None, reply.error
    assert text_of(reply) == _seen(1, text)
    return sid


async def test_first_turn(opencode: Opencode) -> None:
    """session/new + prompt through the proxy: opencode answers from the fake model."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            sid = await c.new_session(oc.cwd)
            reply = await c.prompt(sid, "hello one")
            assert reply.error is None, reply.error
            assert reply.result["stopReason"] == "end_turn"
            assert text_of(reply) == _seen(1, "hello one")
            assert reply.first_update_at is not None
            meta = proxy_meta(reply)
            assert meta["agent"] in ("spare", "cold")
            assert meta["ttft_ms"] > 0
            created = log_lines(p, "session.created")
            assert len(created) == 1
            assert created[0]["upstream_session_id"].startswith("ses_")
            assert created[0]["upstream_session_id"] != sid  # the proxy mints its own ids
            assert pid_exists(agent_pid(p, sid))
            # The model saw one user message, with opencode's tools.
            assert oc.model.last().user_texts() == ["hello one"]
            assert "bash" in oc.model.last().tool_names()


def _load_params(oc: Opencode, sid: str) -> dict[str, object]:
    return {"sessionId": sid, "cwd": oc.cwd, "mcpServers": []}


def _opencode_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_warm_continued_turn_from_a_new_connection(opencode: Opencode) -> None:
    """Turn 2 from a new connection goes to the same warm opencode process, which remembers."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p:
            async with client(p) as c:
                sid = await _first_turn(c, oc)
            pid = agent_pid(p, sid)
            # `env -C` exec'd: the pid the proxy knows is opencode itself.
            cmdline = _opencode_cmdline(pid)
            assert Path(cmdline[0]).name.startswith("opencode") and cmdline[1:] == ["acp"]
            async with client(p) as c:
                loaded = await c.request("session/load", _load_params(oc, sid))
                assert loaded.error is None, loaded.error
                reply = await c.prompt(sid, "hello two")
            assert reply.error is None, reply.error
            assert text_of(reply) == _seen(2, "hello two")
            assert proxy_meta(reply)["agent"] == "warm"
            assert proxy_meta(reply)["cli_ready_ms"] == 0
            assert agent_pid(p, sid) == pid and pid_exists(pid)
            assert len(log_lines(p, "session.created")) == 1
            assert not log_lines(p, "session.restored")
            assert oc.model.last().user_texts() == ["hello one", "hello two"]


@pytest.mark.parametrize("method", ["session/load", "session/resume"])
async def test_client_reconnects_with_load_or_resume(opencode: Opencode, method: str) -> None:
    """A new client attaches with load (replay from the proxy's store) or resume (no replay)."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p:
            async with client(p) as c:
                sid = await _first_turn(c, oc)
                seen_live = c.updates(sid)
            requests_before = oc.model.count
            async with client(p) as c:
                attached = await c.request(method, _load_params(oc, sid))
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
            assert text_of(reply) == _seen(2, "hello two")
            assert proxy_meta(reply)["agent"] == "warm"
            assert oc.model.last().user_texts() == ["hello one", "hello two"]


async def test_permission_round_trip_on_a_bash_tool_call(opencode: Opencode) -> None:
    """opencode asks session/request_permission through the proxy; allow runs the tool."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            sid = await _first_turn(c, oc)
            reply = await c.prompt(sid, f"please {RUN_BASH} now")
            assert reply.error is None, reply.error
            asks = [r for r in c.requests if r["method"] == "session/request_permission"]
            assert len(asks) == 1
            ask = asks[0]["params"]
            assert ask["sessionId"] == sid  # rewritten to the proxy's id
            assert {o["kind"] for o in ask["options"]} >= {"allow_once", "reject_once"}
            assert BASH_OUTPUT in ask["toolCall"]["rawInput"]["command"]
            # The client answered allow (its first allow option): the tool ran.
            assert (Path(oc.cwd) / "bash-ran.txt").read_text().strip() == BASH_OUTPUT
            call_id = ask["toolCall"]["toolCallId"]
            finals = [
                u
                for u in reply.updates()
                if u.get("sessionUpdate") == "tool_call_update"
                and u.get("toolCallId") == call_id
                and u.get("status") == "completed"
            ]
            assert finals, "no completed tool_call_update for the bash call"
            assert text_of(reply) == f"Tool said: {BASH_OUTPUT}"
            tool_result = oc.model.chat_requests("tool_result")[-1]
            assert tool_result.messages[-1]["role"] == "tool"
            # The client answered it, not the proxy's no-client fallback.
            assert not log_lines(p, "permission.answered_unattached")


async def test_permission_rejected_does_not_run_the_tool(opencode: Opencode) -> None:
    """The client rejects: opencode does not run bash, and the turn still ends."""
    oc = opencode

    def reject(method: str, params: object) -> tuple[object, dict[str, object] | None]:
        assert method == "session/request_permission"
        assert isinstance(params, dict)
        option = next(o for o in params["options"] if o["kind"] == "reject_once")
        return {"outcome": {"outcome": "selected", "optionId": option["optionId"]}}, None

    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p, policy=reject) as c:
            sid = await _first_turn(c, oc)
            reply = await c.prompt(sid, f"please {RUN_BASH} now")
            assert reply.error is None, reply.error
            assert [r["method"] for r in c.requests] == ["session/request_permission"]
            assert not (Path(oc.cwd) / "bash-ran.txt").exists()
            statuses = [
                u.get("status")
                for u in reply.updates()
                if u.get("sessionUpdate") == "tool_call_update"
            ]
            assert "completed" not in statuses
            # The session goes on.
            after = await c.prompt(sid, "still there?")
            assert _seen(3, "still there?") in text_of(after)


async def test_agent_killed_then_next_prompt_restores(opencode: Opencode) -> None:
    """SIGKILL of the opencode process: the next prompt restores the conversation."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p:
            async with client(p) as c:
                sid = await _first_turn(c, oc)
                second = await c.prompt(sid, "hello two")
                assert text_of(second) == _seen(2, "hello two")
                pid = agent_pid(p, sid)
                os.kill(pid, signal.SIGKILL)
                await wait_dead(pid)
                with trio.fail_after(10):
                    while not log_lines(p, "session.agent_gone"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                reply = await c.prompt(sid, "after the kill")
                assert reply.error is None, reply.error
                assert proxy_meta(reply)["agent"].startswith("restored:")
                assert proxy_meta(reply)["agent"] == "restored:resume"  # opencode supports resume
                assert text_of(reply) == _seen(3, "after the kill")
                assert oc.model.last().user_texts() == ["hello one", "hello two", "after the kill"]
                new_pid = agent_pid(p, sid)
                assert new_pid != pid and pid_exists(new_pid)
                assert [e["rung"] for e in log_lines(p, "session.restored")] == ["resume"]
                following = await c.prompt(sid, "and now")
                assert proxy_meta(following)["agent"] == "warm"
                assert text_of(following) == _seen(4, "and now")
            # Nothing opencode sent while being restored was recorded twice: a load replays
            # the conversation once.
            async with client(p) as c:
                loaded = await c.request("session/load", _load_params(oc, sid))
                users = [
                    u["content"]["text"]
                    for u in loaded.updates()
                    if u["sessionUpdate"] == "user_message_chunk"
                ]
                assert users == ["hello one", "hello two", "after the kill", "and now"]


async def test_agent_killed_mid_turn_then_next_prompt_restores(opencode: Opencode) -> None:
    """SIGKILL while opencode streams: the prompt fails fast, the next one restores."""
    oc = opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            sid = await _first_turn(c, oc)
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
            # opencode had stored the interrupted user message before it was killed.
            assert oc.model.last().user_texts() == [
                "hello one",
                f"{SLOW_REPLY} please",
                "after the crash",
            ]
            assert text_of(reply) == _seen(3, "after the crash")


async def test_proxy_restart_then_continued(opencode: Opencode) -> None:
    """SIGTERM the proxy (its opencode goes too); a new proxy on the same db continues."""
    oc = opencode
    db = str(oc.tmp / "sessions.db")
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy("proxy-1", db=db) as p1:
            async with client(p1) as c:
                sid = await _first_turn(c, oc)
                second = await c.prompt(sid, "hello two")
                assert text_of(second) == _seen(2, "hello two")
                seen_live = c.updates(sid)
            pids = [e["agent_pid"] for e in log_lines(p1, "agent.spawned")]
            p1.kill(signal.SIGTERM)
            await p1.process.wait()
            assert p1.process.returncode == 0
            for pid in pids:  # the proxy stopped its agents on the way out
                await wait_dead(pid)
        async with oc.proxy("proxy-2", db=db) as p2, client(p2) as c:
            loaded = await c.request("session/load", _load_params(oc, sid))
            assert loaded.error is None, loaded.error
            replay = [n["params"] for n in loaded.notifications]
            users = [
                u["update"]["content"]["text"]
                for u in replay
                if u["update"]["sessionUpdate"] == "user_message_chunk"
            ]
            assert users == ["hello one", "hello two"]
            # The rest is what the first client saw live, except that opencode answers the
            # restore's session/resume with a fresh available_commands_update a few ms after
            # its response; the proxy records it, and whether it is in this replay or arrives
            # just after the load's response is a race.
            commands = "available_commands_update"
            assert [
                u
                for u in replay
                if u["update"]["sessionUpdate"] not in ("user_message_chunk", commands)
            ] == [u for u in seen_live if u["update"]["sessionUpdate"] != commands]
            reply = await c.prompt(sid, "after the restart")
            assert reply.error is None, reply.error
            assert proxy_meta(reply)["agent"] == "restored:resume"
            assert text_of(reply) == _seen(3, "after the restart")
            assert oc.model.last().user_texts() == ["hello one", "hello two", "after the restart"]


async def test_proxy_start_spawns_one_agent(fresh_opencode: Opencode) -> None:
    """First start on a fresh opencode data dir: a client connecting at once gets served."""
    oc = fresh_opencode
    with trio.fail_after(TEST_LIMIT_S):
        async with oc.proxy() as p, client(p) as c:
            assert len(log_lines(p, "agent.spawned")) == 1
            await _first_turn(c, oc)


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
