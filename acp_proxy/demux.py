"""One agent process, several conversations: the agent's session ids mapped to sessions.

ACP lets one connection carry many sessions; every ``session/update`` and every agent →
client request names its ``sessionId``. An :class:`AgentSessions` is the
:class:`~acp_proxy.agent.AgentHandler` of an agent process that serves conversations: it maps
the agent's own session ids to the sessions (its *tenants*) and hands each message to the
tenant it names. Answers to the proxy's requests are routed by request id already
(``AgentProcess.send_request``), so a turn of one tenant never waits for another's.

A message whose session id is not (yet) known goes to the tenant being bound (the agent may
speak before it has answered ``session/new`` with its id; binds on one process are serialised
by :attr:`AgentSessions.bind_lock`), else to the only tenant, else it is dropped (logged); one
naming a session that left this process is dropped (its late output belongs to nobody). An
agent's ``$/cancel_request`` names a request, not a session: every tenant looks whether the
request is one of its own. When the process ends, every tenant hears it.

Nothing here awaits or knows the store: tenants decide, the agent transport does the I/O.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final, Protocol

import anyio
from msgspec import Raw

from .agent import AgentHandler, AgentProcess, Batch
from .protocol import (
    METHOD_NOT_FOUND,
    Call,
    ProtocolError,
    Request,
    SessionUpdate,
    get_str,
    object_members,
)

__all__ = ["AgentSessions", "Tenant", "with_room"]

#: Agent session ids of departed tenants remembered per process.
_DEPARTED_KEPT: Final = 1024


class Tenant(AgentHandler, Protocol):
    """What the demux and the pool read of a session an agent carries."""

    @property
    def evictable(self) -> bool:
        """Live and idle: its agent may be stopped without losing anything."""
        ...

    @property
    def last_active(self) -> float:
        """Monotonic time of its last activity."""
        ...

    @property
    def id(self) -> str:
        """The proxy's session id."""
        ...

    def retire(self, reason: str) -> AgentProcess | None:
        """Stop using its agent (the process goes when no other tenant uses it)."""
        ...


class AgentSessions:
    """The tenants of one agent process, by the agent's session id."""

    def __init__(self, agent: AgentProcess, env_key: tuple[tuple[str, str], ...]) -> None:
        self.agent = agent
        #: the per-process environment the agent runs with (sharing needs an equal one)
        self.env_key = env_key
        #: every session that holds (or is being bound to) a place on this process
        self.tenants: list[Tenant] = []
        self._by_upstream: dict[str, Tenant] = {}
        #: agent session ids of tenants that left: what the agent still says for them is
        #: dropped, never given to a binder (bounded: the oldest are forgotten)
        self._departed: dict[str, None] = {}
        #: the tenant whose session/new, load or resume is in flight (at most one)
        self.binding: Tenant | None = None
        #: held around a bind: messages with an unknown session id belong to the binder
        self.bind_lock = anyio.Lock()
        #: directories a session was bound in on this process (bootstrapped: cheap again)
        self.cwds: set[str] = set()
        #: every tenant is leaving at once (the agent is being evicted): no session/close
        self.evicting = False
        #: tenants of an evicted process that have left (the process stops when all have)
        self.leaving: set[Tenant] = set()
        self.idle_since = time.monotonic()
        self.log = agent.log.bind(component="demux")

    # -- membership --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tenants)

    def add(self, tenant: Tenant) -> None:
        """``tenant`` takes a place (before its bind starts)."""
        if tenant not in self.tenants:
            self.tenants.append(tenant)

    def route(self, upstream_id: str, tenant: Tenant, cwd: str | None = None) -> None:
        """Messages naming ``upstream_id`` go to ``tenant`` from now on."""
        self._by_upstream[upstream_id] = tenant
        self._departed.pop(upstream_id, None)  # restored onto this process again
        if cwd is not None:
            self.cwds.add(cwd)

    def ignore(self, upstream_id: str) -> None:
        """What the agent says under ``upstream_id`` (a session no tenant uses) is dropped."""
        if upstream_id not in self._by_upstream:
            self._departed[upstream_id] = None

    def remove(self, tenant: Tenant) -> list[str]:
        """``tenant`` leaves; returns the agent session ids it held here."""
        if tenant in self.tenants:
            self.tenants.remove(tenant)
        if self.binding is tenant:
            self.binding = None
        gone = [sid for sid, t in self._by_upstream.items() if t is tenant]
        for sid in gone:
            del self._by_upstream[sid]
            self._departed[sid] = None
        while len(self._departed) > _DEPARTED_KEPT:
            del self._departed[next(iter(self._departed))]
        if not self.tenants:
            self.idle_since = time.monotonic()
        return gone

    @asynccontextmanager
    async def binding_of(self, tenant: Tenant) -> AsyncIterator[None]:
        """Around one bind (``session/new``, ``load``, ``resume``) of ``tenant``: what the
        agent says under a session id not known yet is the binder's. One bind at a time per
        process; :meth:`route` the new id before leaving the block."""
        async with self.bind_lock:
            self.binding = tenant
            try:
                yield
            finally:
                self.binding = None

    @property
    def evictable(self) -> bool:
        """Every tenant is idle (so the process may be stopped), and there is one at least."""
        return bool(self.tenants) and all(t.evictable for t in self.tenants)

    @property
    def last_active(self) -> float:
        """The most recent activity of any tenant (an agent is as recent as its newest)."""
        return max((t.last_active for t in self.tenants), default=self.idle_since)

    # -- AgentHandler ------------------------------------------------------------------------

    def _tenant_for(self, upstream_id: str | None) -> Tenant | None:
        if upstream_id is not None:
            tenant = self._by_upstream.get(upstream_id)
            if tenant is not None:
                return tenant
            if upstream_id in self._departed:
                return None
        if self.binding is not None:
            return self.binding
        if len(self.tenants) == 1:
            return self.tenants[0]  # one conversation: everything it says is its own
        return None

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        """Route one ``session/update`` by its ``sessionId`` (the hot path: one lookup)."""
        tenant = self._by_upstream.get(params.sessionId) or self._tenant_for(params.sessionId)
        if tenant is None:
            self.log.debug("agent.update_unrouted", upstream_session_id=params.sessionId)
            return
        tenant.on_session_update(agent, params, batch)

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        """Route a request or notification by ``params.sessionId``; ``$/cancel_request``
        goes to every tenant (only the one that forwarded that request acts on it)."""
        if msg.method == "$/cancel_request":
            for member in list(self.tenants):
                member.on_agent_message(agent, msg, batch)
            return
        tenant = self._tenant_for(_session_id(msg.params))
        if tenant is not None:
            tenant.on_agent_message(agent, msg, batch)
        elif isinstance(msg, Request):
            agent.send_error(
                msg.id, METHOD_NOT_FOUND, f"{msg.method}: no session of this process is named"
            )
        else:
            self.log.debug("agent.notification_unrouted", method=msg.method)

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        """The process ended: every tenant loses its agent (each restores on next use)."""
        for tenant in list(self.tenants):
            tenant.on_agent_exit(agent, batch)


def with_room(
    hosts: Iterable[AgentSessions], key: tuple[tuple[str, str], ...], room: int, cwd: str = ""
) -> AgentSessions | None:
    """A live process with environment ``key`` and fewer than ``room`` tenants: one that
    bootstrapped ``cwd`` first, then the fullest (conversations packed, fewer processes)."""
    if room <= 1:
        return None
    fits = [
        h
        for h in hosts
        if h.agent.alive and not h.evicting and h.env_key == key and 0 < len(h) < room
    ]
    if not fits:
        return None
    return max(fits, key=lambda h: (cwd in h.cwds, len(h)))


def _session_id(params: Raw) -> str | None:
    try:
        return get_str(object_members(params), "sessionId")
    except ProtocolError:
        return None
