"""One client connection (a unix-socket peer that sees the proxy as an ACP agent).

The reader handles messages in arrival order. Quick work (forwarding, replay from the store)
is awaited inline so a ``session/cancel`` can never overtake the prompt before it; slow work
that spawns or restores an agent runs in the connection's task group so other sessions on the
same connection go on meanwhile. Output goes through a byte-bounded :class:`Outbox`: a client
that stops reading is disconnected, its turns go on and are recorded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio
import msgspec
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from msgspec import Raw

from .agent import AgentProcess
from .budget import MemoryBudget
from .config import Config
from .logs import get_logger
from .outbox import Outbox, OutboxFull
from .protocol import (
    EMPTY,
    INVALID_REQUEST,
    Call,
    ErrorResponse,
    LineBuffer,
    Oversize,
    ProtocolError,
    RequestId,
    Response,
    decode_message,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
)

__all__ = ["ClientConnection", "Dispatcher"]

_encoder: Final = msgspec.json.Encoder()
ClientReply = Callable[[Response | ErrorResponse], None]


class Dispatcher(Protocol):
    """Where a connection's messages go (``proxy.Proxy``)."""

    async def handle(self, client: ClientConnection, msg: Call) -> None:
        """Handle one request or notification, in arrival order."""

    def on_client_closed(self, client: ClientConnection) -> None:
        """The connection has ended."""


class ClientConnection:
    """A connected ACP client."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        config: Config,
        stream: ByteStream,
        number: int,
        budget: MemoryBudget,
    ) -> None:
        self.dispatcher = dispatcher
        self.config = config
        self.stream = stream
        self.number = number
        raw_socket = stream.extra(SocketAttribute.raw_socket, None)
        # Direct writes only on a non-blocking socket (anyio's are): never block the loop.
        direct = (
            raw_socket.send if raw_socket is not None and not raw_socket.getblocking() else None
        )
        budget.register(self, self._evict)
        self.budget = budget
        self.outbox = Outbox(
            config.client_outbox_bytes,
            direct,
            on_size=lambda size: budget.set(self, "outbox", size),
        )
        #: the sessions this client receives the stream of (``session.Session``)
        self.sessions: set[Any] = set()
        #: client request id → (agent, agent-side id), to translate ``$/cancel_request``
        self.inflight: dict[RequestId, tuple[AgentProcess, int]] = {}
        self._next_id = 0
        self._pending: dict[int, ClientReply] = {}
        self.tg: TaskGroup | None = None
        self.log = get_logger(client=number)
        self.messages_in = 0
        #: called with every error answer (the ``acp_proxy_errors_total`` metric)
        self.on_error: Callable[[int, object], None] = lambda code, data: None
        #: environment the client's bridge forwarded (``acp-proxy attach --forward-env``)
        self.env: dict[str, str] = {}
        #: the peer's uid (``SO_PEERCRED``, set on accept); None when unknown
        self.peer_uid: int | None = None
        #: this client's ``authenticate`` params: replayed only to agents started for it
        self.auth_params: Raw | None = None
        #: the bridge asked for the agent's stderr during turns (``stderr_relay.py``)
        self.wants_stderr = False
        #: per session id: messages waiting behind a restore, in order (``Proxy.handle``)
        self.gates: dict[str, deque[Call]] = {}

    @property
    def closed(self) -> bool:
        """True once the connection is going away."""
        return self.outbox.closed

    async def run(self) -> None:
        """Serve the connection until the client closes it or breaks."""
        self.log.info("client.connected")
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                tg.start_soon(self._write)
                try:
                    await self._read()
                finally:
                    self.outbox.close()
        finally:
            self.budget.release(self)
            self.dispatcher.on_client_closed(self)
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()
            self.log.info("client.disconnected", messages=self.messages_in)

    async def _write(self) -> None:
        try:
            await self.outbox.run(self.stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.outbox.close()
            self.log.info("client.write_failed")
            assert self.tg is not None
            self.tg.cancel_scope.cancel()

    async def _read(self) -> None:
        buffer = LineBuffer(self.config.max_line_bytes)
        try:
            async for data in self.stream:
                lines = buffer.feed(data)
                self.budget.set(self, "line", buffer.buffered)
                for line in lines:
                    await self._handle_line(line)
                if self.closed:
                    return
            for line in buffer.feed(b""):
                await self._handle_line(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.log.info("client.read_failed")

    async def _handle_line(self, line: bytes | Oversize) -> None:
        self.messages_in += 1
        if isinstance(line, Oversize):
            limit = self.config.max_line_bytes
            self.send_error(
                None,
                INVALID_REQUEST,
                f"Invalid request: line longer than {limit} bytes was dropped; raise "
                "max_line_bytes in the proxy config if such messages are legitimate",
            )
            return
        try:
            msg = decode_message(line)
        except ProtocolError as exc:
            ident = exc.data if exc.data is None or isinstance(exc.data, int | str) else None
            self.send_error(ident, exc.code, exc.message)
            return
        if isinstance(msg, Response | ErrorResponse):
            callback = self._pending.pop(msg.id, None) if isinstance(msg.id, int) else None
            if callback is None:
                self.log.debug("client.unexpected_response", id=msg.id)
            else:
                callback(msg)
            return
        await self.dispatcher.handle(self, msg)

    def _evict(self, reason: str) -> None:
        """Over the proxy's memory budget and the largest holder: disconnect."""
        self.log.warning("client.over_budget_disconnected", reason=reason)
        self.outbox.close()
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    def __repr__(self) -> str:
        return f"client {self.number}"

    # -- sending -----------------------------------------------------------------------------

    def send_nowait(self, data: bytes) -> None:
        """Queue bytes; a client that is not reading is disconnected, nobody else waits."""
        try:
            self.outbox.send_nowait(data)
        except OutboxFull as exc:
            self.log.warning("client.stuck_disconnected", error=str(exc))
            if self.tg is not None:
                self.tg.cancel_scope.cancel()

    def send_response(self, ident: RequestId, result: Raw | bytes | Any) -> None:
        """Answer a request; ``result`` raw bytes are sent verbatim, other values encoded."""
        if not isinstance(result, Raw | bytes):
            result = _encoder.encode(result)
        self.send_nowait(encode_response(ident, result))

    def send_error(
        self,
        ident: RequestId,
        code: int,
        message: str,
        data: object = None,
        *,
        raw: Raw = EMPTY,
    ) -> None:
        """Answer a request with an error (``raw``: an agent's error object, unchanged)."""
        self.on_error(code, data if raw is EMPTY else {"kind": "agent_error"})
        self.send_nowait(encode_error(ident, code, message, data, raw=raw))

    def send_notification(self, method: str, params: Raw | bytes | Any) -> None:
        """Send a notification."""
        if not isinstance(params, Raw | bytes):
            params = _encoder.encode(params)
        self.send_nowait(encode_notification(method, params))

    def send_request(self, method: str, params: Raw | bytes, on_reply: ClientReply) -> int:
        """Send a request with a fresh id of this connection; ``on_reply`` gets the answer."""
        self._next_id += 1
        self._pending[self._next_id] = on_reply
        self.send_nowait(encode_request(self._next_id, method, params))
        return self._next_id
