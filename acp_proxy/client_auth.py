"""A client's ``authenticate``, scoped to that client: its params (an API key, maybe) reach
only agents started for it, never a spare another client takes. A mixin of
:class:`~acp_proxy.pool.AgentPool`, which provides the spares and spawning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from msgspec import Raw

from .agent import AgentError, AgentExited, AgentProcess
from .config import Config
from .protocol import INTERNAL_ERROR, LocalProtocolError

__all__ = ["AgentStartError", "ClientAuth"]


class AgentStartError(LocalProtocolError):
    """The agent could not be started or did not complete ``initialize``."""


class ClientAuth:
    """The agent each client authenticated, held for that client's next ``session/new``."""

    config: Config
    tg: TaskGroup
    spares: list[AgentProcess]
    _held: dict[int, AgentProcess]
    #: drops the session an agent opened ahead, if any (``preopen.Preopening``)
    forget_preopened: Callable[[AgentProcess], None]

    async def spawn(
        self, cwd: str | None, env: dict[str, str] | None = None, auth: Raw | None = None
    ) -> AgentProcess:
        """Spawn an initialized agent (the pool's)."""
        raise NotImplementedError

    async def _add_spare(self) -> None:
        raise NotImplementedError

    def _scope(self, agent: AgentProcess) -> None:
        """``agent`` takes a client's credentials: it is that client's alone, and a session
        it opened ahead before them is not handed to that client."""
        agent.scoped = True
        self.forget_preopened(agent)

    async def _authenticate(self, agent: AgentProcess, auth: Raw) -> None:
        self._scope(agent)
        try:
            with anyio.fail_after(self.config.agent_start_timeout_s):
                await agent.call("authenticate", auth)
        except (AgentError, AgentExited, TimeoutError) as exc:
            agent.stop()
            raise AgentStartError(
                f"the agent refused this client's authenticate params: {exc}",
                INTERNAL_ERROR,
                {"kind": "agent_start_failed"},
            ) from None

    async def authenticate_for(self, owner: int, auth: Raw) -> dict[str, Any]:
        """Run a client's ``authenticate`` on an agent kept for that client alone.

        Raises:
            AgentError: the agent refused the params (the agent is stopped).
        """
        agent = self._held.pop(owner, None)
        if agent is None or not agent.alive:
            agent = await self._take_spare() or await self.spawn(None)
        self._scope(agent)
        try:
            result = await agent.call("authenticate", auth)
        except BaseException:
            agent.stop()
            raise
        self._held[owner] = agent
        return result

    async def _take_spare(self) -> AgentProcess | None:
        while self.spares:
            agent = self.spares.pop(0)
            if agent.alive:
                if len(self.spares) < self.config.warm_spares:
                    self.tg.start_soon(self._add_spare)
                return agent
        return None

    def release_owner(self, owner: int) -> None:
        """A client left: stop the agent it authenticated and did not use."""
        agent = self._held.pop(owner, None)
        if agent is not None:
            agent.stop()
