"""Malformed input, dying agents and signals: the proxy and other sessions go on."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient

from .conftest import client, db_rows, proxy, summary

pytestmark = pytest.mark.trio


async def test_malformed_lines_get_errors_and_the_connection_goes_on(tmp: Path) -> None:
    """Each bad line gets the right JSON-RPC error; the same connection still works."""
    config = tmp / "proxy.toml"
    config.write_text("max_line_bytes = 4096\n")
    async with proxy(tmp, extra_args=("--config", str(config))) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        prefix = b'{"jsonrpc":"2.0",'
        cases = [
            (b"{not json", -32700, None),
            (b"[1, 2, 3]", -32600, None),
            (b'{"jsonrpc": "1.0", "id": 7, "method": "x"}', -32600, 7),
            (b'{"jsonrpc": "2.0", "id": "s"}', -32600, "s"),
            (prefix + b'"id":8,"method":"session/prompt","params":5}', -32600, 8),
            (prefix + b'"id":9,"method":"no/such"}', -32601, 9),
            (b"\xff\xfe", -32700, None),
            (prefix + b'"id":10,"method":"session/new","params":{"cwd":"rel"}}', -32602, 10),
            (prefix + b'"id":11,"method":"_x/y","params":{}}', -32601, 11),
            (
                prefix
                + b'"id":12,"method":"session/prompt","params":{"sessionId":"%s"}}' % sid.encode(),
                -32602,
                12,
            ),
            (prefix + b'"id":13,"method":"x","params":{"pad":"%s"}}' % (b"a" * 5000), -32600, None),
        ]
        for line, code, ident in cases:
            before = len(c.messages)
            await c.send_raw(line + b"\n")
            with trio.fail_after(5):
                error = await c.wait_for(
                    lambda m, b=before: "error" in m and c.messages.index(m) >= b
                )
            assert error["error"]["code"] == code, line
            assert error["id"] == ident, line
        reply = await c.prompt(sid, "still fine")
        assert "holds 0 earlier turns" in summary(reply.updates())


async def test_malformed_notifications_are_dropped_and_the_connection_goes_on(tmp: Path) -> None:
    """Notifications cannot be answered: bad ones are logged, and nothing else changes."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        for line in (
            b'{"jsonrpc":"2.0","method":"_x/y","params":[1, 2]}',
            b'{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":{"a":1}}}',
            b'{"jsonrpc":"2.0","method":"$/cancel_request"}',
            b'{"jsonrpc":"2.0","method":"session/cancel","params":[]}',
            b'{"jsonrpc":"2.0","method":"_acp-proxy/env","params":{"env":{"A":1}}}',
            b'{"jsonrpc":"2.0","method":"unknown/notification","params":{}}',
        ):
            await c.send_raw(line + b"\n")
        reply = await c.prompt(sid, "still fine")
        assert "holds 0 earlier turns" in summary(reply.updates())
        assert not [m for m in c.messages if "error" in m]
        events = {e["event"] for e in p.logs()}
        assert {"client.bad_cancel_request", "client.bad_env_notification"} <= events
        assert "client.crashed" not in events


async def test_agent_that_exits_at_spawn_gives_a_clear_error(tmp: Path) -> None:
    """A broken agent command is reported with its exit code and stderr, and nothing hangs."""
    async with proxy(tmp, "--exit-at-start", "3") as p:
        async with AcpClient.connect(p.socket) as c:
            with trio.fail_after(20):
                reply = await c.request("initialize", {"protocolVersion": 1})
            assert reply.error is not None
            assert "exit code 3" in reply.error["message"]
            assert reply.error["data"]["exitCode"] == 3
            assert any("exiting at start" in line for line in reply.error["data"]["stderrTail"])
            with trio.fail_after(20):
                again = await c.request("session/new", {"cwd": str(tmp), "mcpServers": []})
            assert again.error is not None
        assert p.process.returncode is None  # the proxy itself is still serving


async def test_agent_crash_mid_turn_fails_the_prompt_with_unknown_outcome(tmp: Path) -> None:
    """The pending prompt gets an agent_exited error at once; the turn is stored as unknown."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        with trio.fail_after(5):
            reply = await c.prompt(sid, 'fake:{"crash_after": 2}')
        assert reply.error is not None
        data = reply.error["data"]
        assert data["kind"] == "agent_exited"
        assert data["exitCode"] == 3
        assert data["turnOutcome"] == "unknown"
        # The agent's available_commands_update follows session/new asynchronously (as
        # opencode's does), so it may land before or inside turn 1: leave it out on both sides.
        other = "available_commands_update"
        turn_updates = [u for u in reply.updates() if u["sessionUpdate"] != other]
        assert len(turn_updates) == 2  # what the agent sent before dying was delivered
        assert db_rows(p.db, "SELECT outcome FROM turns") == [("unknown",)]
        stored = db_rows(
            p.db, "SELECT kind FROM events WHERE turn = 1 AND kind != ? ORDER BY seq", other
        )
        # the user's block and exactly the two updates the client saw
        assert stored == [("user_message_chunk",)] + [(u["sessionUpdate"],) for u in turn_updates]


async def test_other_sessions_survive_an_agent_crash(tmp: Path) -> None:
    """One agent dying touches no other conversation."""
    async with proxy(tmp) as p, client(p) as c:
        healthy = await c.new_session(str(tmp))
        doomed = await c.new_session(str(tmp))
        await c.prompt(doomed, 'fake:{"crash_after": 1}')
        reply = await c.prompt(healthy, "still here?")
        assert reply.error is None
        assert "holds 0 earlier turns" in summary(reply.updates())


async def test_sigterm_stops_agents_and_removes_the_socket(tmp: Path) -> None:
    """SIGTERM: agents are ended, the store closed, the socket removed, exit code 0."""
    async with proxy(tmp) as p:
        async with client(p) as c:
            sid = await c.new_session(str(tmp))
            await c.prompt(sid, "hi")
            pid = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
        p.kill(signal.SIGTERM)
        with trio.fail_after(15):
            await p.process.wait()
        assert p.process.returncode == 0
        assert not os.path.exists(p.socket)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        events = [entry["event"] for entry in p.logs()]
        assert "session.stopped" in events
        assert events[-1] == "serve.stopped"


async def test_socket_is_owner_only(tmp: Path) -> None:
    """The socket file is created 0600: only its owner can drive the agents."""
    async with proxy(tmp) as p:
        assert stat.S_IMODE(os.stat(p.socket).st_mode) == 0o600


async def test_a_second_proxy_on_the_same_socket_refuses_to_start(tmp: Path) -> None:
    """A live socket is never stolen; the second serve exits with a clear message."""
    async with proxy(tmp) as p:
        import subprocess
        import sys

        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "acp_proxy",
                "serve",
                "--socket",
                p.socket,
                "--db",
                str(tmp / "other.db"),
                "--",
                "true",
            ],
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1
        assert f"the socket {p.socket} is already served by process {p.pid}".encode() in (
            result.stderr
        )
