"""Which of its own sessions an agent process holds, and closing them before it is stopped.

Some agents ignore stdin end-of-file while they hold a session (``claude-agent-acp`` keeps one
Claude Code CLI child per session, and the child keeps the process alive): closing stdin alone
then costs the whole kill grace before SIGTERM. ``session/close`` of each held session (when the
agent advertises ``sessionCapabilities.close``) lets such an agent exit at once.

What the process holds is learnt from the proxy's own requests and the agent's answers
(:func:`note_reply`, pure). The agent process sends the closes as ordinary requests while it
still reads the agent's output, so what the agent says meanwhile is recorded and delivered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

import anyio
import msgspec
from msgspec import Raw

from .protocol import (
    ErrorResponse,
    ProtocolError,
    Response,
    get_str,
    object_members,
)

__all__ = ["TRACKED_METHODS", "close_sessions", "note_reply", "noting_reply"]

#: requests whose successful answer means the process now holds a session
_OPENING: Final = frozenset({"session/new", "session/load", "session/resume", "session/fork"})
#: every request whose answer changes which sessions a process holds
TRACKED_METHODS: Final = _OPENING | {"session/close"}
#: How often a stop waiting for a session being opened looks again.
_OPEN_POLL_S: Final = 0.02
_encoder: Final = msgspec.json.Encoder()
_Batch = TypeVar("_Batch")


def _str_member(raw: Raw | bytes, name: str) -> str | None:
    try:
        return get_str(object_members(raw), name)
    except ProtocolError:  # not a JSON object
        return None


def note_reply(held: set[str], method: str, params: Raw | bytes, result: Raw | bytes) -> None:
    """Update ``held`` after a successful answer to a proxy request ``method(params)``.

    ``session/new`` and ``session/fork`` name the session in their result; ``session/load``
    and ``session/resume`` in their params; ``session/close`` releases the one in its params.
    """
    if method not in TRACKED_METHODS:
        return
    in_result = method in ("session/new", "session/fork")
    sid = _str_member(result if in_result else params, "sessionId")
    if sid is None:
        return
    if method == "session/close":
        held.discard(sid)
    else:
        held.add(sid)


def noting_reply(
    held: set[str],
    method: str,
    params: Raw | bytes,
    on_reply: Callable[[Response | ErrorResponse, _Batch], None],
) -> Callable[[Response | ErrorResponse, _Batch], None]:
    """``on_reply`` for a request ``method(params)``, noting in ``held`` first what a
    successful answer means (see :func:`note_reply`)."""
    if method not in TRACKED_METHODS:
        return on_reply

    def noted(reply: Response | ErrorResponse, batch: _Batch) -> None:
        if isinstance(reply, Response):
            note_reply(held, method, params, reply.result)
        on_reply(reply, batch)

    return noted


class _Closer(Protocol):
    """What closing needs of an agent process (``agent.AgentProcess``)."""

    held_sessions: set[str]
    log: Any

    @property
    def stopping_stdin_closed(self) -> bool:
        """Nothing can be sent to the agent any more."""
        ...

    def supports(self, session_capability: str) -> bool:
        """Whether ``sessionCapabilities.<name>`` is advertised."""
        ...

    def pending_methods(self) -> list[str]:
        """The methods of the proxy's requests not answered yet."""
        ...

    async def call(self, method: str, params: object) -> dict[str, Any]:
        """Send a request and wait for its result."""
        ...


async def close_sessions(agent: _Closer, grace_s: float) -> None:
    """``session/close`` each session the process holds, when the agent supports it, and
    wait for the answers within ``grace_s`` (requests that fail or go unanswered are logged).
    A session being opened (a spare's, opened ahead) is waited for first, in the same grace:
    the agent could hold it once it has answered."""
    started = time.monotonic()
    with anyio.move_on_after(grace_s):
        # (polled: a stop is rare, an event per answer would cost every turn; bounded)
        while _OPENING.intersection(agent.pending_methods()):  # noqa: ASYNC110
            await anyio.sleep(_OPEN_POLL_S)
    grace_s = max(0.0, grace_s - (time.monotonic() - started))
    held = sorted(agent.held_sessions)
    if not held or not agent.supports("close") or agent.stopping_stdin_closed:
        return
    answered = 0

    async def close(sid: str) -> None:
        nonlocal answered
        with contextlib.suppress(Exception):  # an error answer or the process gone
            await agent.call("session/close", {"sessionId": sid})
            answered += 1

    with anyio.move_on_after(grace_s):
        async with anyio.create_task_group() as tg:
            for sid in held:
                tg.start_soon(close, sid)
    agent.log.info(
        "agent.sessions_closed",
        sessions=held,
        all_answered=answered == len(held),
        ms=round((time.monotonic() - started) * 1000, 3),
    )
