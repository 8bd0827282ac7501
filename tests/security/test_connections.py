"""No number of connections can stop the proxy: a cap, a reserve descriptor, no fatal accept."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import anyio
import pytest
import trio

from acp_proxy.testing.proxy_process import ProxyHandle

from .conftest import client, eventually, proxy, summary

pytestmark = [
    pytest.mark.trio,
    pytest.mark.skipif(
        shutil.which("prlimit") is None, reason="needs prlimit (util-linux) to lower RLIMIT_NOFILE"
    ),
]


def _connect_many(path: str, count: int) -> list[socket.socket]:
    """Connect ``count`` idle clients (the kernel queues them until the proxy accepts)."""
    out = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        out.append(sock)
    return out


async def _refused(socks: list[socket.socket], within_s: float) -> list[bytes]:
    """What each connection the proxy closed said before closing (b"" when it said nothing);
    connections still open after ``within_s`` are not listed."""
    said: list[bytes] = []
    open_ = list(socks)
    with trio.move_on_after(within_s):
        while open_:
            for sock in list(open_):
                sock.setblocking(False)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                said.append(data)
                open_.remove(sock)
            await trio.sleep(0.05)
    return said


async def _session_works(p: ProxyHandle, cwd: str, within_s: float = 20) -> None:
    """Once the proxy has noticed the idle connections are gone, a new client is served."""
    with trio.fail_after(within_s):
        while True:
            try:
                async with client(p) as c:
                    sid = await c.new_session(cwd)
                    assert "[fake]" in summary((await c.prompt(sid, "after")).updates())
                    return
            except* (anyio.BrokenResourceError, anyio.EndOfStream):
                await trio.sleep(0.1)  # refused: the proxy has not seen every close yet


async def test_connections_over_max_connections_are_refused_and_serve_goes_on(tmp: Path) -> None:
    """Under a soft RLIMIT_NOFILE of 128 (raised to nothing: the hard limit is 128 too) the
    derived cap refuses connections beyond what the agents leave free, with one error line
    each; the proxy keeps serving, and a session works once the idle connections are gone."""
    config = tmp / "proxy.toml"
    config.write_text("max_live_agents = 4\nwarm_spares = 1\n")
    async with proxy(
        tmp, extra_args=("--config", str(config)), prefix=("prlimit", "--nofile=128:128")
    ) as p:
        # The socket may accept before the `ready` line is written: wait for the line.
        await eventually(lambda: any(e["event"] == "ready" for e in p.logs()))
        ready = next(e for e in p.logs() if e["event"] == "ready")
        cap = ready["max_connections"]
        assert ready["open_files_limit"] == 128
        assert 1 <= cap <= 128 - 64 - 4 * 6
        socks = _connect_many(p.socket, cap + 60)
        try:
            said = await _refused(socks, within_s=5)
            assert len(said) >= 59  # the readiness probe may still hold one slot
            assert all(b"too_many_connections" in line for line in said), said[:3]
            assert p.process.returncode is None
        finally:
            for sock in socks:
                sock.close()
        await _session_works(p, str(tmp))
        assert any(
            e["event"] == "client.refused" and e["reason"] == "max_connections" for e in p.logs()
        )


async def test_running_out_of_descriptors_never_ends_serve(tmp: Path) -> None:
    """With max_connections set above what RLIMIT_NOFILE allows, accept() fails with EMFILE:
    the waiting connections are closed through the reserve descriptor, the failure is logged,
    and serve goes on (before: BrokenResourceError ended it and removed the socket)."""
    config = tmp / "proxy.toml"
    config.write_text("max_connections = 10000\nmax_live_agents = 2\nwarm_spares = 1\n")
    async with proxy(
        tmp, extra_args=("--config", str(config)), prefix=("prlimit", "--nofile=96:96")
    ) as p:
        socks = _connect_many(p.socket, 200)
        try:
            said = await _refused(socks, within_s=5)
            assert said, "no connection was refused"
            assert p.process.returncode is None
            assert Path(p.socket).is_socket()
        finally:
            for sock in socks:
                sock.close()
        await _session_works(p, str(tmp))
        refused = [e for e in p.logs() if e["event"] == "client.refused"]
        assert any(e["reason"] == "accept_failed" and e["error"] == "EMFILE" for e in refused)
        assert not [e for e in p.logs() if e["event"] in ("serve.stopped", "client.crashed")]
