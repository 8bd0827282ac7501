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

Spares run with the proxy's own environment, so with ``per_process_env`` every new
conversation would start a cold agent. The pool therefore also keeps one spare per set of
per-process values seen recently (``env_spares`` sets, least recently used dropped): a new
conversation in a known workspace takes a warm agent. These take a ``max_live_agents`` slot
each, are started only when a slot is free, and are the first thing stopped when a
conversation needs a slot.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup
from msgspec import Raw

from store import SessionStore

from .agent import AgentError, AgentExited, AgentProcess
from .config import Config
from .logs import get_logger
from .protocol import INTERNAL_ERROR, LocalProtocolError
from .tool_env import ToolEnv

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
        #: ``authenticate`` params a client used; replayed on every agent spawned later
        self.auth_params: Raw | None = None
        #: per-process value sets seen recently (least recently used first), each with its
        #: spare once one is ready; an env spare holds a ``max_live_agents`` slot
        self.recent_envs: OrderedDict[_EnvKey, AgentProcess | None] = OrderedDict()
        self._env_spares_starting: set[_EnvKey] = set()
        #: per-process variables each agent was started with ({}: the proxy's own)
        self.process_env: dict[AgentProcess, dict[str, str]] = {}
        #: every agent's BASH_ENV file: the running turn's variables for its tool processes
        self.tool_env = ToolEnv()
        #: called with every line an agent writes to stderr (the hub relays them)
        self.on_stderr: Callable[[AgentProcess, str], None] = lambda agent, line: None
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

    async def spawn(self, cwd: str | None, env: dict[str, str] | None = None) -> AgentProcess:
        """Spawn the agent command (``env`` added to ours) and complete ``initialize``.

        Raises:
            AgentStartError: it could not be started, exited, erred or timed out.
        """
        config = self.config
        agent = AgentProcess(
            config.agent_command,
            cwd=_usable_dir(cwd) or config.agent_cwd or None,
            env={**os.environ, **env} if env else None,
            store=self._store,
            max_line_bytes=config.max_line_bytes,
            kill_grace_s=config.kill_grace_s,
        )
        if config.tool_env:
            agent.env = {**(agent.env or os.environ), "BASH_ENV": self.tool_env.new_file(agent)}
        self.process_env[agent] = dict(env or {})
        agent.exit_callbacks.append(self._forget)
        agent.on_stderr = lambda agent, line: self.on_stderr(agent, line)
        command = " ".join(config.agent_command)
        try:
            await self.tg.start(agent.run)
        except OSError as exc:
            self._forget(agent)
            raise AgentStartError(
                f"cannot start the agent `{command}`: {exc}; check the command after `--`",
                INTERNAL_ERROR,
                {"kind": "agent_spawn_failed", "command": config.agent_command},
            ) from None
        try:
            await self._initialize(agent, command)
        except BaseException:
            # Cancelled (or failed) half way: the process is ours, never left running alone.
            agent.stop()
            raise
        if self.agent_info is None:
            self.agent_info = agent.initialize_result
        return agent

    async def _initialize(self, agent: AgentProcess, command: str) -> None:
        config = self.config
        try:
            with anyio.fail_after(config.agent_start_timeout_s):
                await agent.initialize(config.client_capabilities)
                if self.auth_params is not None:
                    await agent.call("authenticate", self.auth_params)
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
        self, cwd: str, env: dict[str, str] | None = None
    ) -> tuple[AgentProcess, SetupTimings]:
        """A warm spare if one is ready (then a replacement is started), else a fresh agent;
        within ``max_live_agents`` (see the module docstring).

        A session that needs per-process values (``env``) gets the spare kept for those
        values if one is ready (it keeps its slot), else a fresh agent; either way a spare
        for them is started next, if a slot is free.

        Raises:
            AgentStartError: no slot freed in time, or the agent could not be started.
        """
        if env and self.config.env_spares:
            key = _env_key(env)
            spare = self.recent_envs.pop(key, None)
            self.recent_envs[key] = None  # most recently used now
            while len(self.recent_envs) > self.config.env_spares:
                _old, dropped = self.recent_envs.popitem(last=False)
                if dropped is not None:
                    dropped.stop()  # its slot frees when it has exited
            self.tg.start_soon(self._add_env_spare, key)
            if spare is not None and spare.alive:
                return spare, SetupTimings("spare")
            if spare is not None:
                spare.stop()
        await self._reserve_slot()
        try:
            agent, setup = await self._take_or_spawn(cwd, env)
        except BaseException:
            self._release_slot()
            raise
        agent.exit_callbacks.append(self._on_bound_exit)
        return agent, setup

    async def _take_or_spawn(
        self, cwd: str, env: dict[str, str] | None
    ) -> tuple[AgentProcess, SetupTimings]:
        while self.spares and not env:
            agent = self.spares.pop(0)
            if agent.alive:
                if len(self.spares) < self.config.warm_spares:
                    self.tg.start_soon(self._add_spare)
                return agent, SetupTimings("spare")
        agent = await self.spawn(cwd, env)
        return agent, SetupTimings("cold", cli_ready_ms=agent.cli_ready_ms)

    async def _add_env_spare(self, key: _EnvKey) -> None:
        """Start the spare for a recent per-process value set, if none is there or starting
        and a slot is free (never waits for one: conversations come first)."""
        if (
            key not in self.recent_envs
            or self.recent_envs[key] is not None
            or key in self._env_spares_starting
            or self.bound >= self.config.max_live_agents
        ):
            return
        self.bound += 1
        self._env_spares_starting.add(key)
        try:
            agent = await self.spawn(None, dict(key))
        except AgentStartError as exc:
            self._release_slot()
            self.log.error("agent.env_spare_failed", error=exc.message, data=exc.data)
            return
        finally:
            self._env_spares_starting.discard(key)
        agent.exit_callbacks.append(self._on_bound_exit)
        if key in self.recent_envs and self.recent_envs[key] is None:
            self.recent_envs[key] = agent
            self.log.info("agent.env_spare_ready", agent_pid=agent.pid, names=[k for k, _ in key])
        else:  # the value set was dropped meanwhile
            agent.stop()

    def _drop_env_spare(self) -> bool:
        """Stop the least recently used env spare (a conversation needs its slot)."""
        for key, spare in self.recent_envs.items():
            if spare is not None:
                self.recent_envs[key] = None
                spare.stop()
                return True
        return False

    def give_back(self, agent: AgentProcess) -> None:
        """An agent handed out by :meth:`acquire` that holds no conversation: it becomes a
        spare again if it runs with the proxy's own environment and a spare is missing,
        else it is stopped. Its slot is free either way."""
        if self._on_bound_exit in agent.exit_callbacks:
            agent.exit_callbacks.remove(self._on_bound_exit)
            self._release_slot()
        own_env = not self.process_env.get(agent)
        if agent.alive and own_env and len(self.spares) < self.config.warm_spares:
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
                    if self._room_coming < self._waiting and (
                        self._drop_env_spare() or self._make_room()
                    ):
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

    def _forget(self, agent: AgentProcess) -> None:
        self.process_env.pop(agent, None)
        self.tool_env.remove(agent)

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

    async def any_agent(self) -> AgentProcess:
        """An initialized agent for connection-level calls (``authenticate``): a spare."""
        for agent in self.spares:
            if agent.alive:
                return agent
        agent = await self.spawn(None)
        self.spares.append(agent)
        return agent

    def stop(self) -> None:
        """Stop every spare."""
        for agent in [*self.spares, *self.recent_envs.values()]:
            if agent is not None:
                agent.stop()


_EnvKey = tuple[tuple[str, str], ...]


def _env_key(env: dict[str, str]) -> _EnvKey:
    return tuple(sorted(env.items()))


def _usable_dir(cwd: str | None) -> str | None:
    """The session's cwd when it exists on this host (agents get it in ACP params anyway)."""
    return cwd if cwd is not None and os.path.isdir(cwd) else None
