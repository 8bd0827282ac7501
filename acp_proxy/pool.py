"""Agent processes before they serve a conversation: spawning, warm spares, capabilities.

Every agent is spawned in the proxy's task group (never a client's), initialized once with
the fixed client capability set, and, if a client authenticated, authenticated the same way.
Warm spares hide the agent's start-up (≈1.5 s for opencode) from ``session/new`` and give a
client's ``initialize`` the agent command's capabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup
from msgspec import Raw

from store import SessionStore

from .agent import AgentError, AgentExited, AgentProcess
from .agent_env import agent_environment
from .config import Config
from .logs import get_logger
from .protocol import INTERNAL_ERROR, LocalProtocolError

__all__ = ["AgentPool", "AgentStartError", "SetupTimings"]


class AgentStartError(LocalProtocolError):
    """The agent could not be started or did not complete ``initialize``."""


@dataclass
class SetupTimings:
    """How the agent behind a session was obtained, reported on the next turn."""

    agent: str = "warm"  #: ``warm`` | ``spare`` | ``cold`` | ``restored:<rung>``
    cli_ready_ms: float = 0.0
    session_init_ms: float = 0.0


class AgentPool:
    """Spawns agents and keeps ``warm_spares`` of them ready."""

    def __init__(
        self,
        config: Config,
        tg: TaskGroup,
        store: SessionStore,
    ) -> None:
        self.config = config
        self.tg = tg
        self._store = store
        self.spares: list[AgentProcess] = []
        #: the agent command's ``initialize`` result, learnt from the first agent started
        self.agent_info: dict[str, Any] | None = None
        self._info_lock = anyio.Lock()
        self._spares_starting = 0
        self._spare_settled = anyio.Event()  #: set (and replaced) when a spare start ends
        #: agents a client authenticated (``authenticate``), kept for that client's next
        #: ``session/new``: never a spare another client could take
        self._held: dict[int, AgentProcess] = {}
        self.log = get_logger(component="pool")

    def start_spares(self) -> None:
        """Pre-spawn the configured number of warm spare agents."""
        for _ in range(self.config.warm_spares):
            self.tg.start_soon(self._add_spare)

    async def _add_spare(self) -> None:
        self._spares_starting += 1
        try:
            agent = await self.spawn(None)
        except AgentStartError as exc:
            self.log.error("agent.spare_failed", error=exc.message, data=exc.data)
            return
        finally:
            self._spares_starting -= 1
            self._spare_settled.set()
            self._spare_settled = anyio.Event()
        self.spares.append(agent)

    async def spawn(
        self, cwd: str | None, env: dict[str, str] | None = None, auth: Raw | None = None
    ) -> AgentProcess:
        """Spawn the agent command (``env`` added to ours) and complete ``initialize`` (then
        ``authenticate`` with ``auth``, a client's own params, if given).

        Raises:
            AgentStartError: it could not be started, exited, erred or timed out.
        """
        config = self.config
        agent = AgentProcess(
            config.agent_command,
            cwd=_usable_dir(cwd) or config.agent_cwd or None,
            env=agent_environment(
                os.environ, allow=config.agent_env_allow, store_url=config.db, extra=env
            ),
            store=self._store,
            max_line_bytes=config.max_line_bytes,
            kill_grace_s=config.kill_grace_s,
            stdin_limit_bytes=config.agent_stdin_bytes,
        )
        agent.scoped = bool(env)  # a client's per-process values: never another's spare
        command = " ".join(config.agent_command)
        try:
            await self.tg.start(agent.run)
        except OSError as exc:
            raise AgentStartError(
                f"cannot start the agent `{command}`: {exc}; check the command after `--`",
                INTERNAL_ERROR,
                {"kind": "agent_spawn_failed", "command": config.agent_command},
            ) from None
        try:
            with anyio.fail_after(config.agent_start_timeout_s):
                await agent.initialize(config.client_capabilities)
                if auth is not None:
                    agent.scoped = True
                    await agent.call("authenticate", auth)
        except TimeoutError:
            agent.stop()
            raise AgentStartError(
                f"the agent `{command}` did not answer initialize within "
                f"{config.agent_start_timeout_s} s; is it an ACP agent on stdio?",
                INTERNAL_ERROR,
                {"kind": "agent_start_timeout"},
            ) from None
        except AgentExited as exc:
            raise AgentStartError(
                f"the agent `{command}` failed to start: {exc}",
                INTERNAL_ERROR,
                {**exc.info.as_data(), "kind": "agent_start_failed"},
            ) from None
        except AgentError as exc:
            agent.stop()
            raise AgentStartError(
                f"the agent `{command}` refused initialize: {exc}",
                INTERNAL_ERROR,
                {"kind": "agent_start_failed"},
            ) from None
        if self.agent_info is None:
            self.agent_info = agent.initialize_result
        return agent

    async def acquire(
        self,
        cwd: str,
        env: dict[str, str] | None = None,
        auth: Raw | None = None,
        owner: int | None = None,
    ) -> tuple[AgentProcess, SetupTimings]:
        """The agent ``owner`` (a client) authenticated, else a warm spare if one is ready
        (then a replacement is started), else a fresh agent.

        Spares run with the proxy's own environment: a session that needs per-process values
        (``env``) gets a fresh agent. A spare taken for a client that authenticated
        (``auth``) is authenticated with that client's params; it is never a spare again.
        """
        held = self._held.pop(owner, None) if owner is not None else None
        if held is not None and held.alive and not env:
            return held, SetupTimings("spare")
        if held is not None:
            held.stop()
        while self.spares and not env:
            agent = self.spares.pop(0)
            if agent.alive:
                if len(self.spares) < self.config.warm_spares:
                    self.tg.start_soon(self._add_spare)
                if auth is not None:
                    await self._authenticate(agent, auth)
                return agent, SetupTimings("spare")
        agent = await self.spawn(cwd, env, auth)
        return agent, SetupTimings("cold", cli_ready_ms=agent.cli_ready_ms)

    async def _authenticate(self, agent: AgentProcess, auth: Raw) -> None:
        agent.scoped = True
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
        agent.scoped = True
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

    def give_back(self, agent: AgentProcess) -> None:
        """An agent taken for a session that could not be created: a spare again if it was
        started without per-client values, else stopped."""
        if agent.alive and not agent.scoped and len(self.spares) < self.config.warm_spares:
            self.spares.append(agent)
        else:
            agent.stop()

    async def ensure_agent_info(self) -> dict[str, Any]:
        """The agent command's ``initialize`` result, spawning a spare to learn it if needed."""
        async with self._info_lock:
            # A spare already starting will tell: a second agent started beside it would
            # race it (opencode: two first starts on one data dir, "database is locked").
            while self.agent_info is None and self._spares_starting:
                await self._spare_settled.wait()
            if self.agent_info is None:
                self.spares.append(await self.spawn(None))
            assert self.agent_info is not None
            return self.agent_info

    def stop(self) -> None:
        """Stop every spare and every agent held for a client."""
        for agent in [*self.spares, *self._held.values()]:
            agent.stop()


def _usable_dir(cwd: str | None) -> str | None:
    """The session's cwd when it exists on this host (agents get it in ACP params anyway)."""
    return cwd if cwd is not None and os.path.isdir(cwd) else None
