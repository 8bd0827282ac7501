"""Mode/config forwarding, extensions, session admin and the stdio bridge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import pid_exists

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio


async def test_mode_and_config_are_forwarded_and_remembered(tmp: Path) -> None:
    """set_mode / set_config_option reach the agent; a later load reports the new state."""
    async with proxy(tmp) as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            mode = await c1.request("session/set_mode", {"sessionId": sid, "modeId": "plan"})
            assert mode.error is None
            config = await c1.request(
                "session/set_config_option",
                {"sessionId": sid, "configId": "model", "value": "fake/echo-2"},
            )
            assert config.result["configOptions"][0]["currentValue"] == "fake/echo-2"
            legacy = await c1.request(
                "session/set_model", {"sessionId": sid, "modelId": "fake/echo-2"}
            )
            assert legacy.error is None
            reply = await c1.prompt(sid, "which mode?")
            assert "mode=plan; model=fake/echo-2" in summary(reply.updates())
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
        assert loaded.result["modes"]["currentModeId"] == "plan"
        assert loaded.result["configOptions"][0]["currentValue"] == "fake/echo-2"


async def test_agent_errors_pass_through_unchanged(tmp: Path) -> None:
    """An agent's JSON-RPC error object reaches the client as the agent sent it."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.request(
            "session/set_config_option", {"sessionId": sid, "configId": "nope", "value": "x"}
        )
        assert reply.error["code"] == -32602


async def test_extension_request_is_routed_by_session(tmp: Path) -> None:
    """``_``-methods with a sessionId reach that session's agent with the agent's session id."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        state = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
        upstream = db_rows(p.db, "SELECT upstream_session_id FROM sessions")[0][0]
        assert list(state["sessions"]) == [upstream]


async def test_list_close_delete(tmp: Path) -> None:
    """The proxy serves session/list, close (keeps history) and delete (removes it)."""
    other = tmp / "other"
    other.mkdir()
    async with proxy(tmp) as p, client(p) as c:
        a = await c.new_session(str(tmp))
        b = await c.new_session(str(other))
        await c.prompt(a, "hello")
        listed = (await c.request("session/list", {})).unwrap()["sessions"]
        assert [s["sessionId"] for s in listed] == [a, b]  # most recently updated first
        assert listed[0]["updatedAt"].endswith("Z")
        bogus = await c.request("session/list", {"cursor": "not-a-cursor"})
        assert bogus.error["code"] == -32602
        only = (await c.request("session/list", {"cwd": str(other)})).unwrap()["sessions"]
        assert [s["sessionId"] for s in only] == [b]
        pid = (await c.request("_fake/state", {"sessionId": a})).unwrap()["pid"]
        assert (await c.request("session/close", {"sessionId": a})).error is None
        assert db_rows(p.db, "SELECT state FROM sessions WHERE id = ?", a) == [("closed",)]
        assert db_rows(p.db, "SELECT count(*) FROM events WHERE session_id = ?", a)[0][0] > 0
        await eventually(lambda: not pid_exists(pid))
        assert (await c.request("session/delete", {"sessionId": b})).error is None
        assert db_rows(p.db, "SELECT count(*) FROM events WHERE session_id = ?", b) == [(0,)]
        assert (await c.request("session/delete", {"sessionId": "sess_unknown"})).error is None
        listed = (await c.request("session/list", {})).unwrap()["sessions"]
        assert [s["sessionId"] for s in listed] == [a]


async def test_attach_bridge_relays_stdio_and_leaving_keeps_the_agent(tmp: Path) -> None:
    """``acp-proxy attach`` is a byte bridge; its exit ends neither the turn nor the agent."""
    async with proxy(tmp) as p:
        bridge = [sys.executable, "-m", "acp_proxy", "attach", "--socket", p.socket]
        async with AcpClient.spawn(bridge) as c:
            await c.initialize()
            sid = await c.new_session(str(tmp))
            first = await c.prompt(sid, "through the bridge")
            assert "holds 0 earlier turns" in summary(first.updates())
            pid = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
            bridge_process = c.process
        assert bridge_process is not None and bridge_process.returncode == 0
        async with AcpClient.spawn(bridge) as c:
            await c.initialize()
            await c.request("session/resume", {"sessionId": sid, "cwd": str(tmp)})
            second = await c.prompt(sid, "again")
            assert "holds 1 earlier turns" in summary(second.updates())
            assert (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"] == pid


async def test_attach_without_a_proxy_fails_clearly(tmp: Path) -> None:
    """The bridge exits 1 with a hint on stderr, and writes nothing to stdout."""
    result = await trio.run_process(
        [sys.executable, "-m", "acp_proxy", "attach", "--socket", str(tmp / "none.sock")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"is `acp-proxy serve` running" in result.stderr
    assert result.stderr.startswith(b"acp-proxy attach: cannot connect to ")  # text, not JSON
