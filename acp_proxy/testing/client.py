"""A small ACP client for tests, the demo and benchmarks (anyio: runs on trio and asyncio).

It speaks to the proxy's unix socket or to an agent spawned on stdio, records every message
it receives in order, and answers agent → client requests with a policy (by default:
permission requests pick the first ``allow`` option).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from ..protocol import LineBuffer

__all__ = ["AcpClient", "AcpError", "Reply", "allow_first"]

_encoder = msgspec.json.Encoder()


class AcpError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method} failed: {error.get('code')} {error.get('message')}")
        self.code = error.get("code")
        self.data = error.get("data")
        self.error = error


@dataclass
class Reply:
    """An answer plus what arrived while waiting for it."""

    result: Any
    error: dict[str, Any] | None
    notifications: list[dict[str, Any]]
    received_at: float
    first_update_at: float | None = None

    def unwrap(self, method: str = "request") -> Any:
        """The result, or raise :class:`AcpError`."""
        if self.error is not None:
            raise AcpError(method, self.error)
        return self.result

    def updates(self) -> list[dict[str, Any]]:
        """The ``update`` objects of the ``session/update`` notifications received."""
        return [
            n["params"]["update"] for n in self.notifications if n["method"] == "session/update"
        ]


RequestPolicy = Callable[[str, Any], tuple[Any, dict[str, Any] | None]]


def allow_first(method: str, params: Any) -> tuple[Any, dict[str, Any] | None]:
    """Answer permission requests with the first allow option; refuse everything else."""
    if method == "session/request_permission":
        for option in params.get("options", []):
            if str(option.get("kind", "")).startswith("allow"):
                return {"outcome": {"outcome": "selected", "optionId": option["optionId"]}}, None
        return {"outcome": {"outcome": "cancelled"}}, None
    return None, {"code": -32601, "message": f"test client does not serve {method}"}


@dataclass
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None
    start_index: int = 0


class AcpClient:
    """A JSON-RPC peer over a byte stream pair."""

    def __init__(
        self,
        receive: ByteReceiveStream,
        send: ByteSendStream,
        *,
        policy: RequestPolicy = allow_first,
        auto_answer: bool = True,
    ) -> None:
        self._receive = receive
        self._send = send
        self._ids = itertools.count(1)
        self._waiters: dict[Any, _Waiter] = {}
        self.messages: list[dict[str, Any]] = []  #: everything received, in order
        self.requests: list[dict[str, Any]] = []  #: agent → client requests received
        self.policy = policy
        self.auto_answer = auto_answer
        self._changed = anyio.Event()
        self.closed = False
        self.first_update_times: list[float] = []

    # -- construction ------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(cls, socket_path: str, **kwargs: Any) -> AsyncIterator[AcpClient]:
        """Connect to a proxy's unix socket."""
        stream = await anyio.connect_unix(socket_path)
        client = cls(stream, stream, **kwargs)
        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(client._read)
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()

    @classmethod
    @asynccontextmanager
    async def spawn(
        cls, command: Sequence[str], *, env: dict[str, str] | None = None, **kwargs: Any
    ) -> AsyncIterator[AcpClient]:
        """Spawn an ACP agent on stdio and talk to it directly."""
        process: Process = await anyio.open_process(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        assert process.stdin is not None and process.stdout is not None
        client = cls(process.stdout, process.stdin, **kwargs)
        client.process = process
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client._read)
                try:
                    yield client
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await process.stdin.aclose()
                with anyio.move_on_after(2):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.aclose()

    process: Process | None = None

    # -- I/O ---------------------------------------------------------------------------------

    async def _read(self) -> None:
        buffer = LineBuffer(256 * 1024 * 1024)
        try:
            async for data in self._receive:
                for line in buffer.feed(data):
                    if isinstance(line, bytes):
                        await self._on_message(msgspec.json.decode(line))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            for waiter in self._waiters.values():
                waiter.event.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _on_message(self, msg: dict[str, Any]) -> None:
        now = time.perf_counter()
        msg["_t"] = now
        self.messages.append(msg)
        if "method" in msg and "id" in msg:
            self.requests.append(msg)
            if self.auto_answer:
                result, error = self.policy(msg["method"], msg.get("params"))
                if error is None:
                    await self.respond(msg["id"], result)
                else:
                    await self.respond_error(msg["id"], error)
        elif "method" not in msg:
            waiter = self._waiters.get(msg.get("id"))
            if waiter is not None:
                waiter.message = msg
                waiter.event.set()
        self._notify()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (for malformed-input tests)."""
        await self._send.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message."""
        await self._send.send(_encoder.encode(message) + b"\n")

    async def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def respond(self, ident: Any, result: Any) -> None:
        """Answer a request."""
        await self.send({"jsonrpc": "2.0", "id": ident, "result": result})

    async def respond_error(self, ident: Any, error: dict[str, Any]) -> None:
        """Answer a request with an error."""
        await self.send({"jsonrpc": "2.0", "id": ident, "error": error})

    def start_request(self, method: str, params: Any, ident: Any = None) -> Any:
        """Register a request id; pair with :meth:`send` / :meth:`wait_reply`."""
        if ident is None:
            ident = next(self._ids)
        self._waiters[ident] = _Waiter(start_index=len(self.messages))
        return ident

    async def request(self, method: str, params: Any, *, ident: Any = None) -> Reply:
        """Send a request and wait for its answer."""
        sent = time.perf_counter()
        ident = await self.send_request(method, params, ident=ident)
        return await self.wait_reply(ident, sent_at=sent)

    async def send_request(self, method: str, params: Any, *, ident: Any = None) -> Any:
        """Send a request without waiting; :meth:`wait_reply` with the returned id gets it."""
        ident = self.start_request(method, params, ident)
        await self.send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        return ident

    async def wait_reply(self, ident: Any, *, sent_at: float | None = None) -> Reply:
        """Wait for the answer to request ``ident``."""
        waiter = self._waiters[ident]
        await waiter.event.wait()
        del self._waiters[ident]
        if waiter.message is None:
            raise anyio.EndOfStream(f"connection closed before the answer to request {ident}")
        end = self.messages.index(waiter.message)
        notes = [
            m for m in self.messages[waiter.start_index : end] if "method" in m and "id" not in m
        ]
        first = next(
            (
                n["_t"]
                for n in notes
                if n["method"] == "session/update"
                and n["params"]["update"].get("sessionUpdate")
                in ("agent_message_chunk", "agent_thought_chunk")
            ),
            None,
        )
        return Reply(
            waiter.message.get("result"),
            waiter.message.get("error"),
            notes,
            waiter.message["_t"],
            first,
        )

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, since: int = 0
    ) -> dict[str, Any]:
        """Wait until a message received at index ``since`` or later satisfies ``predicate``."""
        index = since
        while True:
            for msg in self.messages[index:]:
                if predicate(msg):
                    return msg
            index = len(self.messages)
            if self.closed:
                raise anyio.EndOfStream("connection closed")
            await self._changed.wait()

    def updates(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every ``session/update`` params received (optionally for one session)."""
        return [
            m["params"]
            for m in self.messages
            if m.get("method") == "session/update"
            and (session_id is None or m["params"].get("sessionId") == session_id)
        ]

    # -- ACP shortcuts -----------------------------------------------------------------------

    async def initialize(self) -> dict[str, Any]:
        """``initialize`` as a typical client sends it."""
        reply = await self.request(
            "initialize",
            {
                "protocolVersion": 1,
                "clientCapabilities": {"fs": {"readTextFile": False}, "terminal": False},
                "clientInfo": {"name": "acp-proxy-test", "version": "0"},
            },
        )
        result: dict[str, Any] = reply.unwrap("initialize")
        return result

    async def new_session(self, cwd: str = "/tmp", **extra: Any) -> str:
        """``session/new``; returns the session id."""
        params = {"cwd": cwd, "mcpServers": [], **extra}
        sid: str = (await self.request("session/new", params)).unwrap("session/new")["sessionId"]
        return sid

    async def prompt(self, session_id: str, text: str) -> Reply:
        """``session/prompt`` with one text block."""
        return await self.request("session/prompt", _text_prompt(session_id, text))

    async def start_prompt(self, session_id: str, text: str) -> Any:
        """``session/prompt`` with one text block, without waiting; returns the request id."""
        return await self.send_request("session/prompt", _text_prompt(session_id, text))


def _text_prompt(session_id: str, text: str) -> dict[str, Any]:
    return {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}
