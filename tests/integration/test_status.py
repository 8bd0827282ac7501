"""``acp-proxy status`` / ``health`` / ``--version`` against the real ``serve``."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import trio

from acp_proxy import __version__

from .conftest import client, proxy

pytestmark = pytest.mark.trio


async def _cli(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "acp_proxy", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_status_reports_agents_sessions_and_memory(tmp: Path) -> None:
    """The status names every agent (session or spare) with its pid, memory, idle time and
    whether it is in a turn, plus session counts; the table shows the same."""
    async with proxy(tmp) as p, client(p) as c:
        busy = await c.new_session(str(tmp))
        idle = await c.new_session(str(tmp))
        await c.prompt(idle, "hello")
        await c.start_prompt(busy, 'fake:{"hang": true}')
        await c.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["sessionId"] == busy
                and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            )
        )
        result = await _cli("status", "--socket", p.socket, "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        pids = {
            s: (await c.request("_fake/state", {"sessionId": s})).unwrap()["pid"]
            for s in (busy, idle)
        }
        table = (await _cli("status", "--socket", p.socket)).stdout.decode()
    assert status["version"] == __version__
    assert status["pid"] == p.pid
    assert status["uptime_s"] > 0
    assert status["stopping"] is False
    assert status["clients"] == 2  # the test client and the one asking
    assert status["sessions"] == {"known": 2, "live": 2, "in_turn": 1}
    agents = {a["pid"]: a for a in status["agents"]}
    assert agents[pids[busy]]["in_turn"] is True
    assert agents[pids[idle]]["in_turn"] is False
    assert agents[pids[idle]]["sessions"] == 1
    spares = [a for a in status["agents"] if a["role"] == "spare"]
    assert len(spares) == 1 and spares[0]["sessions"] == 0
    for agent in status["agents"]:
        assert agent["rss_bytes"] > 1 << 20  # a Python fake agent holds several MiB
        assert agent["idle_s"] >= 0
    assert status["agent_memory_bytes"] == sum(a["rss_bytes"] for a in status["agents"])
    assert f"acp-proxy {__version__}" in table
    assert f"{pids[busy]:>8}  session" in table
    assert "2 live, 1 in a turn" in table


async def test_health_answers_zero_when_the_proxy_answers(tmp: Path) -> None:
    """``health`` exits 0 against a running proxy, 1 when nothing listens."""
    async with proxy(tmp) as p:
        ok = await _cli("health", "--socket", p.socket)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(b"ok: pid ")
    gone = await _cli("health", "--socket", p.socket)
    assert gone.returncode == 1
    assert b"unhealthy: cannot connect" in gone.stderr


async def test_health_fails_within_its_deadline_when_nothing_answers(tmp: Path) -> None:
    """A socket that accepts but never answers (a wedged proxy) is unhealthy after ~2 s."""
    path = str(tmp / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(4)
    try:
        started = time.monotonic()
        result = await _cli("health", "--socket", path)
        took = time.monotonic() - started
    finally:
        mute.close()
    assert result.returncode == 1
    assert b"no answer" in result.stderr
    assert 1.9 < took < 10


async def test_version() -> None:
    """``acp-proxy --version`` prints the package version."""
    result = await _cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"acp-proxy {__version__}"
