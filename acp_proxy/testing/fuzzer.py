"""An adversarial client: random, mostly wrong frames against a running proxy, then checks.

Used by ``tests/security/test_fuzz.py`` (a few thousand frames) and by the campaign
``python -m bench.fuzz_campaign`` (50,000+ frames, fixed seed). Frames are JSON-RPC messages
built from the ACP methods with random params aimed at real session ids, then sometimes
poisoned: truncated, invalid UTF-8 inside a string, nested hundreds deep, binary garbage, a
batch array, CRLF, a line over the proxy's limit, a response to nothing. Every frame that is
a well-formed request with a unique id must be answered with that id; every line the proxy
sends must be JSON; after the campaign every session the frames touched is restored into a new
agent (``session/close``, then a prompt) and must answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import SocketStream

from ..protocol import LineBuffer, Oversize
from .client import AcpClient

__all__ = ["Frames", "FuzzReport", "run_campaign"]

METHODS: Final = (
    "initialize", "session/load", "session/resume", "session/prompt", "session/prompt",
    "session/prompt", "session/cancel", "session/set_mode", "session/set_config_option",
    "session/set_model", "session/list", "session/close", "session/delete", "_fake/state",
    "_x/ext", "$/cancel_request", "no/such", "session/new", "authenticate",
)  # fmt: skip
KEYS: Final = (
    "sessionId", "cwd", "mcpServers", "prompt", "requestId", "modeId", "configId", "value",
    "cursor", "_meta", "additionalDirectories", "methodId",
)  # fmt: skip
#: Per connection, valid session/new frames: each starts an agent (~0.2 s of CPU).
MAX_NEW_SESSIONS: Final = 3
#: Per connection, authenticate frames: each may hold or start an agent.
MAX_AUTHENTICATES: Final = 4
#: Nesting the proxy's JSON decoder still reads the id of (-32602 with the id; deeper: -32700).
DECODABLE_DEPTH: Final = 900
#: How long answers are waited for once every frame is sent.
ANSWER_DEADLINE_S: Final = 120.0


@dataclass
class FuzzReport:
    """What a campaign saw."""

    frames: int = 0
    requests_expecting_answer: int = 0
    answered: int = 0
    unanswered: list[Any] = field(default_factory=list)
    #: the first bytes of each unanswered frame, for the report
    unanswered_frames: list[bytes] = field(default_factory=list)
    lines_received: int = 0
    non_json_lines: int = 0
    disconnects: int = 0
    touched_sessions: set[str] = field(default_factory=set)
    restored: int = 0
    restore_failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)


class Frames:
    """The frame generator (deterministic for a seed)."""

    def __init__(
        self, rng: random.Random, sessions: Sequence[str], cwd: str, big: int, closes: int = 0
    ) -> None:
        self.rng = rng
        self.sessions = list(sessions)
        self.cwd = cwd
        self.big = big  # bytes of an over-limit line
        self.new_sessions = 0
        self.authenticates = 0
        self.closes = 0
        #: session/close frames for a real session (its next use restores it) still allowed
        self.max_closes = closes

    def _sid(self) -> str:
        rng = self.rng
        if rng.random() < 0.85:
            return rng.choice(self.sessions)
        return rng.choice(["sess_" + "0" * 32, "", "x", "sess_" + "f" * 31])

    def _value(self, depth: int = 0) -> Any:
        rng = self.rng
        choices: list[Any] = [
            None, True, 0, -1, 2**70, 1.5, "", "x", "/tmp", "relative", self._sid(),
            "\u2028", "\U0001f600", [], {},
        ]  # fmt: skip
        if depth < 3:
            choices += [
                [self._value(depth + 1) for _ in range(rng.randint(0, 3))],
                {rng.choice(KEYS): self._value(depth + 1) for _ in range(rng.randint(0, 3))},
            ]
        return rng.choice(choices)

    def _params(self, method: str) -> Any:
        rng = self.rng
        sid = self._sid()
        if method == "session/prompt" and rng.random() < 0.8:
            text = rng.choice(["hello", "é ü \u2028", "x" * rng.randint(0, 200), ""])
            return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}
        if method in ("session/load", "session/resume") and rng.random() < 0.7:
            return {"sessionId": sid, "cwd": self.cwd, "mcpServers": []}
        if method == "session/new":
            if self.new_sessions < MAX_NEW_SESSIONS and rng.random() < 0.05:
                self.new_sessions += 1
                return {"cwd": self.cwd, "mcpServers": []}
            return {"cwd": rng.choice(["relative", "", "/nonexistent/dir", 5])}
        if method == "session/delete":
            return {"sessionId": "sess_" + "0" * 32}  # never a session under test
        if method == "authenticate":
            if self.authenticates < MAX_AUTHENTICATES:
                self.authenticates += 1
                return {"methodId": rng.choice(["api-key", "reject"])}
            return {"methodId": 5}
        if method == "session/close":
            # A real close makes the next use restore (an agent start): a few per run.
            if self.closes < self.max_closes and rng.random() < 0.1:
                self.closes += 1
                return {"sessionId": sid}
            return {"sessionId": rng.choice(["sess_" + "0" * 32, 7, ""])}
        params = {k: self._value() for k in rng.sample(KEYS, rng.randint(0, 4))}
        if "sessionId" in params or rng.random() < 0.7:
            params["sessionId"] = sid
        return params if rng.random() < 0.95 else self._value()

    def next(self, ident: int | str) -> tuple[bytes, bool, str]:
        """One frame: (line with its newline, whether it must be answered with ``ident``,
        the kind of frame)."""
        rng = self.rng
        method = rng.choice(METHODS)
        if method in ("session/new", "authenticate") and rng.random() < 0.8:
            method = "session/list"  # keep agent starts rare
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        notification = method in ("session/cancel", "$/cancel_request") and rng.random() < 0.8
        if not notification:
            msg["id"] = ident
        msg["params"] = self._params(method)
        if method == "$/cancel_request":
            msg["params"] = {"requestId": rng.choice([ident, 1, "x", None])}
        answerable = not notification and isinstance(msg["params"], dict | list)
        line = json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode()
        roll = rng.random()
        kind = "request" if answerable else "notification" if notification else "bad_params"
        if roll < 0.03:
            line, answerable, kind = line[: rng.randint(0, len(line))], False, "truncated"
        elif roll < 0.06:
            line = line.replace(b'"2.0"', b'"2.0","pad":"\xff\xfe\xc3"', 1)
            answerable, kind = False, "invalid_utf8"
        elif roll < 0.08 and answerable and not notification:
            depth = rng.randint(129, 1500)
            line = line[:-1] + b',"_meta":' + b"[" * depth + b"]" * depth + b"}"
            # Past what the JSON decoder walks (~1000 levels) the id cannot be read: the
            # answer is a parse error with id null, as JSON-RPC says.
            answerable, kind = depth <= DECODABLE_DEPTH, "deep"
        elif roll < 0.10:
            line, answerable, kind = rng.randbytes(rng.randint(1, 200)), False, "garbage"
        elif roll < 0.11:
            line, answerable, kind = b"[" + line + b"," + line + b"]", False, "batch"
        elif roll < 0.12:
            line = b'{"jsonrpc":"2.0","id":%d,"result":{}}' % rng.randint(1, 10**6)
            answerable, kind = False, "stray_response"
        elif roll < 0.1202:
            line, answerable, kind = b'{"pad":"' + b"a" * self.big + b'"}', False, "oversize"
        elif roll < 0.13:
            line, kind = line + b"\r", kind + "+crlf"
        line = line.replace(b"\n", b" ")
        return line + b"\n", answerable, kind


async def _read(stream: SocketStream, report: FuzzReport, answered: set[Any]) -> None:
    buffer = LineBuffer(1 << 30)
    try:
        async for data in stream:
            for line in buffer.feed(data):
                if isinstance(line, Oversize):
                    continue
                report.lines_received += 1
                try:
                    message = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    report.non_json_lines += 1
                    continue
                if not isinstance(message, dict) or "method" in message:
                    continue
                ident = message.get("id")
                if isinstance(ident, int | str):
                    answered.add(ident)
                result = message.get("result")
                if isinstance(result, dict) and isinstance(result.get("sessionId"), str):
                    report.touched_sessions.add(result["sessionId"])
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    report.disconnects += 1


async def _connection(
    socket_path: str, frames: Frames, number: int, count: int, report: FuzzReport
) -> None:
    expected: set[Any] = set()
    sent: dict[Any, bytes] = {}
    answered: set[Any] = set()
    stream = await anyio.connect_unix(socket_path)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(_read, stream, report, answered)
        for n in range(count):
            ident: int | str = n if n % 2 else f"c{number}-{n}"
            line, answerable, kind = frames.next(ident)
            report.frames += 1
            report.kinds[kind] = report.kinds.get(kind, 0) + 1
            if answerable:
                expected.add(ident)
                sent[ident] = line[:300]
            await stream.send(line)
            if n % 64 == 0:
                await anyio.lowlevel.checkpoint()  # let the reader keep up
        with anyio.move_on_after(ANSWER_DEADLINE_S):
            while expected - answered:  # noqa: ASYNC110 (bounded by the deadline above)
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    report.requests_expecting_answer += len(expected)
    report.answered += len(expected & answered)
    missing = sorted(expected - answered, key=str)
    report.unanswered += [str(ident) for ident in missing][:20]
    report.unanswered_frames += [sent[ident] for ident in missing][:20]


async def _restore_all(socket_path: str, cwd: str, report: FuzzReport) -> None:
    """Each touched session: its agent closed, then a prompt must restore and answer it."""
    async with AcpClient.connect(socket_path) as c:
        await c.initialize()
        for sid in sorted(report.touched_sessions):
            with anyio.fail_after(60):
                await c.request("session/close", {"sessionId": sid})
                reply = await c.prompt(sid, "are you still there?")
                loaded = await c.request(
                    "session/load", {"sessionId": sid, "cwd": cwd, "mcpServers": []}
                )
            if reply.error is None and loaded.error is None:
                report.restored += 1
            else:
                report.restore_failures.append(f"{sid}: {reply.error or loaded.error}")


async def run_campaign(
    socket_path: str,
    cwd: str,
    *,
    frames: int,
    seed: int,
    connections: int = 4,
    big_line: int = 300_000,
    closes: int = 0,
) -> FuzzReport:
    """Create ``connections`` sessions, send ``frames`` fuzzed frames over as many
    connections at once, wait for every answer, then restore every session touched.

    ``closes``: per connection, how many ``session/close`` frames may name a real session
    (each makes the session's next use a restore, racing the other connections' frames).
    """
    report = FuzzReport()
    async with AcpClient.connect(socket_path) as setup:
        await setup.initialize()
        sessions = [await setup.new_session(cwd) for _ in range(connections)]
    report.touched_sessions.update(sessions)
    generators = [
        Frames(random.Random(f"{seed}-{n}"), sessions, cwd, big_line, closes)
        for n in range(connections)
    ]
    per = frames // connections
    async with anyio.create_task_group() as tg:
        for n, generator in enumerate(generators):
            tg.start_soon(_connection, socket_path, generator, n, per, report)
    await _restore_all(socket_path, cwd, report)
    return report
