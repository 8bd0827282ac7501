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

With ``max_sessions_per_agent`` above 1, a conversation first takes a place on an agent
process that already serves others with the same per-process environment and has room (one
that bootstrapped the same directory first): no slot, no spawn. Every agent serving
conversations has an :class:`~acp_proxy.demux.AgentSessions` as its handler; a conversation
that leaves a process others still use gets ``session/close`` sent (when the agent advertises
it) and the process stays; the last one to leave stops it.

With ``max_agents_memory_mb``, a new agent process also has to fit in the memory budget
(``budget.py``): idle agents are asked to make room as for the slots, and the request fails
with ``kind: "memory_budget"`` when none became free in time. :meth:`AgentPool.watch_memory`
stops spares, then the least recently used idle agents, while the fleet is over budget.

Spares run with the proxy's own environment, so with ``per_process_env`` every new
conversation would start a cold agent. The pool therefore also keeps one spare per set of
per-process values seen recently (``env_spares`` sets, least recently used dropped): a new
conversation in a known workspace takes a warm agent. These take a ``max_live_agents`` slot
each, are started only when a slot is free, and are the first thing stopped when a
conversation needs a slot.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import Raw

from store import SessionStore

from .agent import UNBOUND, AgentError, AgentExited, AgentProcess, Batch
from .agent_env import agent_environment
from .client_auth import AgentStartError, ClientAuth
from .config import Config
from .demux import AgentSessions, Tenant, with_room
from .env_spares import EnvKey, EnvSpares
from .fleet_memory import AgentMemoryBudget, FleetMemory
from .logs import get_logger
from .preopen import Preopening
from .protocol import INTERNAL_ERROR, ErrorResponse, Response
from .tool_env import ToolEnv

__all__ = ["AgentPool", "AgentStartError", "SetupTimings"]

#: How often a request waiting for memory looks again (spares stopping free no slot).
_MEMORY_WAIT_POLL_S: Final = 0.25


@dataclass
class SetupTimings:
    """How the agent behind a session was obtained, reported on the next turn."""

    #: ``warm`` | ``spare`` | ``preopened`` | ``cold`` | ``shared`` | ``restored:<rung>``
    agent: str = "warm"
    cli_ready_ms: float = 0.0
    session_init_ms: float = 0.0


class AgentPool(ClientAuth, FleetMemory, EnvSpares, Preopening):
    """Spawns agents and keeps ``warm_spares`` of them ready."""

    def __init__(
        self,
        config: Config,
        tg: TaskGroup,
        store: SessionStore,
        make_room: Callable[[str], AgentProcess | None] = lambda reason: None,
    ) -> None:
        self.config = config
        self.tg = tg
        self._store = store
        #: asks the least recently used idle agent to stop; returns it (None: none is idle)
        self._make_room = make_room
        self.spares: list[AgentProcess] = []
        #: every agent process serving conversations, with its tenants
        self.hosts: dict[AgentProcess, AgentSessions] = {}
        self.budget = AgentMemoryBudget.from_mb(config.max_agents_memory_mb)
        #: agents stopped to keep within the memory budget, by role (for the metrics)
        self.memory_stops: dict[str, int] = {"spare": 0, "session": 0}
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
        self._spare_waiters = 0  #: conversations waiting for a spare being started
        #: agents a client authenticated (``authenticate``), kept for that client's next
        #: ``session/new``: never a spare another client could take
        self._held: dict[int, AgentProcess] = {}
        #: per-process value sets seen recently (least recently used first), each with its
        #: spare once one is ready; an env spare holds a ``max_live_agents`` slot
        self.recent_envs: OrderedDict[EnvKey, AgentProcess | None] = OrderedDict()
        self._env_spares_starting: set[EnvKey] = set()
        #: per-process variables each agent was started with ({}: the proxy's own)
        self.process_env: dict[AgentProcess, dict[str, str]] = {}
        #: every agent's BASH_ENV file: the running turn's variables for its tool processes
        self.tool_env = ToolEnv()
        #: called with every line an agent writes to stderr (the hub relays them)
        self.on_stderr: Callable[[AgentProcess, str], None] = lambda agent, line: None
        self.log = get_logger(component="pool")
        self._init_preopening()

    def start_spares(self) -> None:
        """Pre-spawn the configured number of warm spare agents."""
        for _ in range(self.config.warm_spares):
            self.tg.start_soon(self._add_spare)

    async def _add_spare(self) -> None:
        if self._has_room(()):
            return  # a new conversation takes a place there: a spare would only cost memory
        if not self._memory_fits(measure=True):
            self.log.warning(
                "agent.spare_skipped",
                reason="max_agents_memory_mb",
                memory=self.budget.describe() if self.budget else None,
            )
            return
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
        self.preopen(agent, ())

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
        env: dict[str, str] | None,
        tenant: Tenant,
        auth: Raw | None = None,
        owner: int | None = None,
    ) -> tuple[AgentSessions, SetupTimings]:
        """An agent process (with its tenants) for ``tenant``: a place on a live one with room
        (see the module docstring), else the agent ``owner`` (a client) authenticated, else a
        warm spare if one is ready (then a replacement is started), else a fresh agent; within
        ``max_live_agents`` and the memory budget.

        Spares run with the proxy's own environment: a session that needs per-process values
        (``env``) shares an agent started with the same values, else takes the spare kept for
        those values if one is ready (it keeps its slot), else a fresh agent; a spare for them
        is started next, if a slot is free. A spare taken for a client that authenticated
        (``auth``) is authenticated with that client's params; it is never a spare again.

        Raises:
            AgentStartError: no slot or memory freed in time, or the agent could not start.
        """
        key = _env_key(env)
        host = self._host_with_room(cwd, key) if auth is None else None
        if host is not None:
            host.add(tenant)
            self._replenish_if_full(key)
            self.note_dir(key, cwd)
            return host, SetupTimings("shared")
        if env and self.config.env_spares and auth is None:
            spare = self.recent_envs.pop(key, None)
            self.recent_envs[key] = None  # most recently used now
            while len(self.recent_envs) > self.config.env_spares:
                _old, dropped = self.recent_envs.popitem(last=False)
                if dropped is not None:
                    dropped.stop()  # its slot frees when it has exited
            self.tg.start_soon(self._add_env_spare, key)
            if spare is not None and spare.alive:
                self.note_dir(key, cwd)  # (the spare is taken: the next one opens ahead)
                return self._host(spare, key, tenant), SetupTimings("spare")
            if spare is not None:
                spare.stop()
        await self._reserve_slot(needs_memory=not (self._spare_ready() and not env))
        try:
            agent, setup = await self._take_or_spawn(cwd, env, auth, owner)
        except BaseException:
            self._release_slot()
            raise
        agent.exit_callbacks.append(self._on_bound_exit)
        if auth is None:
            self.note_dir(key, cwd)
        return self._host(agent, key, tenant), setup

    def _host(self, agent: AgentProcess, key: EnvKey, tenant: Tenant) -> AgentSessions:
        """``agent`` (holding a slot) becomes the process of ``tenant``."""
        host = AgentSessions(agent, key)
        host.add(tenant)
        agent.handler = host
        self.hosts[agent] = host
        return host

    def _host_with_room(self, cwd: str, key: EnvKey) -> AgentSessions | None:
        return with_room(self.hosts.values(), key, self.config.max_sessions_per_agent, cwd)

    def _has_room(self, key: EnvKey) -> bool:
        """Whether a live process with environment ``key`` has a free place."""
        return with_room(self.hosts.values(), key, self.config.max_sessions_per_agent) is not None

    def _spare_ready(self) -> bool:
        return any(agent.alive for agent in self.spares)

    async def _take_or_spawn(
        self, cwd: str, env: dict[str, str] | None, auth: Raw | None, owner: int | None
    ) -> tuple[AgentProcess, SetupTimings]:
        held = self._held.pop(owner, None) if owner is not None else None
        if held is not None and held.alive and not env:
            return held, SetupTimings("spare")
        if held is not None:
            held.stop()
        for attempt in range(2):
            spare = None if env else await self._take_spare()
            if spare is not None:
                if auth is not None:
                    await self._authenticate(spare, auth)
                return spare, SetupTimings("spare")
            # None ready, but one starting is further along than a new process would be.
            if attempt or env or self._spare_waiters >= self._spares_starting:
                break
            self._spare_waiters += 1
            try:
                with anyio.move_on_after(self.config.agent_start_timeout_s):
                    await self._spare_settled.wait()
            finally:
                self._spare_waiters -= 1
        agent = await self.spawn(cwd, env, auth)
        return agent, SetupTimings("cold", cli_ready_ms=agent.cli_ready_ms)

    def leave(self, agent: AgentProcess, tenant: Tenant, *, reusable: bool = False) -> bool:
        """``tenant`` no longer uses ``agent``. Returns True when the process goes (it was
        the last tenant), False when it stays for the others.

        A process others still use gets ``session/close`` for the tenant's agent session
        (when advertised: the agent frees it). The last tenant's process is stopped, or, if
        ``reusable`` (healthy, it just refused a session) and it runs with the proxy's own
        environment and a spare is missing, becomes a spare again (its slot is free at once;
        a stopped one's once it has exited)."""
        host = self.hosts.get(agent)
        if host is not None and host.evicting:
            # Every tenant leaves and the process goes: each stays its tenant until the exit
            # (RETIRING → UNBOUND then), so none is restored elsewhere while it still runs.
            host.leaving.add(tenant)
            if all(t in host.leaving for t in host.tenants):
                self.hosts.pop(agent, None)
                agent.stop()  # its slot frees once it has exited (_on_bound_exit)
            return True
        if host is not None and any(t is not tenant for t in host.tenants):
            upstream_ids = host.remove(tenant)
            if agent.alive and agent.supports("close"):
                for upstream_id in upstream_ids:
                    agent.send_request(
                        "session/close", msgspec.json.encode({"sessionId": upstream_id}), _ignore
                    )
            return False
        # The last tenant stays the process's tenant: it hears the exit (RETIRING → UNBOUND).
        self.hosts.pop(agent, None)
        if (
            reusable
            and agent.alive
            and not agent.scoped  # no client's per-process values or credentials
            and len(self.spares) < self.config.warm_spares
        ):
            if self._on_bound_exit in agent.exit_callbacks:
                agent.exit_callbacks.remove(self._on_bound_exit)
                self._release_slot()
            agent.handler = UNBOUND
            self.spares.append(agent)
            self.preopen(agent, ())
        else:
            agent.stop()  # its slot frees once it has exited (_on_bound_exit)
        return True

    async def _reserve_slot(self, *, needs_memory: bool) -> None:
        cap = self.config.max_live_agents
        if self.bound < cap and (not needs_memory or self._memory_fits(measure=True)):
            self.bound += 1
            return
        self._waiting += 1
        short_of = "slots"
        try:
            with anyio.fail_after(self.config.agent_start_timeout_s):
                while True:  # bounded by the deadline above
                    if self.bound >= cap:
                        short_of = "slots"
                    elif needs_memory and not self._memory_fits(measure=True):
                        short_of = "memory"
                    else:
                        break
                    if short_of == "memory" and self.spares:
                        self._stop_spare_for_memory()  # a conversation before a spare
                    elif self._room_coming < self._waiting and (
                        self._drop_env_spare()
                        or self._make_room(short_of if short_of == "memory" else "max_live_agents")
                        is not None
                    ):
                        self._room_coming += 1
                    freed = self._slot_freed
                    with anyio.move_on_after(
                        _MEMORY_WAIT_POLL_S if short_of == "memory" else math.inf
                    ):
                        await freed.wait()
        except TimeoutError:
            raise self._no_room(short_of) from None
        finally:
            self._waiting -= 1
        self.bound += 1

    def _no_room(self, short_of: str) -> AgentStartError:
        cap, wait = self.config.max_live_agents, self.config.agent_start_timeout_s
        if short_of == "memory" and self.budget is not None:
            self.log.warning(
                "agents.over_memory_budget",
                used_bytes=self.budget.used,
                limit_bytes=self.budget.limit,
                hint="every agent is busy: raise max_agents_memory_mb or add memory",
            )
            return AgentStartError(
                f"a new agent would not fit in the agents' memory budget (max_agents_memory_mb: "
                f"{self.budget.describe()} used, about {self.budget.largest >> 20} MiB more "
                f"needed) and no agent became idle within {wait} s; try again later",
                INTERNAL_ERROR,
                {
                    "kind": "memory_budget",
                    "usedBytes": self.budget.used,
                    "limitBytes": self.budget.limit,
                },
            )
        self.log.warning(
            "agents.at_capacity",
            bound=self.bound,
            cap=cap,
            hint="every agent is busy: raise max_live_agents or add memory",
        )
        return AgentStartError(
            f"all {cap} agent slots (max_live_agents) stayed busy for {wait} s; try again later",
            INTERNAL_ERROR,
            {"kind": "at_capacity", "maxLiveAgents": cap},
        )

    def _release_slot(self) -> None:
        self.bound -= 1
        self._room_coming = max(0, self._room_coming - 1)
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    def _on_bound_exit(self, agent: AgentProcess) -> None:
        self.hosts.pop(agent, None)
        self._release_slot()

    def _forget(self, agent: AgentProcess) -> None:
        self.forget_preopened(agent)
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

    def stop(self) -> None:
        """Stop every spare (per-process ones too) and every agent held for a client."""
        for agent in [*self.spares, *self._held.values(), *self.recent_envs.values()]:
            if agent is not None:
                agent.stop()


def _env_key(env: dict[str, str] | None) -> EnvKey:
    return tuple(sorted(env.items())) if env else ()


def _ignore(reply: Response | ErrorResponse, batch: Batch) -> None:
    """The answer to a ``session/close`` sent for a conversation that left: nobody waits."""


def _usable_dir(cwd: str | None) -> str | None:
    """The session's cwd when it exists on this host (agents get it in ACP params anyway)."""
    return cwd if cwd is not None and os.path.isdir(cwd) else None
