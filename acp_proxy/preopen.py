"""Sessions opened ahead on warm spares (``preopen_sessions``): new conversations at warm speed.

A warm spare hides the agent's process start-up, but its first ``session/new`` in a directory
still pays the agent's per-directory bootstrap (opencode: ≈ 0.8 s, more than the rest of a
warm turn). So a spare opens one session ahead, with ``{"cwd", "mcpServers": []}``, in the
directory most recently used by conversations with the same per-process environment. The
next ``session/new`` for that directory whose params are exactly those (no MCP servers, no
other field) takes the spare *and* that session: it is answered without waiting for the
agent.

What the agent says about the pre-opened session before a conversation claims it (opencode's
``available_commands_update``) is held (bounded) and handed to the conversation when it
claims it, as if the agent had just said it; a session about which the agent *asked*
something, or said too much, is not handed out.

Unused pre-opened sessions do not pile up in the agent's own history: one whose spare goes
away (stopped, or taken by a conversation in another directory) is remembered, and the next
spare for the same directory and environment resumes it (``session/resume``, when the agent
advertises it) instead of opening another. So each directory and environment has at most one
unused pre-opened session at a time in this proxy's lifetime (and the proxy's own
``session/list`` never shows them: it answers from its store).

Pure decisions here (what to hold, whether params fit); :class:`Preopening` (a mixin of
:class:`~acp_proxy.pool.AgentPool`) does the requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import Raw

from .agent import UNBOUND, AgentProcess, Batch
from .config import Config
from .demux import AgentSessions
from .env_spares import EnvKey
from .protocol import (
    Call,
    ErrorResponse,
    ProtocolError,
    Request,
    Response,
    SessionUpdate,
    get_str,
    object_members,
)

__all__ = ["PreopenHandler", "Preopened", "Preopening", "params_fit"]

#: Lines the agent may say about a pre-opened session before it is claimed (opencode: one).
MAX_HELD_LINES: Final = 32
#: Unused pre-opened sessions remembered for reuse (per directory and environment).
_UNUSED_KEPT: Final = 64
_encoder: Final = msgspec.json.Encoder()
_result_decoder: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(eq=False)
class Preopened:
    """One session opened ahead on a spare."""

    key: EnvKey
    cwd: str
    #: the agent's session id (known once it answered)
    upstream_id: str | None = None
    #: the agent's ``session/new`` result (with ``sessionId``), once it answered
    result: dict[str, Any] | None = None
    #: ``session/update`` lines about it said before a conversation claimed it
    lines: list[bytes] = field(default_factory=list)
    #: not to be handed out (the agent asked something about it, or said too much)
    spoiled: bool = False
    #: taken by a conversation
    claimed: bool = False
    #: its spare went to a conversation in another directory (or stopped): unused
    abandoned: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def usable(self) -> bool:
        """Answered, and nothing about it was lost."""
        return self.result is not None and self.upstream_id is not None and not self.spoiled

    def hold(self, line: bytes) -> None:
        """Keep a line the agent said about it (bounded: past the bound it is spoiled)."""
        if len(self.lines) < MAX_HELD_LINES:
            self.lines.append(line)
        else:
            self.spoiled = True


def params_fit(params: Raw, cwd: str) -> bool:
    """Whether a client's ``session/new`` params are exactly what a pre-opened session was
    opened with: ``cwd`` and no MCP servers (absent or ``[]``), nothing else."""
    try:
        members = object_members(params)
        if get_str(members, "cwd") != cwd:
            return False
    except ProtocolError:
        return False
    if set(members) - {"cwd", "mcpServers"}:
        return False
    servers = members.get("mcpServers")
    return servers is None or bytes(servers).strip() == b"[]"


class PreopenHandler:
    """The handler of a spare holding a pre-opened session: what the agent says about that
    session is held for the conversation that will claim it; the rest is a spare's."""

    def __init__(self, prepared: Preopened) -> None:
        self.prepared = prepared

    def _mine(self, session_id: str | None) -> bool:
        upstream = self.prepared.upstream_id
        return upstream is None or session_id == upstream  # (in flight: only it exists)

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        if self._mine(params.sessionId):
            meta = b',"_meta":' + bytes(params.meta) if params.meta else b""
            self.prepared.hold(
                b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":'
                + _encoder.encode(params.sessionId)
                + b',"update":'
                + bytes(params.update)
                + meta
                + b"}}"
            )
        else:
            UNBOUND.on_session_update(agent, params, batch)

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        if isinstance(msg, Request):
            self.prepared.spoiled = True  # refused below: the session would miss the answer
        else:
            try:
                session_id = get_str(object_members(msg.params), "sessionId")
            except ProtocolError:
                session_id = None
            if self._mine(session_id) and msg.method.startswith("session/"):
                self.prepared.spoiled = True
        UNBOUND.on_agent_message(agent, msg, batch)

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        pass


class Preopening:
    """The pre-opened sessions of the pool's spares. A mixin of ``AgentPool``."""

    config: Config
    tg: TaskGroup
    log: Any
    hosts: dict[AgentProcess, AgentSessions]
    process_env: dict[AgentProcess, dict[str, str]]
    _idle_spares: Callable[[EnvKey], list[AgentProcess]]

    def _init_preopening(self) -> None:
        #: the pre-opened session of each spare that has one
        self.preopened: dict[AgentProcess, Preopened] = {}
        #: the directory most recently given to a conversation, per environment
        self.recent_dirs: OrderedDict[EnvKey, str] = OrderedDict()
        #: agent session ids opened ahead and never used, per (environment, directory)
        self.unused_preopened: OrderedDict[tuple[EnvKey, str], str] = OrderedDict()
        #: pre-opened sessions handed to conversations (for the metrics and tests)
        self.preopen_claims = 0

    def note_dir(self, key: EnvKey, cwd: str) -> None:
        """A conversation with environment ``key`` uses ``cwd``: spares of that environment
        open their next session there."""
        if not self.config.preopen_sessions:
            return
        self.recent_dirs[key] = cwd
        self.recent_dirs.move_to_end(key)
        while len(self.recent_dirs) > max(1, self.config.env_spares + 1):
            self.recent_dirs.popitem(last=False)
        for agent in self._idle_spares(key):
            self.preopen(agent, key)

    def preopen(self, agent: AgentProcess, key: EnvKey) -> None:
        """Open a session ahead on the idle spare ``agent`` (environment ``key``), in the
        directory last used with that environment, unless it has one there already."""
        cwd = self.recent_dirs.get(key) if self.config.preopen_sessions else None
        held = self.preopened.get(agent)
        if cwd is None or not agent.alive or (held is not None and held.cwd == cwd):
            return
        if held is not None:
            if not held.done.is_set():
                return  # one at a time; the next spare will use the new directory
            self._abandon(agent)
        prepared = Preopened(key, cwd)
        self.preopened[agent] = prepared
        agent.handler = PreopenHandler(prepared)
        self.tg.start_soon(self._open_ahead, agent, prepared)

    async def _open_ahead(self, agent: AgentProcess, prepared: Preopened) -> None:
        reuse = None
        if agent.supports("resume"):
            reuse = self.unused_preopened.pop((prepared.key, prepared.cwd), None)
        params: dict[str, Any] = {"cwd": prepared.cwd, "mcpServers": []}
        method = "session/new"
        if reuse is not None:
            method, params = "session/resume", {**params, "sessionId": reuse}

        def on_reply(reply: Response | ErrorResponse, batch: Batch) -> None:
            # Decided as the answer is read, before anything the agent says after it.
            if isinstance(reply, Response):
                result = _decode(reply.result)
                upstream = reuse if reuse is not None else result.get("sessionId")
                if isinstance(upstream, str):
                    prepared.upstream_id = upstream
                    prepared.result = {**result, "sessionId": upstream}
            if prepared.abandoned:
                self._remember_unused(agent, prepared)
            prepared.done.set()

        agent.send_request(method, _encoder.encode(params), on_reply)
        with anyio.move_on_after(self.config.agent_start_timeout_s):
            await prepared.done.wait()
        if not prepared.done.is_set():
            prepared.spoiled = True  # too slow: a late answer is remembered as unused
            prepared.abandoned = True
            prepared.done.set()
        if not prepared.usable:
            self.log.warning(
                "agent.preopen_failed", agent_pid=agent.pid, method=method, cwd=prepared.cwd
            )
            if self.preopened.get(agent) is prepared:
                del self.preopened[agent]
                if isinstance(agent.handler, PreopenHandler):
                    agent.handler = UNBOUND
            return
        self.log.info(
            "agent.preopened",
            agent_pid=agent.pid,
            cwd=prepared.cwd,
            reused=reuse is not None,
            upstream_session_id=prepared.upstream_id,
        )

    def claim_preopened(self, agent: AgentProcess, cwd: str, params: Raw) -> Preopened | None:
        """The session ``agent`` (a spare just taken) opened ahead, if it fits a
        ``session/new`` with ``params`` in ``cwd``; an unfitting one is left unused."""
        prepared = self.preopened.pop(agent, None)
        if prepared is None:
            return None
        if prepared.cwd == cwd and params_fit(params, cwd) and not prepared.spoiled:
            prepared.claimed = True
            return prepared
        self.preopened[agent] = prepared
        self._abandon(agent)
        return None

    async def preopened_result(self, prepared: Preopened) -> dict[str, Any] | None:
        """The claimed session's ``session/new`` result, once the agent answered (None: it
        failed, or did not answer in time: open one the usual way)."""
        with anyio.move_on_after(self.config.agent_start_timeout_s):
            await prepared.done.wait()
        if not prepared.usable or prepared.result is None:
            prepared.claimed = False
            prepared.abandoned = True
            return None
        self.preopen_claims += 1
        return dict(prepared.result)

    def _abandon(self, agent: AgentProcess) -> None:
        """``agent``'s pre-opened session will not be used: remember it for reuse, and make
        sure nothing the agent says about it reaches a conversation of that process."""
        prepared = self.preopened.pop(agent, None)
        if prepared is None or prepared.claimed:
            return
        prepared.abandoned = True
        if isinstance(agent.handler, PreopenHandler) and agent.handler.prepared is prepared:
            agent.handler = UNBOUND
        if prepared.done.is_set():
            self._remember_unused(agent, prepared)
        # else: its answer remembers it (on_reply)

    def _remember_unused(self, agent: AgentProcess, prepared: Preopened) -> None:
        upstream = prepared.upstream_id
        if upstream is None:
            return
        host = self.hosts.get(agent)
        if host is not None:
            host.ignore(upstream)  # a conversation took the process: not its session
        self.unused_preopened[(prepared.key, prepared.cwd)] = upstream
        while len(self.unused_preopened) > _UNUSED_KEPT:
            self.unused_preopened.popitem(last=False)

    def forget_preopened(self, agent: AgentProcess) -> None:
        """``agent`` exited, or a restore took it: its unclaimed pre-opened session is
        remembered as unused (and what the agent says about it is dropped)."""
        self._abandon(agent)


def _decode(result: Raw) -> dict[str, Any]:
    raw = bytes(result)
    try:
        decoded = _result_decoder.decode(raw)
    except msgspec.DecodeError:
        return {}
    return decoded
