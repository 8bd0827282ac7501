"""The dispatcher: what clients send, in which order, to which handler.

To a client the proxy is an ACP agent. Each request goes to its handler in ``methods.py``
(``initialize`` answered from the agent command's capabilities, ``session/new`` binding an
agent to a proxy-minted 128-bit id, later calls forwarded to the same warm process with ids
and ``sessionId`` rewritten per hop, ``session/load`` and ``session/resume`` served from the
store). The conversations themselves live in the :class:`~acp_proxy.hub.Hub`, each with an
owner task. Here: the order messages are handled in, notifications, and turning errors into
answers.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

import msgspec
from anyio.abc import TaskGroup

from store import SessionStore

from .access import may_use
from .budget import MemoryBudget, wait_for_agent_stdin
from .client import ClientConnection
from .config import Config
from .extensions import ENV_METHOD, STATUS_METHOD
from .hub import Hub
from .logs import get_logger
from .methods import BACKGROUND, METHODS, MethodHandler, run_guarded, session_forward, session_id_of
from .metrics import Metrics
from .protocol import (
    MALFORMED_JSON,
    METHOD_NOT_FOUND,
    Call,
    Notification,
    ProtocolError,
    Request,
    RequestId,
    object_members,
    rewrite_members,
)
from .status import snapshot
from .stopping import refuses_while_stopping, stopping_error

__all__ = ["Proxy"]

_encoder: Final = msgspec.json.Encoder()


class _EnvParams(msgspec.Struct):
    env: dict[str, str]
    stderr: bool = False


class _CancelParams(msgspec.Struct):
    requestId: RequestId  # ACP wire name


class Proxy:
    """Dispatches every connection's messages; one per ``serve``."""

    def __init__(self, config: Config, store: SessionStore, tg: TaskGroup) -> None:
        self.config = config
        self.hub = Hub(config, store, tg)
        self.budget = MemoryBudget(config.max_buffered_bytes)
        self._clients = 0
        #: connected clients (status, metrics, the drain's last flush)
        self.clients: set[ClientConnection] = set()
        #: set when SIGTERM starts the drain: requests for new work are refused
        self.stopping = False
        #: requests whose handler is running (a session/new spawning an agent, a restore)
        self.handling = 0
        self.started = time.monotonic()
        self.metrics = Metrics()
        self.hub.on_turn = self.metrics.observe_turn
        self.hub.on_restored = self.metrics.count_restore
        self.log = get_logger(component="proxy")

    # -- dispatch ----------------------------------------------------------------------------

    def new_client(self, stream: Any) -> ClientConnection:
        """A connection was accepted."""
        self._clients += 1
        client = ClientConnection(self, self.config, stream, self._clients, self.budget)
        client.on_error = self.metrics.count_error
        self.clients.add(client)
        return client

    async def handle(self, client: ClientConnection, msg: Call) -> None:
        """Handle one request or notification from a client.

        Messages are handled in arrival order, inline, so a ``session/cancel`` never overtakes
        the prompt before it. A request for a session whose agent is gone would hold the
        connection's reader through the restore (seconds with opencode) and stall every
        other session on the connection: it goes to that session's *gate* on this
        connection instead, where it and every later message for the session run in order
        in a task of their own, while other sessions' messages go on inline.
        """
        sid = self._gate_key(client, msg)
        target = self.hub.sessions.get(sid) if sid is not None else None
        if target is not None and target.agent is not None:
            # Backpressure: this connection is not read while its agent's stdin is full.
            agent = target.agent
            await wait_for_agent_stdin(agent.outbox, agent.stdin_limit_bytes)
        if sid is not None and client.tg is not None:
            gate = client.gates.get(sid)
            if gate is not None or (isinstance(msg, Request) and self._needs_restore(sid)):
                if gate is None:
                    gate = client.gates[sid] = deque()
                    client.tg.start_soon(self._drain_gate, client, sid, gate)
                gate.append(msg)
                return
        await self._dispatch(client, msg)

    def _gate_key(self, client: ClientConnection, msg: Call) -> str | None:
        """The session a message must stay in order with, if any."""
        if msg.method == "$/cancel_request" and client.gates:
            # Cancelling a request still waiting in a gate: it waits there too.
            try:
                target = msgspec.json.decode(msg.params, type=_CancelParams).requestId
            except MALFORMED_JSON:
                return None
            return next(
                (
                    sid
                    for sid, gate in client.gates.items()
                    if any(isinstance(m, Request) and m.id == target for m in gate)
                ),
                None,
            )
        if msg.method in _UNGATED:
            return None
        return session_id_of(msg.params)

    def _needs_restore(self, sid: str) -> bool:
        session = self.hub.sessions.get(sid)
        return session is None or not session.live

    async def _drain_gate(self, client: ClientConnection, sid: str, gate: deque[Call]) -> None:
        try:
            while gate:
                await self._dispatch(client, gate[0])  # still queued: the gate stays busy
                gate.popleft()
        finally:
            client.gates.pop(sid, None)

    async def _dispatch(self, client: ClientConnection, msg: Call) -> None:
        if isinstance(msg, Notification):
            try:
                self._handle_notification(client, msg)
            except ProtocolError as exc:  # nobody to answer: a notification has no id
                client.log.warning("client.bad_notification", method=msg.method, error=exc.message)
            return
        assert isinstance(msg, Request)
        if self.stopping and refuses_while_stopping(msg.method):
            client.send_error(msg.id, *stopping_error(msg.method))
            return
        if msg.method == STATUS_METHOD:  # answered by the proxy itself, never forwarded
            client.send_response(msg.id, self.status())
            return
        handler = METHODS.get(msg.method)
        if handler is None:
            if msg.method.startswith("_"):
                handler = session_forward
            else:
                client.send_error(
                    msg.id,
                    METHOD_NOT_FOUND,
                    f"Method not found: {msg.method}",
                    {"method": msg.method},
                )
                return
        if msg.method in BACKGROUND and client.tg is not None:
            client.tg.start_soon(self._run, handler, client, msg)
        else:
            await self._run(handler, client, msg)

    async def _run(self, handler: MethodHandler, client: ClientConnection, req: Request) -> None:
        self.handling += 1  # the drain waits for requests being handled
        try:
            await run_guarded(self.hub, handler, client, req)
        finally:
            self.handling -= 1

    def status(self) -> dict[str, Any]:
        """What the proxy is doing now (``_acp-proxy/status``, metrics gauges)."""
        return snapshot(self.hub, self.clients, stopping=self.stopping, started=self.started)

    def _handle_notification(self, client: ClientConnection, msg: Notification) -> None:
        if msg.method == ENV_METHOD:
            try:
                hello = msgspec.json.decode(msg.params, type=_EnvParams)
            except MALFORMED_JSON:
                client.log.warning("client.bad_env_notification")
                return
            client.env, client.wants_stderr = hello.env, hello.stderr
            client.log.info("client.env", names=sorted(hello.env), stderr=hello.stderr)
        elif msg.method == "session/cancel":
            session = self.hub.sessions.get(session_id_of(msg.params) or "")
            if session is not None and may_use(self.config, client.peer_uid, session.record):
                session.cancel_turn()
        elif msg.method == "$/cancel_request":
            # Hop-scoped (acp-notes §7.4): the agent gets its own id, never the client's.
            try:
                target = msgspec.json.decode(msg.params, type=_CancelParams).requestId
            except MALFORMED_JSON:
                client.log.warning("client.bad_cancel_request")
                return
            entry = client.inflight.get(target)
            if entry is not None and entry[0].alive:
                entry[0].send_notification(
                    "$/cancel_request", _encoder.encode({"requestId": entry[1]})
                )
        elif msg.method.startswith("_"):
            session = self.hub.sessions.get(session_id_of(msg.params) or "")
            if (
                session is not None
                and session.live
                and may_use(self.config, client.peer_uid, session.record)
            ):
                assert session.agent is not None and session.upstream_id is not None
                params = rewrite_members(object_members(msg.params), sessionId=session.upstream_id)
                session.agent.send_notification(msg.method, params)
        else:
            client.log.debug("client.notification_ignored", method=msg.method)

    # -- lifecycle ---------------------------------------------------------------------------

    def on_client_closed(self, client: ClientConnection) -> None:
        """A client went away: its sessions keep their agents; pending asks are answered."""
        self.clients.discard(client)
        for session in list(client.sessions):
            session.detach(client)
        client.sessions.clear()
        client.inflight.clear()
        self.hub.pool.release_owner(client.number)


#: Messages that never wait in a session's gate (no session, or handled beside the reader).
_UNGATED: Final = frozenset(
    {"initialize", "authenticate", "session/new", "session/list", ENV_METHOD}
)
