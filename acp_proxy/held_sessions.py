"""Which of its own sessions an agent process holds, and closing them before it is stopped.

Some agents ignore stdin end-of-file while they hold a session (``claude-agent-acp`` keeps one
Claude Code CLI child per session, and the child keeps the process alive): closing stdin alone
then costs the whole kill grace before SIGTERM. ``session/close`` of each held session (when the
agent advertises ``sessionCapabilities.close``) lets such an agent exit at once.

What the process holds is learnt from the proxy's own requests and the agent's answers
(:func:`note_reply`, pure); :func:`close_held_sessions` is the one piece of I/O, run by the
agent process's shutdown after its pumps have stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream
from msgspec import Raw

from .protocol import (
    ErrorResponse,
    LineBuffer,
    ProtocolError,
    Response,
    decode_message,
    encode_request,
    get_str,
    object_members,
)

__all__ = [
    "TRACKED_METHODS",
    "close_held_sessions",
    "close_requests",
    "note_reply",
    "noting_reply",
]

#: requests whose successful answer means the process now holds a session
_OPENING: Final = frozenset({"session/new", "session/load", "session/resume", "session/fork"})
#: every request whose answer changes which sessions a process holds
TRACKED_METHODS: Final = _OPENING | {"session/close"}
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


def close_requests(held: set[str], first_id: int) -> tuple[dict[int, str], bytes]:
    """``session/close`` requests for every held session, ids from ``first_id`` on.

    Returns the ids (to the session each closes) and the NDJSON lines to write.
    """
    ids: dict[int, str] = {}
    lines = []
    for offset, sid in enumerate(sorted(held)):
        ident = first_id + offset
        ids[ident] = sid
        lines.append(encode_request(ident, "session/close", _encoder.encode({"sessionId": sid})))
    return ids, b"".join(lines)


def answer_id(line: bytes) -> int | None:
    """The integer id of a response line (None for anything else)."""
    try:
        msg = decode_message(line)
    except ProtocolError:
        return None
    if isinstance(msg, Response | ErrorResponse) and isinstance(msg.id, int):
        return msg.id
    return None


async def close_held_sessions(
    held: set[str],
    first_id: int,
    stdin: ByteSendStream,
    stdout: ByteReceiveStream,
    max_line_bytes: int,
) -> dict[int, str] | None:
    """Send ``session/close`` for each held session and read the agent's output until every
    one is answered (the caller bounds the wait). Anything else the agent writes meanwhile is
    dropped: the process is being stopped.

    Returns the requests left unanswered (empty when all were), or None when the pipes were
    already closed.
    """
    unanswered, lines = close_requests(held, first_id)
    buffer = LineBuffer(max_line_bytes)
    try:
        await stdin.send(lines)
        async for data in stdout:
            for line in buffer.feed(data):
                if isinstance(line, bytes) and (ident := answer_id(line)) is not None:
                    unanswered.pop(ident, None)
            if not unanswered:
                break
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return None
    return unanswered
