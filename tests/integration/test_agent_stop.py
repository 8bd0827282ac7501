"""Stopping an agent that ignores stdin EOF while it holds a session (as claude-agent-acp does):
the proxy closes the sessions the process holds first, so it exits at once instead of sitting
out the kill grace and being killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.proxy_process import ProxyHandle
from tests.real_agent.world import agent_pid, log_lines, wait_dead

from .conftest import client, proxy

pytestmark = pytest.mark.trio

#: long enough that an agent stopped by signals instead of by itself is plain to see
KILL_GRACE_S = 8.0


def _config(tmp: Path) -> tuple[str, ...]:
    path = tmp / "config.toml"
    path.write_text(f"kill_grace_s = {KILL_GRACE_S}\nwarm_spares = 0\n")
    return ("--config", str(path))


def _exit_of(handle: ProxyHandle, pid: int) -> dict[str, Any]:
    exits = [e for e in log_lines(handle, "agent.exited") if e.get("agent_pid") == pid]
    assert len(exits) == 1, exits
    return exits[0]


async def test_closing_a_session_lets_the_agent_exit_at_once(tmp_path: Path) -> None:
    """session/close from the client: the agent gets session/close, then EOF, and exits 0."""
    with trio.fail_after(30):
        async with proxy(tmp_path, "--hold-on-eof", extra_args=_config(tmp_path)) as p:
            async with client(p) as c:
                sid = await c.new_session()
                await c.prompt(sid, "hello")
                pid = agent_pid(p, sid)
                started = trio.current_time()
                closed = await c.request("session/close", {"sessionId": sid})
                assert closed.error is None, closed.error
                await wait_dead(pid, within_s=KILL_GRACE_S + 5)
                assert trio.current_time() - started < KILL_GRACE_S / 2
            assert _exit_of(p, pid)["returncode"] == 0  # by itself, not SIGTERM
            (closing,) = log_lines(p, "agent.sessions_closed")
            assert closing["all_answered"] is True and len(closing["sessions"]) == 1


async def test_proxy_stop_closes_every_held_session_first(tmp_path: Path) -> None:
    """SIGTERM: every agent (one per conversation, one restored by session/resume) is asked to
    close its session and exits by itself, so the proxy stops well within the grace."""
    with trio.fail_after(60):
        state = tmp_path / "state"
        args = ("--hold-on-eof", "--state-dir", str(state))
        async with proxy(tmp_path, *args, extra_args=_config(tmp_path)) as p:
            async with client(p) as c:
                first = await c.new_session()
                second = await c.new_session()
                await c.prompt(first, "hello")
                await c.prompt(second, "hello")
                killed = agent_pid(p, second)
                os.kill(killed, signal.SIGKILL)
                await wait_dead(killed)
                with trio.fail_after(10):  # the proxy has seen it go: the next prompt restores
                    while not log_lines(p, "session.agent_gone"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                reply = await c.prompt(second, "after the kill")  # restored: session/resume
                assert reply.error is None, reply.error
                assert [e["rung"] for e in log_lines(p, "session.restored")] == ["resume"]
            pids = [agent_pid(p, first), agent_pid(p, second)]
            started = trio.current_time()
            p.kill(signal.SIGTERM)
            await p.process.wait()
            assert trio.current_time() - started < KILL_GRACE_S / 2
            assert p.process.returncode == 0
            assert [_exit_of(p, pid)["returncode"] for pid in pids] == [0, 0]


async def test_an_unanswered_close_costs_no_more_than_the_grace(tmp_path: Path) -> None:
    """An agent that never answers session/close (and ignores EOF) is sent SIGTERM one kill
    grace after the stop began: closing and the exit after EOF share the grace."""
    grace = 2.0
    config = tmp_path / "config.toml"
    config.write_text(f"kill_grace_s = {grace}\nwarm_spares = 0\n")
    args = ("--hold-on-eof", "--ignore-close")
    with trio.fail_after(30):
        async with proxy(tmp_path, *args, extra_args=("--config", str(config))) as p:
            async with client(p) as c:
                sid = await c.new_session()
                await c.prompt(sid, "hello")
                pid = agent_pid(p, sid)
                started = trio.current_time()
                await c.request("session/close", {"sessionId": sid})
                await wait_dead(pid, within_s=4 * grace)
                took = trio.current_time() - started
            assert grace <= took < 1.5 * grace
            assert _exit_of(p, pid)["returncode"] == -signal.SIGTERM
            (closing,) = log_lines(p, "agent.sessions_closed")
            assert closing["all_answered"] is False


async def test_proxy_stop_waits_for_a_session_being_opened_then_closes_it(tmp_path: Path) -> None:
    """SIGTERM while a spare is opening a session ahead (its session/new not answered yet):
    the proxy waits for the answer and closes that session too, so the spare exits by itself
    instead of holding it until SIGTERM."""
    config = tmp_path / "config.toml"
    config.write_text(f"kill_grace_s = {KILL_GRACE_S}\nwarm_spares = 1\n")
    args = ("--hold-on-eof", "--session-init-delay", "2")
    with trio.fail_after(60):
        async with proxy(tmp_path, *args, extra_args=("--config", str(config))) as p:
            async with client(p) as c:
                sid = await c.new_session(str(tmp_path))
                await c.prompt(sid, "hello")
                with trio.fail_after(20):  # the next spare is ready: its session/new is sent
                    while True:
                        status = (await c.request("_acp-proxy/status", {})).unwrap()
                        spares = [a for a in status["agents"] if a["role"] == "spare"]
                        if spares:
                            break
                        await trio.sleep(0.02)
            assert spares[0]["preopened"] is None  # still being opened
            pids = [agent_pid(p, sid), spares[0]["pid"]]
            p.kill(signal.SIGTERM)
            await p.process.wait()
            assert p.process.returncode == 0
            assert [_exit_of(p, pid)["returncode"] for pid in pids] == [0, 0]
            closing = log_lines(p, "agent.sessions_closed")
            [spare_closed] = [e for e in closing if e["agent_pid"] == spares[0]["pid"]]
            assert len(spare_closed["sessions"]) == 1  # the one opened ahead
