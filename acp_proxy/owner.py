"""The one task that owns a session's lifecycle.

Theory of operation
-------------------
Each session has a :class:`SessionOwner`: a task in the proxy's task group, fed by a bounded
channel. Binding an agent (``session/new``, a restore), closing and deleting run only there,
one after another, so two clients can never bind one session twice, and a client that
vanishes cancels only its *wait* for the answer, never half of a bind (the way httpcore's pool
finishes or undoes a connection whatever its caller does). A ``session/new`` whose requester
has gone by the time it is bound is deleted again: nobody holds its id.

Client tasks call :meth:`SessionOwner.ensure_live`, :meth:`~SessionOwner.create`,
:meth:`~SessionOwner.close` and :meth:`~SessionOwner.delete`; each sends the work to the owner
and waits for its outcome.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec
from msgspec import Raw

from store import DeleteSession, PutSession, StoreError, UpdateSession

from .agent import AgentError, AgentExited, AgentProcess
from .lifecycle import Event, State
from .peer import Peer
from .pool import AgentPool
from .protocol import INTERNAL_ERROR, RESOURCE_NOT_FOUND, LocalProtocolError, ProtocolError
from .restore import restore_session
from .session import Session

__all__ = ["AgentRefused", "SessionOwner"]

#: Commands queued to one owner before senders wait (backpressure, not loss).
COMMAND_QUEUE: Final = 64
_encoder: Final = msgspec.json.Encoder()


class AgentRefused(LocalProtocolError):
    """The agent answered the proxy's request with an error: passed to the client as it is."""

    def __init__(self, reply_code: int, message: str, raw: Raw) -> None:
        super().__init__(message, reply_code)
        self.raw = raw


@dataclass(eq=False)
class _Command:
    action: Callable[[], Awaitable[Any]]
    #: run instead of nothing when the requester stopped waiting before the outcome
    undo: Callable[[], Awaitable[None]] | None = None
    #: the client that asked: if its connection has closed by the end, nobody gets the answer
    requester: Peer | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: Exception | None = None
    abandoned: bool = False


class SessionOwner:
    """Runs a session's binds, restores, closes and deletes, one at a time."""

    def __init__(
        self,
        session: Session,
        pool: AgentPool,
        *,
        on_created: Callable[[Session], None],
        on_deleted: Callable[[Session], None],
        on_restored: Callable[[str], None] = lambda rung: None,
    ) -> None:
        self.session = session
        self.pool = pool
        self._on_created = on_created
        self._on_deleted = on_deleted
        self._on_restored = on_restored
        self._send, self._receive = anyio.create_memory_object_stream[_Command](COMMAND_QUEUE)

    async def run(self) -> None:
        """Execute commands until the session is deleted (or the proxy stops)."""
        async with self._receive:
            async for command in self._receive:
                if self.session.lifecycle.deleted:
                    # Queued before the delete: the answer any later request gets.
                    command.error = _deleted(self.session)
                    command.done.set()
                    continue
                await self._execute(command)
                if self.session.lifecycle.deleted:
                    self._send.close()  # later senders are told at once; the loop drains, ends

    async def _execute(self, command: _Command) -> None:
        try:
            command.result = await command.action()
        except (ProtocolError, StoreError) as exc:  # answered as such (store: store_failed)
            command.error = exc
        except Exception as exc:  # a bug: this request fails, the session and proxy go on
            self.session.log.exception("owner.command_failed")
            command.error = LocalProtocolError(
                f"internal error in session {self.session.id}: {exc}", INTERNAL_ERROR
            )
        finally:
            command.done.set()
        gone = command.abandoned or (command.requester is not None and command.requester.closed)
        if gone and command.error is None and command.undo is not None:
            await command.undo()

    async def _call(
        self,
        action: Callable[[], Awaitable[Any]],
        undo: Callable[[], Awaitable[None]] | None = None,
        requester: Peer | None = None,
    ) -> Any:
        command = _Command(action, undo, requester=requester)
        try:
            await self._send.send(command)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise _deleted(self.session) from None
        try:
            await command.done.wait()
        except BaseException:
            command.abandoned = True  # our wait ends here; the owner finishes (or undoes) it
            raise
        if command.error is not None:
            raise command.error
        return command.result

    def stop(self) -> None:
        """This replica no longer drives the session (its lease went elsewhere): commands
        still queued, and later ones, are told it is gone here."""
        self._send.close()

    # -- what clients ask for ----------------------------------------------------------------

    async def ensure_live(
        self,
        env: dict[str, str],
        *,
        mcp_servers: Raw | None = None,
        additional_directories: Raw | None = None,
        auth: Raw | None = None,
    ) -> None:
        """Return once an agent holds the conversation (restored if it was gone; ``auth``:
        the asking client's ``authenticate`` params for the agent a restore starts).

        Raises:
            LocalProtocolError: deleted (-32002), or no rung of the restore ladder worked.
        """
        await self._call(lambda: self._ensure_live(env, mcp_servers, additional_directories, auth))

    async def create(self, client: Peer, params: Raw, auth: Raw | None = None) -> dict[str, Any]:
        """Bind a fresh agent session for a new conversation; returns the agent's answer.

        Raises:
            LocalProtocolError: the agent could not be started or refused ``session/new``.
        """
        result: dict[str, Any] = await self._call(
            lambda: self._create(client, params, auth),
            undo=lambda: self._delete("requester_gone"),
            requester=client,
        )
        return result

    async def close(self) -> None:
        """``session/close``: stop the agent; the conversation stays and can be restored."""
        await self._call(self._close)

    async def delete(self) -> None:
        """``session/delete``: stop the agent and forget the conversation for good."""
        await self._call(lambda: self._delete("deleted"))

    # -- what the owner does -----------------------------------------------------------------

    async def _ensure_live(
        self,
        env: dict[str, str],
        mcp_servers: Raw | None,
        additional_directories: Raw | None,
        auth: Raw | None,
    ) -> None:
        session = self.session
        session.require_not_deleted()
        if session.live and env and env != session.env and session.turn is None:
            # The agent process runs under another turn's billing/tracing values: restart it
            # through the restore ladder rather than bill this turn to the previous one.
            session.log.info("session.env_changed", names=sorted(env))
            session.retire("env_changed")
        if env:
            session.env = env
        if session.state is State.RETIRING:
            await self._wait_retired()
        if session.state is State.UNBOUND:
            rung = await restore_session(
                session,
                self.pool,
                mcp_servers=mcp_servers,
                additional_directories=additional_directories,
                auth=auth,
            )
            self._on_restored(rung)
            session.on_idle()

    async def _wait_retired(self) -> None:
        """Some agents hold a session in one process at a time (acp-notes §10): a restore
        waits for the old process to be gone."""
        session = self.session
        agent = session.agent
        if agent is not None:
            # Bounded: the agent's own stop sequence ends in SIGKILL after 2 grace periods.
            with anyio.move_on_after(3 * session.config.kill_grace_s + 1):
                await agent.exited.wait()
        if session.state is State.RETIRING:
            raise LocalProtocolError(
                f"the agent of session {session.id} has not exited after SIGKILL; try again",
                INTERNAL_ERROR,
                {"kind": "agent_not_stopping", "sessionId": session.id},
            )

    async def _create(self, client: Peer, params: Raw, auth: Raw | None) -> dict[str, Any]:
        session = self.session
        store = session.store
        received = time.monotonic()
        session.lifecycle.handle(Event.BIND)
        session.attach(client, hold=True)  # early updates wait until it has the session id
        agent: AgentProcess | None = None
        stored = False
        try:
            host, setup = await self.pool.acquire(
                session.record.cwd, session.env or None, session, auth, client.number
            )
            agent = host.agent
            await store.commit([PutSession(session.record)])
            stored = True
            session.agent = agent
            started = time.monotonic()
            prepared = self.pool.claim_preopened(agent, session.record.cwd, params)
            async with host.binding_of(session):  # one bind at a time on a shared process
                try:
                    result = await self.pool.preopened_result(prepared) if prepared else None
                    if result is None:
                        prepared = None
                        result = await agent.call("session/new", params)
                    else:
                        setup.agent = "preopened"  # a spare, and its session opened ahead
                except AgentError as exc:
                    raise AgentRefused(exc.reply.code, exc.reply.message, exc.reply.error) from None
                except AgentExited as exc:
                    raise LocalProtocolError(
                        f"session/new failed: {exc}", INTERNAL_ERROR, exc.info.as_data()
                    ) from None
                upstream = result.get("sessionId")
                if not isinstance(upstream, str):
                    raise LocalProtocolError(
                        "the agent answered session/new without a sessionId", INTERNAL_ERROR
                    )
                host.route(upstream, session, session.record.cwd)
                if prepared is not None:  # what the agent said about it before: now its own
                    await agent.feed(prepared.lines)
            setup.session_init_ms = (time.monotonic() - started) * 1000
            session.upstream_id = upstream
            session.record = msgspec.structs.replace(session.record, upstream_session_id=upstream)
            session.setup = setup
            ops: list[Any] = [UpdateSession(session.id, time.time(), upstream_session_id=upstream)]
            if isinstance(result.get("modes"), dict):
                session.record = msgspec.structs.replace(
                    session.record, modes=_encoder.encode(result["modes"])
                )
                ops.append(UpdateSession(session.id, time.time(), modes=session.record.modes))
            if isinstance(result.get("configOptions"), list):
                session.set_config_options(_encoder.encode(result["configOptions"]), ops)
            await store.commit(ops)
        except BaseException as exc:
            # Undo all of it: the conversation never existed.
            session.agent = None
            session.detach(client)
            if agent is not None:
                # Unbound and healthy (refused, or its record could not be stored): a spare
                # again if it fits (unless others share it).
                reusable = isinstance(exc, AgentRefused) or (
                    isinstance(exc, StoreError) and not stored
                )
                self.pool.leave(agent, session, reusable=reusable)
            session.lifecycle.handle(Event.BIND_FAILED)
            session.lifecycle.handle(Event.DELETE)
            if stored:
                with anyio.CancelScope(shield=True):
                    await store.commit([DeleteSession(session.id)])
            self._on_deleted(session)
            raise
        session.lifecycle.handle(Event.BOUND)
        self._on_created(session)  # (the hub marks it as created here: the short idle limit)
        session.on_idle()  # live and idle: one waiting for an agent slot may evict it
        session.log.info(
            "session.created",
            upstream_session_id=upstream,
            agent=setup.agent,
            agent_pid=agent.pid,
            cwd=session.record.cwd,
            setup_ms=round((time.monotonic() - received) * 1000, 3),
        )
        return result

    async def _close(self) -> None:
        session = self.session
        session.require_not_deleted()
        if session.turn is not None:
            session.cancel_turn()
        session.retire("closed")
        await session.store.commit([UpdateSession(session.id, time.time(), state="closed")])

    async def _delete(self, reason: str) -> None:
        session = self.session
        if session.lifecycle.deleted:
            return
        if session.turn is not None:
            session.cancel_turn()
        agent = session.agent
        session.lifecycle.handle(Event.DELETE)
        if agent is not None:
            self.pool.leave(agent, session)  # a process other conversations share stays
        session.log.info("session.deleted", reason=reason, agent_pid=agent.pid if agent else None)
        self._on_deleted(session)
        with anyio.CancelScope(shield=True):
            await session.store.commit([DeleteSession(session.id)])


def _deleted(session: Session) -> LocalProtocolError:
    return LocalProtocolError(
        f"Resource not found: session {session.id} was deleted",
        RESOURCE_NOT_FOUND,
        {"sessionId": session.id},
    )
