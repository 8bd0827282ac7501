"""Memory has an overall bound: agent stdin queues and what clients make the proxy buffer."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.client import AcpClient

from .conftest import client, eventually, proxy, summary

pytestmark = pytest.mark.trio

MIB = 1024 * 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _agent_pid(c: AcpClient, sid: str) -> int:
    pid: int = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
    return pid


async def test_an_agent_that_stops_reading_holds_its_senders_not_the_proxys_memory(
    tmp: Path,
) -> None:
    """The agent is stopped (SIGSTOP) and a client sends it 40 notifications of 1 MiB: the
    proxy queues at most agent_stdin_bytes (2 MiB) plus a line, then stops reading that
    client (its writes block); other sessions go on; once the agent reads again everything is
    delivered (before: all 40 MiB queued, 1 << 62 allowed)."""
    config = tmp / "proxy.toml"
    config.write_text(f"agent_stdin_bytes = {2 * MIB}\nmax_line_bytes = {2 * MIB}\n")
    async with (
        proxy(tmp, extra_args=("--config", str(config))) as p,
        client(p) as flooder,
        client(p) as bystander,
    ):
        sid = await flooder.new_session(str(tmp))
        other = await bystander.new_session(str(tmp))
        pid = await _agent_pid(flooder, sid)
        before = _rss(p.pid)
        os.kill(pid, signal.SIGSTOP)
        sent = 0
        line = b'{"jsonrpc":"2.0","method":"_x/big","params":{"sessionId":"%s","pad":"%s"}}\n' % (
            sid.encode(),
            b"p" * MIB,
        )
        try:
            with trio.move_on_after(3):
                for _ in range(40):
                    await flooder.send_raw(line)
                    sent += 1
            assert sent < 40, "the proxy read everything: no backpressure"
            grown = _rss(p.pid) - before
            assert grown < 20 * MIB, f"proxy RSS grew by {grown / MIB:.1f} MiB"
            reply = await bystander.prompt(other, "unaffected")
            assert "[fake]" in summary(reply.updates())
        finally:
            os.kill(pid, signal.SIGCONT)
        with trio.fail_after(30):
            for _ in range(40 - sent):
                await flooder.send_raw(line)
        reply = await flooder.prompt(sid, "after the flood")
        assert "[fake]" in summary(reply.updates())


async def test_unterminated_lines_over_the_global_budget_disconnect_the_largest(
    tmp: Path,
) -> None:
    """Four connections each hold a 3 MiB line open (under max_line_bytes): with a 8 MiB
    budget the largest holder is disconnected and logged, the proxy stays small, and a
    bystander's session works (before: every connection could pin max_line_bytes)."""
    config = tmp / "proxy.toml"
    config.write_text(f"max_line_bytes = {4 * MIB}\nmax_buffered_bytes = {8 * MIB}\n")
    async with proxy(tmp, extra_args=("--config", str(config))) as p, client(p) as bystander:
        sid = await bystander.new_session(str(tmp))
        streams = [await trio.open_unix_socket(p.socket) for _ in range(4)]
        try:
            for n, stream in enumerate(streams):
                size = 3 * MIB + n * 1024
                await stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"x","params":"')
                for _ in range(size // 65536):
                    await stream.send_all(b"a" * 65536)
            await eventually(
                lambda: any(e["event"] == "budget.evicted" for e in p.logs()), within_s=10
            )
            evicted = next(e for e in p.logs() if e["event"] == "budget.evicted")
            assert evicted["held"]["line"] >= 3 * MIB
            closed = 0
            for stream in streams:
                with trio.move_on_after(1):
                    closed += await stream.receive_some(100) == b""
            assert closed >= 1
            assert _rss(p.pid) < 200 * MIB
            assert "[fake]" in summary((await bystander.prompt(sid, "still here")).updates())
        finally:
            for stream in streams:
                await stream.aclose()
