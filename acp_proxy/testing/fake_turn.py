"""The fake agent's conversation model: sessions, per-turn knobs and a turn's behaviour.

See ``fake_agent.py`` for the command line and the protocol side; this module is the part
that decides what one ``session/prompt`` emits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol


class AgentLink(Protocol):
    """What a turn needs of the agent that runs it (``fake_agent.Agent``)."""

    args: Any

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification."""

    def start_call(self, method: str, params: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """Send a request to the client; the future gets its answer."""

    def forget_call(self, rid: Any) -> None:
        """Stop waiting for a request's answer."""

    def save(self, session: Session) -> None:
        """Persist the session (``--state-dir``)."""


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
    pause_after: int | None = None
    pause_until: str | None = None
    done_file: str | None = None
    shell: str | None = None
    stderr: str | None = None

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


def _commands_update(session_id: str) -> dict[str, Any]:
    """The ``available_commands_update`` sent after session/new, load and resume."""
    commands = {
        "sessionUpdate": "available_commands_update",
        "availableCommands": [{"name": "init", "description": "create AGENTS.md"}],
    }
    return {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {"sessionId": session_id, "update": commands},
    }


async def _wait_for_file(path: str, limit_s: float = 60.0) -> None:
    """Poll for ``path`` (bounded: a test that never creates it is not held forever)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    # Another process creates the file: there is no event to wait on, and a stat is cheap.
    while not os.path.exists(path) and loop.time() < deadline:  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.01)


async def _bash(command: str) -> str:
    """Run ``command`` the way opencode's bash tool does: non-interactive ``/bin/bash`` with
    the agent's environment, so bash reads ``$BASH_ENV`` first. Its stdout, stripped."""
    process = await asyncio.create_subprocess_exec(
        "/bin/bash", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return out.decode(errors="replace").strip()


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

    def __init__(self, agent: AgentLink, session: Session, knobs: Knobs, prompt: list[Any]) -> None:
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
        if k.stderr is not None:
            sys.stderr.write(k.stderr + "\n")
            sys.stderr.flush()
        if k.shell is not None:
            self.notes.append(f"shell={await _bash(k.shell)}")
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
        for j, piece in enumerate(pieces):
            if j == k.pause_after and k.pause_until is not None:
                await _wait_for_file(k.pause_until)
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
        return text + "".join("; " + n for n in self.notes if n.startswith(("fs=", "shell=")))

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
            reply: dict[str, Any] = await future
            return reply
        finally:
            self.pending.discard(rid)


Handler = Callable[[dict[str, Any], Any], Awaitable[Any]]
