"""A real stdio ACP agent with scripted, knob-controlled behaviour (for tests, demo and benchmarks).

Run it as ``python -m acp_proxy.testing.fake_agent [options]``. It speaks ACP v1: newline-delimited
JSON-RPC 2.0 on stdin/stdout (one compact JSON object per line, nothing else on stdout; diagnostics
go to stderr). Requests are handled concurrently, the output of one turn is strictly ordered, and
the process exits 0 as soon as stdin reaches EOF (running turns are abandoned, not finished).

Process knobs (command line; those marked * are per-turn defaults, see below):
  --startup-delay S        sleep S seconds at start, before reading stdin (0)
  --session-init-delay S   delay of session/new, session/load and session/resume (0)
  --first-token-delay S  * delay between receiving a prompt and its first update (0)
  --chunk-delay S        * delay between two consecutive session/update of a turn (0)
  --chunks N             * agent_message_chunk count, besides the final summary chunk (3)
  --chunk-size B         * bytes of filler text per thought/message chunk (24)
  --thoughts N           * agent_thought_chunk count, sent before the message chunks (1)
  --tool-calls N         * fake "read" tool calls: tool_call, in_progress, completed (1)
  --plan                 * emit a 2-entry ``plan`` update at the start of the turn
  --permission           * ask session/request_permission before each tool call
  --fs-read PATH         * ask the client fs/read_text_file PATH during the turn
  --crash-after N        * os._exit(3) after N session/update notifications of a turn
  --hang                 * send the updates, then never finish the turn until cancelled
  --no-load / --no-resume  do not advertise loadSession / sessionCapabilities.resume
  --exit-at-start CODE     print one stderr line and exit with CODE at once
  --stderr-lines N         write N log lines to stderr at startup (0)
  --state-dir DIR          persist sessions as DIR/<sessionId>.json (after session/new and every
                           turn) so another process can session/load or session/resume them

Per-turn overrides: when the first prompt block is a text block ``fake:{json object}`` (trailing
text allowed), its keys override the * knobs for that turn: chunks, chunk_size, thoughts,
tool_calls, plan, permission, fs_read, crash_after, hang, first_token_delay, chunk_delay, and
``text``, which replaces the filler of the message chunks (split into ``chunks`` pieces). The
key ``script`` (an array of SessionUpdate objects) makes the turn emit those updates verbatim, in
order, instead of its plan, thoughts, tool calls and message chunks; the summary chunk follows.
The block still counts as the user's message. Unknown keys or bad values answer -32602.

Turn sequence: plan? -> thoughts -> per tool call [permission request?, tool_call, updates] -> fs
request? -> message chunks -> (hang?) -> summary chunk -> ``{"stopReason":"end_turn","usage":...}``.
The summary reads ``[fake] turn {n}; context holds {k} earlier turns; mode=..; model=..; pid=..;
last user message: ..`` plus ``; permission=selected:once`` (one outcome per tool call, joined by
``,``; ``selected:once|always`` allows, any other answer fails the call) and ``; fs=ok:<20 chars>``
or ``; fs=error:<code>``. Cancelled turns (session/cancel, ``$/cancel_request`` for the prompt id,
or a ``cancelled`` permission outcome) answer ``{"stopReason":"cancelled"}``, send
``$/cancel_request`` for their unanswered requests to the client, and are not recorded in history.

A prompt whose first block is acp-proxy's ``<acp-proxy:history …>`` seed (the last rung of its
restore ladder) gives a new session its earlier turns: one per user message in the block.

Extension: ``_fake/state {sessionId?}`` -> ``{pid, initializeCount, sessions: {id: {turns, cwd,
mode, model, running, boundWith}}, env: {FAKE_*, OPEN_DESIGN_* variables}, envNames: [every
variable name], authenticated: [params of each authenticate call]}``; ``boundWith`` holds
the ``mcpServers``/``additionalDirectories`` of the last new/load/resume in this process.
``authenticate`` answers ``{}`` and records its params (``methodId: "reject"`` is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import secrets
import stat
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
REQUEST_CANCELLED: Final = -32800
NOT_FOUND: Final = -32002

#: Lines can be multi-MB (images, embedded resources); asyncio's default limit is 64 KiB.
LINE_LIMIT: Final = 64 * 1024 * 1024
FILLER: Final = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
MODES: Final = [{"id": "build", "name": "Build"}, {"id": "plan", "name": "Plan"}]
MODELS: Final = [
    {"value": "fake/echo-1", "name": "Echo 1"},
    {"value": "fake/echo-2", "name": "Echo 2"},
]
PERMISSION_OPTIONS: Final = [
    {"optionId": "once", "name": "Allow once", "kind": "allow_once"},
    {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
]
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class RpcError(Exception):
    """An error answered to the peer as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class TurnCancelled(Exception):
    """The client answered a permission request with outcome ``cancelled``."""


@dataclasses.dataclass
class Knobs:
    """Per-turn behaviour; the command line gives the defaults, ``fake:{...}`` overrides them."""

    chunks: int = 3
    chunk_size: int = 24
    thoughts: int = 1
    tool_calls: int = 1
    plan: bool = False
    permission: bool = False
    fs_read: str | None = None
    crash_after: int | None = None
    hang: bool = False
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    text: str | None = None
    script: list[dict[str, Any]] | None = None

    def override(self, directive: dict[str, Any]) -> Knobs:
        """Return a copy with ``directive``'s keys applied (RpcError -32602 on a bad key/value)."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for key, value in directive.items():
            kind = types.get(key)
            ok = (
                (kind == "int" and type(value) is int and value >= 0)
                or (kind == "float" and type(value) in (int, float) and value >= 0)
                or (kind == "bool" and type(value) is bool)
                or (kind == "str | None" and (value is None or isinstance(value, str)))
                or (kind == "int | None" and (value is None or (type(value) is int and value >= 0)))
                or (
                    kind == "list[dict[str, Any]] | None"
                    and (
                        value is None
                        or (type(value) is list and all(type(u) is dict for u in value))
                    )
                )
            )
            if not ok:
                raise RpcError(INVALID_PARAMS, f"bad fake directive {key}={value!r}")
            values[key] = value
        return dataclasses.replace(self, **values)


@dataclasses.dataclass
class Session:
    """One conversation: its settings and the completed turns (user text + summary)."""

    id: str
    cwd: str
    mode: str = "build"
    model: str = "fake/echo-1"
    turns: list[dict[str, str]] = dataclasses.field(default_factory=list)
    turn: Turn | None = None
    #: what the last new/load/resume of this process gave (observable via _fake/state)
    bound_with: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessionId": self.id,
            "cwd": self.cwd,
            "mode": self.mode,
            "model": self.model,
            "turns": self.turns,
        }

    def setup(self) -> dict[str, Any]:
        """The ``modes`` + ``configOptions`` part of new/load/resume responses."""
        return {
            "modes": {"currentModeId": self.mode, "availableModes": MODES},
            "configOptions": [
                {
                    "id": "model",
                    "name": "Model",
                    "category": "model",
                    "type": "select",
                    "currentValue": self.model,
                    "options": MODELS,
                }
            ],
        }


def _filler(offset: int, size: int) -> str:
    # Linear in ``size`` whatever the offset (chunk 100 000 must not cost more than chunk 1).
    start = offset % len(FILLER)
    return (FILLER * (size // len(FILLER) + 2))[start : start + size]


def _tokens(text: str) -> int:
    return max(1, len(text.encode()) // 4)


def _sid(params: dict[str, Any]) -> str:
    sid = params.get("sessionId")
    return sid if isinstance(sid, str) else ""


def _describe(block: Any) -> str:
    if not isinstance(block, dict):
        return "[?]"
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "resource_link":
        return f"[resource_link {block.get('uri')}]"
    if kind == "resource":
        return f"[resource {(block.get('resource') or {}).get('uri')}]"
    return f"[{kind}]"


def _binding(params: dict[str, Any]) -> dict[str, Any]:
    """The session/new|load|resume params that tie a session to a place and tools."""
    return {k: params[k] for k in ("mcpServers", "additionalDirectories") if k in params}


def _is_seed(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and str(block.get("text", "")).startswith("<acp-proxy:history")
    )


def _turns_from_seed(text: str) -> list[dict[str, Any]]:
    """Earlier turns from acp-proxy's history block: one per user message."""
    turns: list[dict[str, Any]] = []
    previous = ""
    for line in text.split("\n")[2:-1]:
        update = json.loads(line)
        kind = update.get("sessionUpdate")
        content = update.get("content") or {}
        if kind == "user_message_chunk":
            if previous != "user_message_chunk":
                turns.append({"user": "", "summary": "", "seeded": True})
            turns[-1]["user"] += _describe(content)
        elif kind == "agent_message_chunk" and turns:
            turns[-1]["summary"] = content.get("text", "")
        previous = kind
    return turns


class Turn:
    """One ``session/prompt``: emits its updates in order and produces the prompt's result."""

    def __init__(self, agent: Agent, session: Session, knobs: Knobs, prompt: list[Any]) -> None:
        self.agent, self.session, self.knobs = agent, session, knobs
        self.user_text = " ".join(_describe(b) for b in prompt)
        self.number = len(session.turns) + 1
        self.message_id = "msg_" + secrets.token_hex(8)
        self.sent = 0  # session/update notifications sent so far
        self.out_bytes = 0
        self.notes: list[str] = []
        self.pending: set[int] = set()  # ids of our requests to the client still unanswered
        self.cancelled = False
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        """Stop the turn as soon as possible; it will answer ``stopReason: cancelled``."""
        if self.cancelled:
            return
        self.cancelled = True
        for rid in sorted(self.pending):
            self.agent.forget_call(rid)
            self.agent.notify("$/cancel_request", {"requestId": rid})
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> dict[str, Any]:
        self.task = asyncio.current_task()
        try:
            if self.cancelled:
                raise asyncio.CancelledError
            await self._body()
        except asyncio.CancelledError:
            if not self.cancelled or self.task is None:
                raise
            self.task.uncancel()
            return {"stopReason": "cancelled"}
        except TurnCancelled:
            return {"stopReason": "cancelled"}
        return self._finish()

    async def _body(self) -> None:
        k = self.knobs
        self._maybe_crash()
        if k.first_token_delay > 0:
            await asyncio.sleep(k.first_token_delay)
        if k.script is not None:
            # Given updates, sent as they are instead of plan, thoughts, tool calls and chunks.
            for update in k.script:
                await self.emit(update)
            k = dataclasses.replace(k, plan=False, thoughts=0, tool_calls=0, chunks=0, text=None)
        if k.plan:
            await self.emit(
                {
                    "sessionUpdate": "plan",
                    "entries": [
                        {"content": "Read the files", "priority": "high", "status": "in_progress"},
                        {"content": "Write the answer", "priority": "medium", "status": "pending"},
                    ],
                }
            )
        for i in range(k.thoughts):
            thought = _filler(i * k.chunk_size, k.chunk_size)
            await self.emit(self._chunk("agent_thought_chunk", thought))
        for i in range(1, k.tool_calls + 1):
            await self._tool_call(i)
        if k.fs_read is not None:
            reply = await self.call(
                "fs/read_text_file", {"sessionId": self.session.id, "path": k.fs_read}
            )
            if "error" in reply:
                self.notes.append(f"fs=error:{(reply['error'] or {}).get('code')}")
            else:
                content = (reply.get("result") or {}).get("content")
                self.notes.append(f"fs=ok:{str(content)[:20]}")
        if k.text is not None:
            n = max(1, min(k.chunks, len(k.text))) if k.text else 0
            pieces = [k.text[len(k.text) * j // n : len(k.text) * (j + 1) // n] for j in range(n)]
        else:
            pieces = [_filler(j * k.chunk_size, k.chunk_size) for j in range(k.chunks)]
        for piece in pieces:
            await self.emit(self._chunk("agent_message_chunk", piece))
        if k.hang:
            await asyncio.Future()  # only a cancel gets us out of here
        await self.emit(self._chunk("agent_message_chunk", self.summary()))

    async def _tool_call(self, i: int) -> None:
        call_id, path = f"call_{self.number}_{i}", f"/tmp/fake-{i}"
        title = f"Read {path}"
        allowed = True
        if self.knobs.permission:
            reply = await self.call(
                "session/request_permission",
                {
                    "sessionId": self.session.id,
                    "options": PERMISSION_OPTIONS,
                    "toolCall": {
                        "toolCallId": call_id,
                        "title": title,
                        "kind": "read",
                        "status": "pending",
                    },
                },
            )
            outcome = (reply.get("result") or {}).get("outcome") or {}
            if "error" in reply:
                note, allowed = f"error:{(reply['error'] or {}).get('code')}", False
            elif outcome.get("outcome") == "cancelled":
                raise TurnCancelled
            elif outcome.get("outcome") == "selected":
                note = f"selected:{outcome.get('optionId')}"
                allowed = outcome.get("optionId") in ("once", "always")
            else:
                note, allowed = "invalid", False
            self.notes.append(f"permission={note}")
        await self.emit(
            {
                "sessionUpdate": "tool_call",
                "toolCallId": call_id,
                "title": title,
                "kind": "read",
                "status": "pending",
                "locations": [{"path": path}],
                "rawInput": {"path": path},
            }
        )
        if not allowed:
            await self.emit(
                {
                    "sessionUpdate": "tool_call_update",
                    "toolCallId": call_id,
                    "status": "failed",
                    "content": [self._text_content("permission denied")],
                }
            )
            return
        await self.emit(
            {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": "in_progress"}
        )
        output = f"contents of {path}"
        await self.emit(
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": call_id,
                "status": "completed",
                "content": [self._text_content(output)],
                "rawOutput": {"output": output},
            }
        )

    def summary(self) -> str:
        s = self.session
        text = (
            f"[fake] turn {self.number}; context holds {len(s.turns)} earlier turns; "
            f"mode={s.mode}; model={s.model}; pid={os.getpid()}; "
            f"last user message: {self.user_text[:200]}"
        )
        perms = [n.removeprefix("permission=") for n in self.notes if n.startswith("permission=")]
        if perms:
            text += "; permission=" + ",".join(perms)
        return text + "".join("; " + n for n in self.notes if n.startswith("fs="))

    def _finish(self) -> dict[str, Any]:
        s = self.session
        inputs = _tokens(self.user_text) + sum(
            _tokens(t["user"]) + _tokens(t["summary"]) for t in s.turns
        )
        outputs = max(1, self.out_bytes // 4)
        s.turns.append(
            {
                "user": self.user_text,
                "summary": self.summary(),
                "userMessageId": "msg_u" + secrets.token_hex(8),
                "messageId": self.message_id,
            }
        )
        self.agent.save(s)
        return {
            "stopReason": "end_turn",
            "usage": {
                "inputTokens": inputs,
                "outputTokens": outputs,
                "totalTokens": inputs + outputs,
            },
        }

    def _chunk(self, kind: str, text: str) -> dict[str, Any]:
        self.out_bytes += len(text.encode())
        return {
            "sessionUpdate": kind,
            "messageId": self.message_id,
            "content": {"type": "text", "text": text},
        }

    @staticmethod
    def _text_content(text: str) -> dict[str, Any]:
        return {"type": "content", "content": {"type": "text", "text": text}}

    async def emit(self, update: dict[str, Any]) -> None:
        """Send one update (after ``chunk_delay`` unless it is the first) and check crash_after."""
        if self.sent and self.knobs.chunk_delay > 0:
            await asyncio.sleep(self.knobs.chunk_delay)
        else:
            await asyncio.sleep(0)  # a cancel point, so that session/cancel is seen promptly
        self.agent.notify("session/update", {"sessionId": self.session.id, "update": update})
        self.sent += 1
        self._maybe_crash()

    def _maybe_crash(self) -> None:
        if self.knobs.crash_after is not None and self.sent >= self.knobs.crash_after:
            sys.stderr.write(f"fake-agent: crashing after {self.sent} updates as asked\n")
            sys.stderr.flush()
            os._exit(3)

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request to the client on behalf of this turn and wait for its response."""
        rid, future = self.agent.start_call(method, params)
        self.pending.add(rid)
        try:
            return await future
        finally:
            self.pending.discard(rid)


Handler = Callable[[dict[str, Any], Any], Awaitable[Any]]


class Agent:
    """The JSON-RPC endpoint: reads stdin, dispatches, writes stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.knobs = Knobs(
            chunks=args.chunks,
            chunk_size=args.chunk_size,
            thoughts=args.thoughts,
            tool_calls=args.tool_calls,
            plan=args.plan,
            permission=args.permission,
            fs_read=args.fs_read,
            crash_after=args.crash_after,
            hang=args.hang,
            first_token_delay=args.first_token_delay,
            chunk_delay=args.chunk_delay,
        )
        self.sessions: dict[str, Session] = {}
        self.initialize_count = 0
        self.authenticated: list[Any] = []
        self.next_id = 0
        self.calls: dict[str, asyncio.Future[dict[str, Any]]] = {}  # our requests, by str(id)
        self.inflight: dict[Any, asyncio.Task[None]] = {}  # client requests being handled
        self.turns: dict[Any, Turn] = {}  # running turns by prompt request id
        self.out = sys.stdout.buffer
        self.handlers: dict[str, Handler] = {
            "initialize": self.initialize,
            "authenticate": self.authenticate,
            "session/new": self.session_new,
            "session/load": self.session_load,
            "session/resume": self.session_resume,
            "session/close": self.session_close,
            "session/list": self.session_list,
            "session/set_mode": self.set_mode,
            "session/set_config_option": self.set_config,
            "session/set_model": self.set_model,
            "session/prompt": self.prompt,
            "_fake/state": self.fake_state,
        }
        if args.state_dir:
            os.makedirs(args.state_dir, exist_ok=True)

    # ---- output -------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        try:
            self.out.write(msgspec.json.encode(message) + b"\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the client is gone: nothing left to do
            os._exit(0)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def reply_error(self, rid: Any, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": rid, "error": error})

    def start_call(self, method: str, params: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        rid, self.next_id = self.next_id, self.next_id + 1
        future = asyncio.get_running_loop().create_future()
        self.calls[str(rid)] = future
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return rid, future

    def forget_call(self, rid: Any) -> None:
        future = self.calls.pop(str(rid), None)
        if future is not None and not future.done():
            future.cancel()

    # ---- input --------------------------------------------------------------------------------
    async def serve(self) -> None:
        reader = await self._open_stdin()
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than LINE_LIMIT
                self.reply_error(None, PARSE_ERROR, "Parse error: line too long")
                continue
            if not line:
                sys.stderr.flush()
                os._exit(0)  # EOF: finish nothing
            if line.strip():
                self.dispatch(line)
                await asyncio.sleep(0)  # let a new request's task register itself (e.g. its turn)

    async def _open_stdin(self) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        st_in, st_out = os.fstat(0), os.fstat(1)
        pipe = stat.S_ISFIFO(st_in.st_mode) or stat.S_ISSOCK(st_in.st_mode)
        # connect_read_pipe makes fd 0 non-blocking: never do that to a tty/socket shared with
        # stdout (big writes would fail with EAGAIN); read such an fd (or a file) in a thread.
        if pipe and (st_in.st_dev, st_in.st_ino) != (st_out.st_dev, st_out.st_ino):
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            return reader

        def pump() -> None:
            while data := os.read(0, 1 << 16):
                loop.call_soon_threadsafe(reader.feed_data, data)
            loop.call_soon_threadsafe(reader.feed_eof)

        threading.Thread(target=pump, name="stdin", daemon=True).start()
        return reader

    def dispatch(self, line: bytes) -> None:
        try:
            msg = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            self.reply_error(None, PARSE_ERROR, "Parse error", str(exc))
            return
        rid = msg.get("id") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or not isinstance(rid, str | int | float | None):
            self.reply_error(None, INVALID_REQUEST, "Invalid Request")
            return
        method = msg.get("method")
        if method is None and "id" in msg and ("result" in msg or "error" in msg):
            future = self.calls.pop(str(rid), None)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        params = msg.get("params")
        params = {} if params is None else params
        if not isinstance(method, str):
            self.reply_error(rid, INVALID_REQUEST, "Invalid Request")
        elif "id" not in msg:
            self.on_notification(method, params)
        elif not isinstance(params, dict):
            self.reply_error(rid, INVALID_PARAMS, "Invalid params: expected an object")
        elif method == "session/cancel":
            self.on_notification(method, params)
            self.send({"jsonrpc": "2.0", "id": rid, "result": {}})
        else:
            task = asyncio.get_running_loop().create_task(self.handle(rid, method, params))
            self.inflight[rid] = task

    def on_notification(self, method: str, params: Any) -> None:
        if not isinstance(params, dict):
            return
        if method == "session/cancel":
            session = self.sessions.get(_sid(params))
            if session is not None and session.turn is not None:
                session.turn.cancel()
        elif method == "$/cancel_request":
            rid = params.get("requestId")
            if not isinstance(rid, str | int | float | None):
                return
            if rid in self.turns:
                self.turns[rid].cancel()
            elif rid in self.inflight:
                self.inflight[rid].cancel()
        # any other notification is ignored

    async def handle(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        try:
            handler = self.handlers.get(method)
            if (
                handler is None
                or (method == "session/load" and self.args.no_load)
                or (method == "session/resume" and self.args.no_resume)
            ):
                raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": method})
            result = await handler(params, rid)
            after: list[dict[str, Any]] = []
            if isinstance(result, tuple):
                result, after = result
            self.send({"jsonrpc": "2.0", "id": rid, "result": result})
            for message in after:
                self.send(message)
        except RpcError as exc:
            self.reply_error(rid, exc.code, exc.message, exc.data)
        except asyncio.CancelledError:
            self.reply_error(rid, REQUEST_CANCELLED, "Request cancelled")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.reply_error(rid, INTERNAL_ERROR, f"Internal error: {exc}")
        finally:
            if self.inflight.get(rid) is asyncio.current_task():
                del self.inflight[rid]

    # ---- sessions -----------------------------------------------------------------------------
    def _session(self, params: dict[str, Any]) -> Session:
        session = self.sessions.get(_sid(params))
        if session is None:
            raise RpcError(NOT_FOUND, "Resource not found", {"sessionId": params.get("sessionId")})
        return session

    @staticmethod
    def _cwd(params: dict[str, Any]) -> str:
        cwd = params.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise RpcError(INVALID_PARAMS, "Invalid params: cwd must be an absolute path")
        if not isinstance(params.get("mcpServers", []), list):
            raise RpcError(INVALID_PARAMS, "Invalid params: mcpServers must be an array")
        return cwd

    def _state_path(self, session_id: Any) -> str | None:
        if not self.args.state_dir or not isinstance(session_id, str):
            return None
        if not _SAFE_ID.match(session_id):
            return None
        return os.path.join(self.args.state_dir, session_id + ".json")

    def save(self, session: Session) -> None:
        path = self._state_path(session.id)
        if path is not None:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(session.to_json()))
            os.replace(tmp, path)

    def _restore(self, session_id: Any) -> Session | None:
        if session_id in self.sessions:
            return self.sessions[session_id]
        path = self._state_path(session_id)
        if path is None or not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            data = msgspec.json.decode(f.read())
        return Session(
            id=data["sessionId"],
            cwd=data["cwd"],
            mode=data.get("mode", "build"),
            model=data.get("model", "fake/echo-1"),
            turns=data.get("turns", []),
        )

    async def _init_delay(self) -> None:
        if self.args.session_init_delay > 0:
            await asyncio.sleep(self.args.session_init_delay)

    async def initialize(self, params: dict[str, Any], rid: Any) -> Any:
        self.initialize_count += 1
        session_caps: dict[str, Any] = {"close": {}, "list": {}}
        if not self.args.no_resume:
            session_caps = {"resume": {}, **session_caps}
        return {
            "protocolVersion": 1,
            "agentCapabilities": {
                "loadSession": not self.args.no_load,
                "promptCapabilities": {"image": True, "embeddedContext": True},
                "mcpCapabilities": {"http": True, "sse": False},
                "sessionCapabilities": session_caps,
            },
            "authMethods": [],
            "agentInfo": {"name": "fake-agent", "version": "1.0.0"},
        }

    async def session_new(self, params: dict[str, Any], rid: Any) -> Any:
        cwd = self._cwd(params)
        await self._init_delay()
        session = Session(id="fake_" + secrets.token_hex(8), cwd=cwd)
        session.bound_with = _binding(params)
        self.sessions[session.id] = session
        self.save(session)
        commands = {
            "sessionUpdate": "available_commands_update",
            "availableCommands": [{"name": "init", "description": "create AGENTS.md"}],
        }
        after = {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session.id, "update": commands},
        }
        return {"sessionId": session.id, **session.setup()}, [after]

    async def session_load(self, params: dict[str, Any], rid: Any, replay: bool = True) -> Any:
        cwd = self._cwd(params)
        await self._init_delay()
        session = self._restore(params.get("sessionId"))
        if session is None:
            raise RpcError(NOT_FOUND, "Resource not found", {"sessionId": params.get("sessionId")})
        session.cwd = cwd
        session.bound_with = _binding(params)
        self.sessions[session.id] = session
        for turn in session.turns if replay else ():
            for kind, text, mid in (
                ("user_message_chunk", turn["user"], turn.get("userMessageId")),
                ("agent_message_chunk", turn["summary"], turn.get("messageId")),
            ):
                self.notify(
                    "session/update",
                    {
                        "sessionId": session.id,
                        "update": {
                            "sessionUpdate": kind,
                            "messageId": mid,
                            "content": {"type": "text", "text": text},
                        },
                    },
                )
        return session.setup()

    async def session_resume(self, params: dict[str, Any], rid: Any) -> Any:
        return await self.session_load(params, rid, replay=False)

    async def session_close(self, params: dict[str, Any], rid: Any) -> Any:
        session = self.sessions.pop(_sid(params), None)
        if session is not None and session.turn is not None:
            session.turn.cancel()
        return {}

    async def session_list(self, params: dict[str, Any], rid: Any) -> Any:
        cwd = params.get("cwd")  # sessions of this process only (persisted ones are not listed)
        return {
            "sessions": [
                {"sessionId": s.id, "cwd": s.cwd}
                for s in self.sessions.values()
                if cwd is None or s.cwd == cwd
            ]
        }

    async def set_mode(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if params.get("modeId") not in {m["id"] for m in MODES}:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unknown mode {params.get('modeId')!r}")
        session.mode = params["modeId"]
        self.save(session)
        self.notify(
            "session/update",
            {
                "sessionId": session.id,
                "update": {"sessionUpdate": "current_mode_update", "currentModeId": session.mode},
            },
        )
        return {}

    async def set_config(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if params.get("configId") != "model":
            raise RpcError(INVALID_PARAMS, f"unknown config option {params.get('configId')!r}")
        if params.get("value") not in {m["value"] for m in MODELS}:
            raise RpcError(INVALID_PARAMS, f"unknown model {params.get('value')!r}")
        session.model = params["value"]
        self.save(session)
        return {"configOptions": session.setup()["configOptions"]}

    async def set_model(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if not isinstance(params.get("modelId"), str):
            raise RpcError(INVALID_PARAMS, "Invalid params: modelId must be a string")
        session.model = params["modelId"]
        self.save(session)
        return {}

    async def prompt(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        blocks = params.get("prompt")
        if not isinstance(blocks, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: prompt must be an array")
        if session.turn is not None:
            raise RpcError(INVALID_REQUEST, "a prompt is already running on this session")
        if blocks and _is_seed(blocks[0]):
            # acp-proxy restored this conversation into a new session: take the history.
            if not session.turns:
                session.turns = _turns_from_seed(blocks[0]["text"])
            blocks = blocks[1:]
        knobs = self.knobs
        first = blocks[0] if blocks else None
        if (
            isinstance(first, dict)
            and first.get("type") == "text"
            and str(first.get("text", "")).startswith("fake:")
        ):
            try:
                directive, _ = json.JSONDecoder().raw_decode(first["text"][5:].lstrip())
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"bad fake directive: {exc}") from None
            if not isinstance(directive, dict):
                raise RpcError(INVALID_PARAMS, "bad fake directive: expected a JSON object")
            knobs = knobs.override(directive)
        turn = Turn(self, session, knobs, blocks)
        session.turn, self.turns[rid] = turn, turn
        try:
            return await turn.run()
        finally:
            session.turn = None
            self.turns.pop(rid, None)

    async def authenticate(self, params: dict[str, Any], rid: Any) -> Any:
        if params.get("methodId") == "reject":
            raise RpcError(-32000, "authentication refused")
        self.authenticated.append(params)
        return {}

    async def fake_state(self, params: dict[str, Any], rid: Any) -> Any:
        wanted = params.get("sessionId")
        return {
            "pid": os.getpid(),
            "initializeCount": self.initialize_count,
            "authenticated": self.authenticated,
            "envNames": sorted(os.environ),
            "sessions": {
                s.id: {
                    "turns": len(s.turns),
                    "cwd": s.cwd,
                    "mode": s.mode,
                    "model": s.model,
                    "running": s.turn is not None,
                    "boundWith": s.bound_with,
                }
                for s in self.sessions.values()
                if wanted in (None, s.id)
            },
            "env": {k: v for k, v in os.environ.items() if k.startswith(("FAKE_", "OPEN_DESIGN_"))},
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m acp_proxy.testing.fake_agent", description="A scripted ACP agent on stdio."
    )
    p.add_argument("--startup-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--session-init-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--chunk-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--chunks", type=int, default=3, metavar="N")
    p.add_argument("--chunk-size", type=int, default=24, metavar="B")
    p.add_argument("--thoughts", type=int, default=1, metavar="N")
    p.add_argument("--tool-calls", type=int, default=1, metavar="N")
    p.add_argument("--plan", action="store_true")
    p.add_argument("--permission", action="store_true")
    p.add_argument("--fs-read", default=None, metavar="PATH")
    p.add_argument("--no-load", action="store_true")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--crash-after", type=int, default=None, metavar="N")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--exit-at-start", type=int, default=None, metavar="CODE")
    p.add_argument("--stderr-lines", type=int, default=0, metavar="N")
    p.add_argument("--state-dir", default=None, metavar="DIR")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.exit_at_start is not None:
        sys.stderr.write("fake-agent: exiting at start as asked\n")
        sys.stderr.flush()
        sys.exit(args.exit_at_start)
    for i in range(args.stderr_lines):
        sys.stderr.write(f"fake-agent: log line {i + 1} of {args.stderr_lines}\n")
    sys.stderr.flush()
    if args.startup_delay > 0:
        time.sleep(args.startup_delay)
    asyncio.run(Agent(args).serve())


if __name__ == "__main__":
    main()
