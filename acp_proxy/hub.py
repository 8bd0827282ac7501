"""The session table: every conversation the proxy knows, each with its owner task.

Sessions come back on first use (a restart restores nothing eagerly): :meth:`Hub.session`
loads one from the store and starts its owner. Idle eviction and making room under
``max_live_agents`` or the memory budget are single synchronous steps on sessions that are
LIVE and idle (:meth:`Session.retire`); everything that awaits goes through the session's owner.

Idle eviction is per conversation (one that leaves a shared process frees its place); making
room picks agent *processes*: the least recently used one whose every conversation is idle.
A conversation created here whose client never came back after its first turn (acpx ``exec``
sends ``session/new`` and one prompt, then leaves without ``session/close``) has the shorter
``unreturned_idle_timeout_s``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup
from msgspec import Raw

from store import SessionRecord, SessionStore

from .access import check_session_access
from .agent import AgentProcess
from .config import Config
from .lifecycle import State
from .logs import get_logger
from .owner import SessionOwner
from .ownership import Ownership
from .pool import AgentPool
from .protocol import (
    INVALID_PARAMS,
    RESOURCE_NOT_FOUND,
    LocalProtocolError,
    get_str,
    object_members,
)
from .session import STATE_KINDS, Session
from .stderr_relay import StderrRelay

__all__ = ["Hub"]

#: Deleted session ids remembered, so that a late request names them as deleted.
_TOMBSTONES: Final = 10_000


class Hub:
    """Everything the proxy knows about its conversations; one per ``serve``."""

    def __init__(self, config: Config, store: SessionStore, tg: TaskGroup) -> None:
        self.config = config
        self.store = store
        self.tg = tg
        #: live and known conversations (bound or not), by proxy session id
        self.sessions: dict[str, Session] = {}
        self.owners: dict[str, SessionOwner] = {}
        self.deleted: dict[str, None] = {}
        #: created here and nobody came back for them yet (``session/load``/``resume``)
        self.unreturned: set[str] = set()
        self.pool = AgentPool(config, tg, store, make_room=self._make_room)
        #: leases across replicas (PostgreSQL); off for one proxy on SQLite
        self.ownership = Ownership(store, tg, busy=self._busy, on_lost=self._on_lease_lost)
        self.stderr = StderrRelay()
        self.pool.on_stderr = self._relay_stderr
        #: metrics hooks (``metrics.Metrics`` when serving): a turn ended, a restore's rung
        self.on_turn: Callable[[str, dict[str, Any]], None] = lambda outcome, timings: None
        self.on_restored: Callable[[str], None] = lambda rung: None
        self.log = get_logger(component="hub")

    # -- the table ---------------------------------------------------------------------------

    def _own(self, session: Session) -> SessionOwner:
        owner = SessionOwner(
            session,
            self.pool,
            on_created=self._on_created,
            on_deleted=self._on_deleted,
            on_restored=lambda rung: self.on_restored(rung),
        )
        session.on_idle = self.pool.room_changed
        session.release_agent = lambda s, agent: self.pool.leave(agent, s)
        session.observe_turn = lambda outcome, timings: self._turn_ended(session, outcome, timings)
        self.owners[session.id] = owner
        self.tg.start_soon(owner.run, name=f"owner {session.id}")
        return owner

    def _relay_stderr(self, agent: AgentProcess, line: str) -> None:
        """An agent's stderr line goes to the bridges of the one conversation in a turn on
        it; a shared process with several turns running cannot say whose it is: not sent."""
        host = self.pool.hosts.get(agent)
        in_turn = [t for t in host.tenants if isinstance(t, Session) and t.turn] if host else []
        if len(in_turn) == 1:
            self.stderr.relay(in_turn[0], line)

    def _turn_ended(self, session: Session, outcome: str, timings: dict[str, Any]) -> None:
        self.pool.tool_env.clear(session.agent)  # the turn's values (a run's token) go
        self.on_turn(outcome, timings)

    def _on_created(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.unreturned.add(session.id)

    def _on_deleted(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.owners.pop(session.id, None)
        self.unreturned.discard(session.id)
        self.deleted[session.id] = None
        while len(self.deleted) > _TOMBSTONES:
            del self.deleted[next(iter(self.deleted))]
        self.log_session(session, "session.closed")

    async def new_session(
        self, cwd: str, params: Raw, env: dict[str, str], *, creator_uid: int | None = None
    ) -> SessionOwner:
        """A conversation about to be created; its owner binds it (``SessionOwner.create``)."""
        members = object_members(params)
        now = time.time()
        record = SessionRecord(
            id="sess_" + secrets.token_hex(16),  # 128 random bits, minted by the proxy
            cwd=cwd,
            agent_profile=self.config.agent_profile,
            mcp_servers=bytes(members.get("mcpServers", b"[]")),
            additional_directories=(
                bytes(members["additionalDirectories"])
                if "additionalDirectories" in members
                else None
            ),
            created_at=now,
            updated_at=now,
            creator_uid=creator_uid,
        )
        await self.ownership.claim_session(record.id)
        return self._own(Session(self.config, self.store, record, env=env))

    async def session(self, sid: str) -> tuple[Session, SessionOwner]:
        """The session ``sid`` with its owner, loaded from the store on first use.

        Raises:
            LocalProtocolError: -32002, no such session.
        """
        session = self.sessions.get(sid)
        if session is None:
            if sid in self.deleted:
                raise _not_found(sid, "was deleted")
            session = await self._session_from_store(sid)
        return session, self.owners[session.id]

    async def _session_from_store(self, sid: str) -> Session:
        record = await self.store.get_session(sid)
        if record is None:
            raise _not_found(sid, "does not exist; create one with session/new")
        last_seq = await self.store.last_event_seq(sid)
        turn_seq = await self.store.last_turn_seq(sid)
        state = await self.store.last_events_of_kinds(sid, sorted(STATE_KINDS))
        if sid in self.sessions:  # another connection got here first
            return self.sessions[sid]
        if sid in self.deleted:
            raise _not_found(sid, "was deleted")
        session = Session(self.config, self.store, record, last_seq=last_seq, turn_seq=turn_seq)
        session.delivered_seq = last_seq
        for kind, payload in state.items():
            update = object_members(payload).get("update")
            if update is not None:
                session.last_state[kind] = bytes(update)
        self.sessions[sid] = session
        self._own(session)
        return session

    async def ready_session(
        self,
        params: Raw,
        env: dict[str, str],
        *,
        check_cwd: bool = False,
        peer_uid: int | None = None,
        auth: Raw | None = None,
    ) -> Session:
        """The session named in ``params``, with a live agent (restored by its owner if it
        was gone).

        Raises:
            LocalProtocolError: no such session (-32002), wrong cwd (-32602), or
                ``RestoreFailed`` when no rung of the restore ladder worked.
        """
        members = object_members(params)
        sid = get_str(members, "sessionId")
        if sid is None:
            raise LocalProtocolError(
                'Invalid params: "sessionId" (string) is required', INVALID_PARAMS
            )
        if await self.ownership.claim_session(sid):
            self._forget_unless_live(sid)  # another replica may have written since
        session, owner = await self.session(sid)
        check_session_access(self.config, peer_uid, session.record)
        cwd = get_str(members, "cwd")
        if check_cwd and cwd is not None and cwd != session.record.cwd:
            raise LocalProtocolError(
                f"Invalid params: session {sid} belongs to cwd {session.record.cwd!r}, "
                f"not {cwd!r}; sessions are bound to their cwd",
                INVALID_PARAMS,
                {"sessionId": sid, "cwd": session.record.cwd},
            )
        session.touch()
        if check_cwd:  # session/load or session/resume: a client came back for it
            self.unreturned.discard(sid)
        if not session.live or (env and env != session.env and session.turn is None):
            await owner.ensure_live(
                env,
                mcp_servers=members.get("mcpServers"),
                additional_directories=members.get("additionalDirectories"),
                auth=auth,
            )
        return session

    def _busy(self, sid: str) -> bool:
        """Keep this session's lease: its agent is live, being bound, or in a turn."""
        session = self.sessions.get(sid)
        return session is not None and (session.live or session.state is State.BINDING)

    def _forget_unless_live(self, sid: str) -> None:
        """Drop a cached session without an agent, so that it is read again from the store."""
        session = self.sessions.get(sid)
        if session is not None and not session.live and session.state is not State.BINDING:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        self.sessions.pop(sid, None)
        owner = self.owners.pop(sid, None)
        if owner is not None:
            owner.stop()

    def _on_lease_lost(self, sid: str) -> None:
        """Another replica took the session over: stop its agent here and forget it."""
        session = self.sessions.get(sid)
        if session is not None:
            session.retire("lease_lost")
        self._drop(sid)

    def process_env(self, client_env: dict[str, str]) -> dict[str, str]:
        """The per-process variables a client brought (see ``Config.per_process_env``)."""
        wanted = self.config.per_process_env
        return {name: value for name, value in client_env.items() if name in wanted}

    # -- agents ------------------------------------------------------------------------------

    async def run_reaper(self) -> None:
        """Stop agents idle for longer than ``idle_timeout_s`` (``unreturned_idle_timeout_s``
        for a conversation nobody came back for; bounded loop: runs until the proxy's task
        group is cancelled)."""
        ttls = [t for t in (self.config.idle_timeout_s, self.config.unreturned_idle_timeout_s) if t]
        if not ttls:
            return
        while True:
            await anyio.sleep(min(max(min(ttls) / 4, 0.05), 30.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.evictable:
                    continue
                ttl, reason = self._idle_limit(session)
                if ttl and now - session.last_active >= ttl:
                    session.retire(reason)
                    self.ownership.release(session.id)

    def _idle_limit(self, session: Session) -> tuple[float, str]:
        """The idle limit that applies to ``session`` (0: none) and its eviction reason."""
        short = self.config.unreturned_idle_timeout_s
        if (
            short
            and session.id in self.unreturned
            and session.turns_completed <= 1
            and session.audience.last_open() is None
        ):
            long = self.config.idle_timeout_s
            return (min(short, long) if long else short), "idle_unreturned"
        return self.config.idle_timeout_s, "idle"

    def _make_room(self, reason: str) -> AgentProcess | None:
        """Stop the least recently used agent process whose conversations are all idle (a
        slot frees once it has exited); returns it, None when every agent is busy."""
        idle = [host for host in self.pool.hosts.values() if host.evictable]
        if not idle:
            return None
        host = min(idle, key=lambda h: h.last_active)
        host.evicting = True  # its conversations all leave: no session/close for each
        for tenant in list(host.tenants):
            tenant.retire(reason)
            self.ownership.release(tenant.id)
        return host.agent

    # -- lifecycle ---------------------------------------------------------------------------

    def log_session(self, session: Session, event: str) -> None:
        """The canonical line per session."""
        agent = session.agent
        session.log.info(
            event,
            turns=session.turns_completed,
            updates_recorded=session.updates_recorded,
            events=session.last_seq,
            agent_pid=agent.pid if agent else None,
            state=session.state.value,
            live_s=round(time.monotonic() - session.created_mono, 3),
        )

    async def stop_agents(self) -> None:
        """Stop every agent (spares included) and wait until they have exited, bounded by
        their own stop sequence (SIGKILL after two grace periods): each closes the sessions
        it holds first, while what it says is still read and recorded."""
        agents = [s.agent for s in self.sessions.values() if s.agent is not None]
        agents += [a for a in self.pool.spares if a.alive]
        for agent in agents:
            agent.stop()
        with anyio.move_on_after(3 * self.config.kill_grace_s + 1):
            for agent in agents:
                await agent.exited.wait()

    def shutdown(self) -> None:
        """Stop every agent (spares included); log each session's line."""
        for session in self.sessions.values():
            self.log_session(session, "session.stopped")
            if session.agent is not None:
                session.agent.stop()
        self.pool.stop()


def _not_found(sid: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(
        f"Resource not found: session {sid} {why}", RESOURCE_NOT_FOUND, {"sessionId": sid}
    )
