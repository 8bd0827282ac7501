"""The demux of one agent process: which tenant each message of the agent goes to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from msgspec import Raw

from acp_proxy.agent import AgentProcess, Batch
from acp_proxy.demux import AgentSessions
from acp_proxy.protocol import Call, Notification, SessionUpdate

pytestmark = pytest.mark.trio


class _Tenant:
    def __init__(self) -> None:
        self.updates: list[str] = []
        self.messages: list[str] = []
        self.exits = 0
        self.evictable = True
        self.last_active = 0.0

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        self.updates.append(params.sessionId)

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        self.messages.append(msg.method)

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        self.exits += 1

    def retire(self, reason: str) -> AgentProcess | None:
        return None


@pytest.fixture
async def agent() -> AsyncIterator[AgentProcess]:
    """An agent transport never started (nothing is spawned, read or committed)."""
    store: Any = None
    process = AgentProcess(
        ["true"], cwd=None, env=None, store=store, max_line_bytes=1 << 20, kill_grace_s=0.1
    )
    yield process
    process._decided_send.close()  # its pipeline's stream, normally closed by run()
    process._decided_receive.close()


def _update(sid: str) -> SessionUpdate:
    return SessionUpdate(sessionId=sid, update=Raw(b'{"sessionUpdate":"plan","entries":[]}'))


async def test_updates_go_by_session_id_unknown_ones_to_the_binder(agent: AgentProcess) -> None:
    """Known ids go to their tenant; an unknown id goes to the tenant being bound, and with
    no bind and several tenants it is dropped; a departed tenant's id is dropped, not given
    to a binder; every tenant hears the exit."""
    host = AgentSessions(agent, ())
    a, b, c = _Tenant(), _Tenant(), _Tenant()
    for tenant in (a, b):
        host.add(tenant)
    host.route("up-a", a)
    host.route("up-b", b)
    batch = Batch()
    for sid in ("up-a", "up-b", "up-b", "unknown"):
        host.on_session_update(agent, _update(sid), batch)
    assert (a.updates, b.updates) == (["up-a"], ["up-b", "up-b"])
    host.remove(a)
    host.add(c)
    async with host.binding_of(c):
        host.on_session_update(agent, _update("up-c-early"), batch)
        host.on_session_update(agent, _update("up-a"), batch)  # a left: nobody's
        host.route("up-c", c)
    host.on_session_update(agent, _update("up-c"), batch)
    assert c.updates == ["up-c-early", "up-c"]
    assert a.updates == ["up-a"]
    notification = Notification("$/cancel_request", Raw(b'{"requestId":3}'))
    host.on_agent_message(agent, notification, batch)
    assert b.messages == c.messages == ["$/cancel_request"]
    host.on_agent_exit(agent, batch)
    assert (a.exits, b.exits, c.exits) == (0, 1, 1)


async def test_one_tenant_gets_everything_but_a_departed_id(agent: AgentProcess) -> None:
    """With one tenant, a message naming no known id is its own (today's one-per-process
    behaviour), unless it names a session that left."""
    host = AgentSessions(agent, ())
    a, b = _Tenant(), _Tenant()
    host.add(a)
    host.add(b)
    host.route("up-b", b)
    host.remove(b)
    host.on_session_update(agent, _update("anything"), Batch())
    host.on_session_update(agent, _update("up-b"), Batch())
    assert a.updates == ["anything"]
    assert b.updates == []
    assert host.evictable
    a.evictable = False
    assert not host.evictable
