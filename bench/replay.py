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
import os
import re
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from bench.continued_turn import INTRO, machine
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
    return msgspec.json.encode(
        {
            "sessionId": session_id,
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": _text(seq)},
            },
        }
    )


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


def _encode(ident: int, method: str, params: object) -> bytes:
    msg = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
    return msgspec.json.encode(msg) + b"\n"


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
        init = {
            "protocolVersion": 1,
            "clientCapabilities": {"fs": {"readTextFile": False}, "terminal": False},
            "clientInfo": {"name": "bench.replay", "version": "0"},
        }
        await stream.send(_encode(1, "initialize", init))
        await _read_response(stream, 1, bytearray())
        data = bytearray()
        request = _encode(
            2, "session/load", {"sessionId": session_id, "cwd": CWD, "mcpServers": []}
        )
        sent = time.perf_counter()
        await stream.send(request)
        done = await _read_response(stream, 2, data)
    return done - sent, bytes(data)


def cpu_seconds(pid: int) -> float:
    """Time on CPU of every thread of ``pid`` (schedstat, ns), in seconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


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


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def render(sized: list[Sized], runs: int) -> tuple[str, bool]:
    lines = [
        f"{runs} runs per size and scenario, alternating proxy, baseline, size by size. "
        "Proxy: `session/load` on a live session over a fresh unix-socket connection, from the "
        "request written to the end of the response line (the client only appends the bytes "
        "it receives). Baseline: read the same NDJSON bytes from a flat file and write them "
        "into a unix socket pair drained by a thread.",
        "",
        _row(
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
        _row(["---:"] * 11),
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
            _row(
                [
                    f"{s.size:,}",
                    f"{statistics.median(s.received):,.0f}",
                    _ms(med),
                    f"{_ms(min(s.proxy))}-{_ms(max(s.proxy))}",
                    f"{med / s.size * 1e6:.2f}",
                    f"{statistics.median(s.server_ms):,.2f}" if s.server_ms else "n/a",
                    _ms(cpu),
                    f"{cpu / s.size * 1e6:.2f}",
                    _ms(base),
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


def command_line() -> str:
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, "-m", "bench.replay", *sys.argv[1:]])


def write_section(path: Path, title: str, body: str) -> None:
    """Write or replace the section ``title``; keep every other section as it is."""
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = INTRO
    section = f"{title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per size and scenario (5)")
    parser.add_argument(
        "--sizes",
        default="100,1000,10000,100000",
        help="comma-separated event counts (100,1000,10000,100000)",
    )
    parser.add_argument("--write", metavar="PATH", help="write/replace the section in PATH")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
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
    command = command_line()
    date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    load = os.getloadavg()[0]
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
                        cpu_before = cpu_seconds(proxy.pid)
                        seconds, data = await time_load(proxy.socket, s.session_id)
                        s.cpu.append(cpu_seconds(proxy.pid) - cpu_before)
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
                        f"run {n}/{args.runs} {s.size:>7,} events: proxy {_ms(seconds)} ms "
                        f"(CPU {_ms(s.cpu[-1])} ms, {s.notifications[-1]:,} notifications), "
                        "baseline "
                        f"{_ms(s.baseline[-1])} ms",
                        flush=True,
                    )
    body, passed = render(sized, args.runs)
    header = (
        f"Date: {date}  \nMachine: {machine()} (load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end)  \nCommand: `{command}`\n"
    )
    print()
    print(SECTION_TITLE)
    print()
    print(header)
    print(body)
    if args.write:
        write_section(Path(args.write), SECTION_TITLE, header + "\n" + body)
        print(f"wrote section to {args.write}")
    return 0 if passed else 1


def _entry() -> None:
    sys.exit(anyio.run(main, backend="asyncio"))


if __name__ == "__main__":
    _entry()
