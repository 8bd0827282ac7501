"""Graceful drain on SIGTERM, against the real ``serve``: running turns finish and deliver,
new work is refused with ``proxy_stopping``, what outlives the drain is cancelled and answered."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient

from .conftest import client, db_rows, eventually, proxy

pytestmark = pytest.mark.trio


def _first_chunk(sid: str) -> Any:
    return lambda m: (
        m.get("method") == "session/update"
        and m["params"]["sessionId"] == sid
        and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
    )


def _logged(p: Any, event: str) -> list[dict[str, Any]]:
    return [line for line in p.logs() if line.get("event") == event]


async def test_a_running_turn_finishes_and_new_work_is_refused(tmp: Path) -> None:
    """SIGTERM mid-turn: the turn's full response arrives; a new prompt and a new client
    meanwhile get ``proxy_stopping``; then the proxy exits 0."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        other = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"chunks": 10, "chunk_delay": 0.15}')
        await c.wait_for(_first_chunk(sid))
        p.kill(signal.SIGTERM)
        await eventually(lambda: bool(_logged(p, "serve.draining")))
        refused = await c.prompt(other, "too late")
        async with AcpClient.connect(p.socket) as late:
            hello = await late.request("initialize", {"protocolVersion": 1})
        reply = await c.wait_reply(ident)
        with trio.fail_after(10):
            await p.process.wait()
    assert reply.error is None and reply.result["stopReason"] == "end_turn"
    chunks = [u for u in reply.updates() if u["sessionUpdate"] == "agent_message_chunk"]
    assert len(chunks) == 11  # 10 + the summary: nothing cut
    for answer in (refused, hello):
        assert answer.error["code"] == -32012
        assert answer.error["data"]["kind"] == "proxy_stopping"
    assert p.process.returncode == 0
    drained = _logged(p, "serve.drained")[0]
    assert (drained["turns_finished"], drained["turns_cancelled"]) == (1, 0)
    assert db_rows(p.db, "SELECT outcome FROM turns WHERE session_id = ?", sid) == [("completed",)]


async def test_a_turn_outliving_the_drain_is_cancelled_and_answered(tmp: Path) -> None:
    """A turn still running at ``--drain-timeout`` is cancelled at the agent, stored as
    cancelled, and its prompt answered with ``proxy_stopping`` (never EOF without answer)."""
    async with proxy(tmp, extra_args=("--drain-timeout", "1")) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(_first_chunk(sid))
        p.kill(signal.SIGTERM)
        signalled = time.monotonic()
        reply = await c.wait_reply(ident)
        answered_after = time.monotonic() - signalled
        with trio.fail_after(10):
            await p.process.wait()
    assert reply.error["code"] == -32012
    assert reply.error["data"]["kind"] == "proxy_stopping"
    assert reply.error["data"]["turnOutcome"] == "cancelled"
    assert reply.error["data"]["sessionId"] == sid
    assert 0.9 < answered_after < 10  # the 1 s drain, then the answer (not the 25 s default)
    assert p.process.returncode == 0
    assert db_rows(p.db, "SELECT outcome FROM turns WHERE session_id = ?", sid) == [("cancelled",)]
    drained = _logged(p, "serve.drained")[0]
    assert (drained["turns_finished"], drained["turns_cancelled"]) == (0, 1)


async def test_a_second_signal_skips_the_drain(tmp: Path) -> None:
    """With a long drain timeout, a second SIGTERM stops at once; the prompt still gets its
    ``proxy_stopping`` answer."""
    async with proxy(tmp, extra_args=("--drain-timeout", "60")) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(_first_chunk(sid))
        p.kill(signal.SIGTERM)
        await eventually(lambda: bool(_logged(p, "serve.draining")))
        p.kill(signal.SIGTERM)
        with trio.fail_after(10):  # not 60
            reply = await c.wait_reply(ident)
            await p.process.wait()
    assert reply.error["data"]["kind"] == "proxy_stopping"
    assert _logged(p, "serve.drained")[0]["skipped"] is True


async def test_an_idle_proxy_stops_at_once(tmp: Path) -> None:
    """With nothing running, SIGTERM stops the proxy without waiting for the drain timeout."""
    async with proxy(tmp) as p, client(p) as c:
        await c.new_session(str(tmp))
        p.kill(signal.SIGTERM)
        with trio.fail_after(10):  # the drain timeout is 25 s
            await p.process.wait()
    assert _logged(p, "serve.drained")[0]["drain_s"] < 1


async def test_a_session_new_in_flight_is_answered(tmp: Path) -> None:
    """A session/new still being set up when SIGTERM arrives is answered, not cut."""
    async with proxy(tmp, "--session-init-delay", "1") as p, client(p) as c:
        ident = await c.send_request("session/new", {"cwd": str(tmp), "mcpServers": []})
        await trio.sleep(0.2)  # the agent is creating the session (1 s)
        p.kill(signal.SIGTERM)
        reply = await c.wait_reply(ident)
        with trio.fail_after(10):
            await p.process.wait()
    assert reply.error is None and reply.result["sessionId"].startswith("sess_")
