"""Agent processes before they serve a conversation: spawning, warm spares, capabilities.

Every agent is spawned in the proxy's task group (never a client's), initialized once with
the fixed client capability set, and, if a client authenticated, authenticated the same way.
Warm spares hide the agent's start-up (≈1.5 s for opencode) from ``session/new`` and give a
client's ``initialize`` the agent command's capabilities.

``max_live_agents`` bounds the agents that serve (or are being bound to) conversations, from
the moment one is asked for until its process has exited: an agent being started or stopped
counts. When every slot is taken, the least recently used idle conversation is asked to give
its agent up (``make_room``, supplied by the layer above) and the request waits for a slot, up
to ``agent_start_timeout_s``, then fails with ``kind: "at_capacity"``. Spares are counted
apart (``warm_spares``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
        make_room: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.tg = tg
        self._store = store
        #: asks the least recently used idle conversation to stop its agent; False: none is
        self._make_room = make_room
        self.spares: list[AgentProcess] = []
        #: agents handed out for conversations and not exited yet, plus reservations
        self.bound = 0
        self._waiting = 0
        self._room_coming = 0
        self._slot_freed = anyio.Event()
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
            await self._initialize(agent, command, auth)
        except BaseException:
            # Cancelled (or failed) half way: the process is ours, never left running alone.
            agent.stop()
            raise
        if self.agent_info is None:
            self.agent_info = agent.initialize_result
        return agent

    async def _initialize(self, agent: AgentProcess, command: str, auth: Raw | None) -> None:
        config = self.config
        try:
            with anyio.fail_after(config.agent_start_timeout_s):
                await agent.initialize(config.client_capabilities)
                if auth is not None:
                    agent.scoped = True
                    await agent.call("authenticate", auth)
        except TimeoutError:
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
            raise AgentStartError(
                f"the agent `{command}` refused initialize: {exc}",
                INTERNAL_ERROR,
                {"kind": "agent_start_failed"},
            ) from None

    async def acquire(
        self,
        cwd: str,
        env: dict[str, str] | None = None,
        auth: Raw | None = None,
        owner: int | None = None,
    ) -> tuple[AgentProcess, SetupTimings]:
        """The agent ``owner`` (a client) authenticated, else a warm spare if one is ready
        (then a replacement is started), else a fresh agent; within ``max_live_agents`` (see
        the module docstring).

        Spares run with the proxy's own environment: a session that needs per-process values
        (``env``) gets a fresh agent. A spare taken for a client that authenticated
        (``auth``) is authenticated with that client's params; it is never a spare again.

        Raises:
            AgentStartError: no slot freed in time, or the agent could not be started.
        """
        await self._reserve_slot()
        try:
            agent, setup = await self._take_or_spawn(cwd, env, auth, owner)
        except BaseException:
            self._release_slot()
            raise
        agent.exit_callbacks.append(self._on_bound_exit)
        return agent, setup

    async def _take_or_spawn(
        self, cwd: str, env: dict[str, str] | None, auth: Raw | None, owner: int | None
    ) -> tuple[AgentProcess, SetupTimings]:
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
        """An agent handed out by :meth:`acquire` that holds no conversation (its session
        could not be created): a spare again if it runs with the proxy's own environment and
        no client's credentials and a spare is missing, else stopped. Its slot is free
        either way."""
        if self._on_bound_exit in agent.exit_callbacks:
            agent.exit_callbacks.remove(self._on_bound_exit)
            self._release_slot()
        fits = len(self.spares) < self.config.warm_spares
        if agent.alive and not agent.scoped and fits:
            self.spares.append(agent)
        else:
            agent.stop()

    async def _reserve_slot(self) -> None:
        cap = self.config.max_live_agents
        if self.bound < cap:
            self.bound += 1
            return
        self._waiting += 1
        try:
            with anyio.fail_after(self.config.agent_start_timeout_s):
                while self.bound >= cap:
                    if self._room_coming < self._waiting and self._make_room():
                        self._room_coming += 1
                    freed = self._slot_freed
                    await freed.wait()
        except TimeoutError:
            self.log.warning(
                "agents.at_capacity",
                bound=self.bound,
                cap=cap,
                hint="every agent is busy: raise max_live_agents or add memory",
            )
            raise AgentStartError(
                f"all {cap} agent slots (max_live_agents) stayed busy for "
                f"{self.config.agent_start_timeout_s} s; try again later",
                INTERNAL_ERROR,
                {"kind": "at_capacity", "maxLiveAgents": cap},
            ) from None
        finally:
            self._waiting -= 1
        self.bound += 1

    def _release_slot(self) -> None:
        self.bound -= 1
        self._room_coming = max(0, self._room_coming - 1)
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    def _on_bound_exit(self, agent: AgentProcess) -> None:
        self._release_slot()

    def room_changed(self) -> None:
        """A conversation became idle: a waiter may now make room."""
        if self._waiting:
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

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
