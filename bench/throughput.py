"""Benchmark 6: streaming throughput of one long turn, recorded to SQLite by the proxy.

Run ``python -m bench.throughput [--runs N] [--chunks N] [--chunk-size B] [--write BENCHMARKS.md]``.

One turn streams ``--chunks`` (default 100 000) ``agent_message_chunk`` updates of
``--chunk-size`` (default 100) bytes of text each, asked of the bundled fake agent (started with
``--thoughts 0 --tool-calls 0``) with the per-turn directive
``fake:{"chunks": 100000, "chunk_size": 100}``:

* A (direct): the agent spawned on stdio; the turn is read straight from its stdout pipe.
* B (through the proxy): one ``acp-proxy serve`` (SQLite store); the turn is read from its unix
  socket. Every update is committed to the store before it is delivered.

Both sides use the same minimal reader (NDJSON split, no JSON decoding of the updates), one
warm agent / one session for all runs, and the turns alternate A, B, A, B, ... Updates/s =
updates received / (first update received → prompt answered): the fake agent builds all its
chunks' text before it sends the first one, which is not streaming. The CPU time the agent and
the proxy (all threads) used during each turn is read from ``/proc``. After each B turn the
proxy's database is read with ``sqlite3``: the turn's recorded ``agent_message_chunk`` events
must equal the updates the client received, and the report gives the total events held.
Goal: median(B) / median(A) >= 0.6.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

from acp_proxy.protocol import LineBuffer
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    children,
    db_bytes,
    initialize_params,
    new_parser,
    parse,
    proxy_meta,
    report,
    request_line,
    row,
    run_main,
    stat_cpu_seconds,
)

SECTION_TITLE = "## 6. Streaming throughput, recorded to SQLite"
GOAL_RATIO = 0.6
AGENT_ARGS = ("--thoughts", "0", "--tool-calls", "0")
CWD = "/tmp"
SETUP_LIMIT_S = 60.0
TURN_LIMIT_S = 600.0  #: one streaming turn (either scenario) must finish within this
_MESSAGE_CHUNK = b'"sessionUpdate":"agent_message_chunk"'


def agent_command(*args: str) -> list[str]:
    """The bundled fake agent as an agent command line."""
    return fake_agent_command(*args)


@dataclass
class Run:
    """One streaming turn, times in seconds from just before the prompt was written."""

    updates: int  #: agent_message_chunk updates received (the summary chunk included)
    bytes: int  #: bytes received up to and including the prompt's answer
    first: float  #: first update received
    last: float  #: last update received
    total: float  #: prompt answered
    turn: int = 0  #: the turn's number in the proxy's store (B)
    recorded: int = 0  #: agent_message_chunk events the store holds for that turn (B)
    agent_cpu: float = 0.0  #: CPU seconds the agent process(es) used during the turn
    proxy_cpu: float = 0.0  #: CPU seconds the proxy process (all threads) used (B)

    @property
    def stream(self) -> float:
        """Seconds from the first update received to the prompt's answer."""
        return self.total - self.first

    @property
    def rate(self) -> float:
        """Updates per second while streaming: first update received → prompt answered."""
        return self.updates / self.stream


class RawPeer:
    """A JSON-RPC client that splits lines and decodes only answers (for raw speed)."""

    def __init__(
        self, receive: ByteReceiveStream, send: ByteSendStream, pid: int | None = None
    ) -> None:
        self.pid = pid  #: the agent process, when talking to it directly
        self._receive = receive
        self._send = send
        self._buffer = LineBuffer(64 * 1024 * 1024)
        self._next_id = 0

    async def request(self, method: str, params: Any) -> tuple[dict[str, Any], Run]:
        """Send a request; read until its answer, counting message chunks on the way."""
        self._next_id += 1
        ident = self._next_id
        line = request_line(ident, method, params)
        start = time.perf_counter()
        await self._send.send(line)
        updates = received = 0
        first = last = 0.0
        while True:
            data = await self._receive.receive(1 << 16)
            now = time.perf_counter()
            received += len(data)
            for item in self._buffer.feed(data):
                assert isinstance(item, bytes), "oversize line"
                if _MESSAGE_CHUNK in item:
                    if not updates:
                        first = now
                    updates += 1
                    last = now
                    continue
                if b'"method"' in item:
                    continue  # another notification (e.g. available_commands_update)
                msg = msgspec.json.decode(item)
                if msg.get("id") != ident:
                    continue
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                run = Run(updates, received, first - start, last - start, now - start)
                return msg.get("result") or {}, run


@asynccontextmanager
async def spawn_agent(command: Sequence[str]) -> AsyncIterator[RawPeer]:
    """Spawn the agent on stdio; on exit close stdin, wait, kill if it lingers."""
    process = await anyio.open_process(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield RawPeer(process.stdout, process.stdin, process.pid)
    finally:
        with anyio.CancelScope(shield=True):
            await process.stdin.aclose()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


@asynccontextmanager
async def connect(socket_path: str) -> AsyncIterator[RawPeer]:
    """Connect to the proxy's unix socket."""
    stream = await anyio.connect_unix(socket_path)
    async with stream:
        yield RawPeer(stream, stream)


async def open_session(peer: RawPeer) -> str:
    await peer.request("initialize", initialize_params("bench-throughput"))
    result, _ = await peer.request("session/new", {"cwd": CWD, "mcpServers": []})
    return str(result["sessionId"])


async def stream_turn(peer: RawPeer, session_id: str, chunks: int, chunk_size: int) -> Run:
    directive = msgspec.json.encode({"chunks": chunks, "chunk_size": chunk_size}).decode()
    result, run = await peer.request(
        "session/prompt",
        {"sessionId": session_id, "prompt": [{"type": "text", "text": f"fake:{directive}"}]},
    )
    if result.get("stopReason") != "end_turn":
        raise RuntimeError(f"the streaming turn ended with {result!r}")
    if run.updates != chunks + 1:  # the fake agent's summary chunk follows the asked chunks
        raise RuntimeError(f"expected {chunks + 1} message chunks, received {run.updates}")
    meta = proxy_meta(result)
    run.turn = int(meta.get("turn") or 0)
    return run


def recorded(db: str, session_id: str, turn: int | None = None) -> int:
    """agent_message_chunk events stored for a session (one turn), read with sqlite3."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = "SELECT count(*) FROM events WHERE session_id = ?"
        params: tuple[Any, ...] = (session_id,)
        if turn is not None:
            sql += " AND turn = ? AND kind = 'agent_message_chunk'"
            params += (turn,)
        return int(con.execute(sql, params).fetchone()[0])
    finally:
        con.close()


def total_events(db: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        con.close()


# -- report ------------------------------------------------------------------------------------


def render(
    args: argparse.Namespace, runs_a: list[Run], runs_b: list[Run], events: int, db_bytes: int
) -> tuple[str, float, bool]:
    rate_a = statistics.median(r.rate for r in runs_a)
    rate_b = statistics.median(r.rate for r in runs_b)
    ratio = rate_b / rate_a
    all_recorded = all(r.recorded == r.updates for r in runs_b)
    passed = ratio >= GOAL_RATIO and all_recorded and events >= args.chunks
    lines = [
        f'One turn of `fake:{{"chunks": {args.chunks}, "chunk_size": {args.chunk_size}}}` '
        f"(agent `{' '.join(AGENT_ARGS)}`): {args.chunks:,} `agent_message_chunk` of "
        f"{args.chunk_size} B of text (+ the fake agent's summary chunk); one line is "
        f"{runs_a[0].bytes / runs_a[0].updates:,.0f} B on the wire. {len(runs_a)} turns per "
        "scenario, alternating A, B, A, B, ...; one warm agent and one session per scenario.",
        "",
        "| scenario | updates/s median | min | max | first update → answered, s "
        "| MB/s | agent CPU, µs/update | proxy CPU, µs/update |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in (
        ("A: read directly from the agent's stdout pipe", runs_a),
        ("B: through the proxy, recorded to SQLite", runs_b),
    ):
        rates = [r.rate for r in runs]
        proxy_cpu = (
            f"{statistics.median(r.proxy_cpu / r.updates for r in runs) * 1e6:,.1f}"
            if runs is runs_b
            else "—"
        )
        lines.append(
            row(
                [
                    name,
                    f"{statistics.median(rates):,.0f}",
                    f"{min(rates):,.0f}",
                    f"{max(rates):,.0f}",
                    f"{statistics.median(r.stream for r in runs):.2f}",
                    f"{statistics.median(r.bytes / r.stream for r in runs) / 1e6:,.1f}",
                    f"{statistics.median(r.agent_cpu / r.updates for r in runs) * 1e6:,.1f}",
                    proxy_cpu,
                ]
            )
        )
    lines += [
        "",
        f"**Ratio median(B) / median(A) = {ratio:.2f}x** — goal >= {GOAL_RATIO}x: "
        f"**{'PASS' if ratio >= GOAL_RATIO else 'FAIL'}**",
        "",
        "Medians over the turns; CPU is user + system time from `/proc` over the turn (the "
        "proxy's includes its SQLite writer thread), divided by the updates.",
        "",
        "Recorded (sqlite3 on the proxy's database after each B turn): "
        + ", ".join(f"turn {r.turn}: {r.recorded:,} of {r.updates:,}" for r in runs_b)
        + f" `agent_message_chunk` events; the store holds **{events:,} events** in all "
        f"({db_bytes / 1e6:,.1f} MB, database + WAL): "
        f"**{'PASS' if all_recorded and events >= args.chunks else 'FAIL'}**.",
    ]
    return "\n".join(lines) + "\n", ratio, passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("throughput", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="turns per scenario (5)")
    parser.add_argument("--chunks", type=int, default=100_000, help="updates per turn (100000)")
    parser.add_argument("--chunk-size", type=int, default=100, help="text bytes per update (100)")
    args = parse(parser, argv)
    if args.runs < 1 or args.chunks < 1 or args.chunk_size < 1:
        parser.error("--runs, --chunks and --chunk-size must be >= 1")
    return args


def _line(name: str, run: Run) -> str:
    return f"{name} {run.rate:,.0f} updates/s ({run.stream:.2f} s streaming)"


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("throughput")
    agent = agent_command(*AGENT_ARGS)
    runs_a: list[Run] = []
    runs_b: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp:
        async with (
            run_proxy(Path(tmp) / "proxy", agent) as proxy,
            connect(proxy.socket) as peer_b,
            spawn_agent(agent) as peer_a,
        ):
            with anyio.fail_after(SETUP_LIMIT_S):
                session_a = await open_session(peer_a)
                session_b = await open_session(peer_b)
            assert peer_a.pid is not None
            agents_b = children(proxy.pid)  # the session's agent and the warm spare(s)
            for n in range(1, args.runs + 1):
                cpu = stat_cpu_seconds(peer_a.pid)
                with anyio.fail_after(TURN_LIMIT_S):
                    a = await stream_turn(peer_a, session_a, args.chunks, args.chunk_size)
                a.agent_cpu = stat_cpu_seconds(peer_a.pid) - cpu
                runs_a.append(a)
                cpu, cpu_agents = stat_cpu_seconds(proxy.pid), sum(map(stat_cpu_seconds, agents_b))
                with anyio.fail_after(TURN_LIMIT_S):
                    b = await stream_turn(peer_b, session_b, args.chunks, args.chunk_size)
                b.proxy_cpu = stat_cpu_seconds(proxy.pid) - cpu
                b.agent_cpu = sum(map(stat_cpu_seconds, agents_b)) - cpu_agents
                b.recorded = recorded(proxy.db, session_b, b.turn)
                runs_b.append(b)
                print(f"turn {n}/{args.runs}: {_line('A', a)}, {_line('B', b)}", flush=True)
            events = total_events(proxy.db)
            db_size = db_bytes(proxy.db)
    body, _ratio, passed = render(args, runs_a, runs_b, events, db_size)
    header = stamp.header(stamp.load_at_start())
    return report(SECTION_TITLE, header, body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
