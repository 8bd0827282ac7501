"""Which spares to keep: one per recent per-process value set (``env_spares``), and none
beside a shared process with room.

With ``per_process_env`` a new conversation would otherwise start a cold agent: one spare per
value set seen recently (least recently used dropped), each holding a ``max_live_agents``
slot, started only when a slot is free, and the first thing stopped when a conversation
needs one. With ``max_sessions_per_agent`` above 1, a spare is started only once the
processes of its environment have no free place left. A mixin of
:class:`~acp_proxy.pool.AgentPool`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from anyio.abc import TaskGroup

from .agent import AgentProcess
from .client_auth import AgentStartError
from .config import Config

__all__ = ["EnvKey", "EnvSpares"]

#: A per-process value set, sorted: the key of its spare (and of agents that may share).
EnvKey = tuple[tuple[str, str], ...]


class EnvSpares:
    """The spares kept for recent per-process value sets."""

    config: Config
    bound: int
    log: Any
    recent_envs: OrderedDict[EnvKey, AgentProcess | None]
    _env_spares_starting: set[EnvKey]
    _release_slot: Callable[[], None]
    _on_bound_exit: Callable[[AgentProcess], None]
    _has_room: Callable[[EnvKey], bool]
    preopen: Callable[[AgentProcess, EnvKey], None]
    spares: list[AgentProcess]
    _spares_starting: int
    tg: TaskGroup

    async def _add_spare(self) -> None:
        """Start a spare with the proxy's own environment (the pool's)."""
        raise NotImplementedError

    async def spawn(
        self, cwd: str | None, env: dict[str, str] | None = None, auth: Any = None
    ) -> AgentProcess:
        """Spawn an initialized agent (the pool's)."""
        raise NotImplementedError

    async def _add_env_spare(self, key: EnvKey) -> None:
        """Start the spare for a recent per-process value set, if none is there or starting
        and a slot is free (never waits for one: conversations come first)."""
        if (
            key not in self.recent_envs
            or self.recent_envs[key] is not None
            or key in self._env_spares_starting
            or self.bound >= self.config.max_live_agents
            or self._has_room(key)  # a process with these values has a free place
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
            self.preopen(agent, key)
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

    def _replenish_if_full(self, key: EnvKey) -> None:
        """The last free place of ``key``'s processes was just taken: the spare skipped while
        there was room is started now."""
        if self._has_room(key):
            return
        if key == ():
            if len(self.spares) + self._spares_starting < self.config.warm_spares:
                self.tg.start_soon(self._add_spare)
        elif key in self.recent_envs:
            self.tg.start_soon(self._add_env_spare, key)

    def _idle_spares(self, key: EnvKey) -> list[AgentProcess]:
        """The ready spares with environment ``key``."""
        if key == ():
            return [agent for agent in self.spares if agent.alive]
        spare = self.recent_envs.get(key)
        return [spare] if spare is not None and spare.alive else []
