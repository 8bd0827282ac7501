"""Benchmark 3: ``session/load`` replay time against the size of the recorded stream.

Run ``python -m bench.replay [--runs N] [--sizes 100,1000,...] [--write BENCHMARKS.md]``.

Set-up (not timed): one SQLite database holds one session per size (100, 1 000, 10 000,
100 000 recorded events by default), written directly through the store API (``open_store``,
``PutSession``, ``AppendEvent``) with payloads shaped like the proxy's own
(``{"sessionId":…,"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text",
"text":…}}}``, 100-200 B each). Each session's ``upstream_session_id`` is a session that a
fake agent (``--state-dir``) created beforehand, so the proxy can restore it with
``session/resume``. ``acp-proxy serve`` is started on that database; one ``session/resume`` per
session makes its agent live. The same bytes the proxy will send (one NDJSON
``session/update`` line per event) are written to a flat file per size.

Timed, per size and run, alternating:

* proxy: a fresh unix-socket connection sends ``initialize`` (not timed), then
  ``session/load``; timed from just before the request is written to the end of its response
  line; the client only appends the received bytes (it counts the ``session/update`` lines
  afterwards, and checks that they are byte for byte the flat file).
* baseline: read the flat file and write it into a unix socket pair whose other end a thread
  reads to the last byte (the least a replay from disk to a socket can cost).

Goal: 10 000 events replayed in < 50 ms (median), and linear growth: the per-event time at
the largest size is at most 1.5x the per-event time at 10 000, judged on the proxy's time on
CPU (all its threads, from /proc/<pid>/task/*/schedstat), which a shared machine's load
distorts far less than wall-clock time (also reported).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    chunk_payload,
    initialize_params,
    int_list,
    ms,
    new_parser,
    parse,
    report,
    request_line,
    row,
    run_main,
    schedstat_cpu_seconds,
)
from store import AppendEvent, PutSession, SessionRecord, open_store

SECTION_TITLE = "## 3. session/load replay time"
GOAL_SIZE = 10_000
GOAL_MS = 50.0
LINEARITY = 1.5
CWD = "/tmp"
BATCH = 10_000  #: AppendEvent ops per store commit while building the database
RUN_LIMIT_S = 120.0
SETUP_LIMIT_S = 600.0
NOTE = b'{"jsonrpc":"2.0","method":"session/update"'
WORDS = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
]


def _text(seq: int) -> str:
    """Deterministic filler of 10-89 characters, so payloads are 100-200 B."""
    length = 10 + (seq * 37) % 80
    out = []
    i = seq
    while sum(len(w) + 1 for w in out) < length:
        out.append(WORDS[i % len(WORDS)])
        i += 3
    return " ".join(out)[:length]


def payload(session_id: str, seq: int) -> bytes:
    return chunk_payload(session_id, _text(seq))


def frame(p: bytes) -> bytes:
    """The line the proxy sends for one replayed event (see Session.replay_to)."""
    return b'{"jsonrpc":"2.0","method":"session/update","params":' + p + b"}\n"


@dataclass
class Sized:
    size: int
    session_id: str
    flat: Path
    payload_bytes: int = 0
    proxy: list[float] = field(default_factory=list)  #: seconds, request -> response
    baseline: list[float] = field(default_factory=list)
    notifications: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  #: the proxy's session.attached ms
    cpu: list[float] = field(default_factory=list)  #: seconds on CPU, every proxy thread


# -- set-up ------------------------------------------------------------------------------------


async def upstream_sessions(state_dir: Path, count: int) -> list[str]:
    """Agent-side sessions the proxy can later ``session/resume`` (fake agent state files)."""
    agent = fake_agent_command("--state-dir", str(state_dir))
    async with AcpClient.spawn(agent) as client:
        await client.initialize()
        return [await client.new_session(CWD) for _ in range(count)]


async def build(
    db: Path, directory: Path, sizes: Sequence[int], upstream: list[str]
) -> list[Sized]:
    out: list[Sized] = []
    now = time.time()
    async with open_store(db) as store:
        for index, size in enumerate(sizes):
            sid = "sess_" + f"{index:02d}{size:030d}"
            record = SessionRecord(
                id=sid,
                cwd=CWD,
                upstream_session_id=upstream[index],
                created_at=now,
                updated_at=now + index,
            )
            await store.commit([PutSession(record)])
            sized = Sized(size, sid, directory / f"flat-{size}.ndjson")
            with sized.flat.open("wb") as flat:
                for start in range(1, size + 1, BATCH):
                    ops = []
                    lines = []
                    for seq in range(start, min(start + BATCH, size + 1)):
                        p = payload(sid, seq)
                        sized.payload_bytes += len(p)
                        ops.append(AppendEvent(sid, seq, 1 + seq // 30, "agent_message_chunk", p))
                        lines.append(frame(p))
                    await store.commit(ops)
                    flat.write(b"".join(lines))
            out.append(sized)
    return out


# -- timed: the proxy --------------------------------------------------------------------------


async def _read_response(stream: anyio.abc.SocketStream, ident: int, data: bytearray) -> float:
    """Append everything received to ``data`` until the answer to ``ident``; returns its time."""
    marker = b'{"jsonrpc":"2.0","id":' + str(ident).encode() + b","
    while True:
        chunk = await stream.receive(1 << 20)
        data += chunk
        if data.endswith(b"\n"):
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            if data.startswith(marker, start):
                now = time.perf_counter()
                if b'"error"' in data[start:]:
                    raise RuntimeError(f"request {ident} failed: {bytes(data[start:])[:500]!r}")
                return now


async def time_load(socket_path: str, session_id: str) -> tuple[float, bytes]:
    """One fresh connection: initialize, then session/load timed; returns (seconds, bytes)."""
    async with await anyio.connect_unix(socket_path) as stream:
        await stream.send(request_line(1, "initialize", initialize_params("bench.replay")))
        await _read_response(stream, 1, bytearray())
        data = bytearray()
        request = request_line(
            2, "session/load", {"sessionId": session_id, "cwd": CWD, "mcpServers": []}
        )
        sent = time.perf_counter()
        await stream.send(request)
        done = await _read_response(stream, 2, data)
    return done - sent, bytes(data)


# -- timed: the baseline -----------------------------------------------------------------------


def baseline(flat: Path) -> float:
    """Read ``flat`` and write it into a socket pair whose other end a thread drains."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    expected = flat.stat().st_size
    got = [0]

    def drain() -> None:
        while got[0] < expected:
            chunk = right.recv(1 << 20)
            if not chunk:
                return
            got[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        start = time.perf_counter()
        with flat.open("rb") as f:
            left.sendall(f.read())
        reader.join(timeout=60)
        elapsed = time.perf_counter() - start
    finally:
        left.close()
        right.close()
    if got[0] != expected:
        raise RuntimeError(f"baseline read {got[0]} of {expected} bytes")
    return elapsed


# -- report ------------------------------------------------------------------------------------


def render(sized: list[Sized], runs: int) -> tuple[str, bool]:
    lines = [
        f"{runs} runs per size and scenario, alternating proxy, baseline, size by size. "
        "Proxy: `session/load` on a live session over a fresh unix-socket connection, from the "
        "request written to the end of the response line (the client only appends the bytes "
        "it receives). Baseline: read the same NDJSON bytes from a flat file and write them "
        "into a unix socket pair drained by a thread.",
        "",
        row(
            [
                "events",
                "bytes sent",
                "proxy median ms",
                "min-max",
                "proxy µs/event",
                "server-side ms",
                "proxy CPU ms",
                "CPU µs/event",
                "baseline median ms",
                "baseline µs/event",
                "proxy / baseline",
            ]
        ),
        row(["---:"] * 11),
    ]
    per_event: dict[int, float] = {}
    cpu_per_event: dict[int, float] = {}
    for s in sized:
        med = statistics.median(s.proxy)
        base = statistics.median(s.baseline)
        per_event[s.size] = med / s.size
        cpu = statistics.median(s.cpu)
        cpu_per_event[s.size] = cpu / s.size
        lines.append(
            row(
                [
                    f"{s.size:,}",
                    f"{statistics.median(s.received):,.0f}",
                    ms(med, 2),
                    f"{ms(min(s.proxy), 2)}-{ms(max(s.proxy), 2)}",
                    f"{med / s.size * 1e6:.2f}",
                    f"{statistics.median(s.server_ms):,.2f}" if s.server_ms else "n/a",
                    ms(cpu, 2),
                    f"{cpu / s.size * 1e6:.2f}",
                    ms(base, 2),
                    f"{base / s.size * 1e6:.3f}",
                    f"{med / base:.1f}x",
                ]
            )
        )
    counts_ok = all(min(s.notifications) >= s.size for s in sized)
    goal_ms = None
    passed = counts_ok
    verdicts = []
    by_size = {s.size: s for s in sized}
    if GOAL_SIZE in by_size:
        goal_ms = statistics.median(by_size[GOAL_SIZE].proxy) * 1000
        ok = goal_ms < GOAL_MS
        passed &= ok
        verdicts.append(
            f"{GOAL_SIZE:,} events in {goal_ms:,.1f} ms (goal < {GOAL_MS:.0f} ms): "
            f"**{'PASS' if ok else 'FAIL'}**"
        )
    largest = max(by_size)
    if GOAL_SIZE in by_size and largest > GOAL_SIZE:
        ratio = cpu_per_event[largest] / cpu_per_event[GOAL_SIZE]
        wall_ratio = per_event[largest] / per_event[GOAL_SIZE]
        ok = ratio <= LINEARITY
        passed &= ok
        verdicts.append(
            f"linear growth: per-event proxy CPU time at {largest:,} / at {GOAL_SIZE:,} = "
            f"{ratio:.2f} (goal <= {LINEARITY}): **{'PASS' if ok else 'FAIL'}** (the same "
            f"ratio of wall-clock times, not judged: {wall_ratio:.2f})"
        )
    lines += [
        "",
        '"server-side ms" is the proxy\'s own `session.attached` log line: request handled '
        'to response queued (store read + framing), without the socket transfer. "proxy CPU '
        'ms": time on CPU of every thread of the proxy process during the load (schedstat), '
        "which a busy shared machine inflates much less than wall-clock time: linear growth is "
        "judged on it. Sizes run in ascending order, so the smallest size's load comes right "
        "after the largest one of the previous run. Every load delivered every recorded "
        f"event, byte for byte: **{'yes' if counts_ok else 'NO'}**.",
        "",
        *(f"- {v}" for v in verdicts),
        "",
        f"Goal: **{'PASS' if passed else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("replay", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per size and scenario (5)")
    parser.add_argument(
        "--sizes",
        type=int_list,
        default="100,1000,10000,100000",
        help="comma-separated event counts (100,1000,10000,100000)",
    )
    args = parse(parser, argv)
    if args.runs < 1 or not args.sizes or min(args.sizes) < 1:
        parser.error("--runs and every size must be >= 1")
    return args


def _attached_ms(proxy: ProxyHandle) -> list[float]:
    return [
        float(e["ms"])
        for e in proxy.logs()
        if e.get("event") == "session.attached" and e.get("replay") is True
    ]


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("replay")
    with tempfile.TemporaryDirectory(prefix="acpb-") as tmp:
        base = Path(tmp)
        state = base / "state"
        with anyio.fail_after(SETUP_LIMIT_S):
            upstream = await upstream_sessions(state, len(args.sizes))
            started = time.perf_counter()
            sized = await build(base / "replay.db", base, args.sizes, upstream)
            print(
                f"built {sum(args.sizes):,} events in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        agent = fake_agent_command("--state-dir", str(state))
        async with run_proxy(base / "p", agent, db=str(base / "replay.db")) as proxy:
            with anyio.fail_after(SETUP_LIMIT_S):
                async with AcpClient.connect(proxy.socket) as client:
                    await client.initialize()
                    for s in sized:
                        params = {"sessionId": s.session_id, "cwd": CWD, "mcpServers": []}
                        (await client.request("session/resume", params)).unwrap("session/resume")
            for n in range(1, args.runs + 1):
                for s in sized:
                    flat = s.flat.read_bytes()
                    with anyio.fail_after(RUN_LIMIT_S):
                        before = len(_attached_ms(proxy))
                        cpu_before = schedstat_cpu_seconds(proxy.pid)
                        seconds, data = await time_load(proxy.socket, s.session_id)
                        s.cpu.append(schedstat_cpu_seconds(proxy.pid) - cpu_before)
                    if not data.startswith(flat):
                        raise RuntimeError(f"replay of {s.size} events differs from the record")
                    s.proxy.append(seconds)
                    s.received.append(len(data))
                    s.notifications.append(data.count(NOTE))
                    with anyio.fail_after(RUN_LIMIT_S):
                        s.baseline.append(await anyio.to_thread.run_sync(baseline, s.flat))
                    # the log line is written right after the response is queued
                    for _ in range(100):
                        server = _attached_ms(proxy)
                        if len(server) > before:
                            s.server_ms.append(server[-1])
                            break
                        await anyio.sleep(0.01)
                    print(
                        f"run {n}/{args.runs} {s.size:>7,} events: proxy {ms(seconds, 2)} ms "
                        f"(CPU {ms(s.cpu[-1], 2)} ms, {s.notifications[-1]:,} notifications), "
                        "baseline "
                        f"{ms(s.baseline[-1], 2)} ms",
                        flush=True,
                    )
    body, passed = render(sized, args.runs)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
