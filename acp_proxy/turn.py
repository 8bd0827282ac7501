"""A ``session/prompt`` in flight and what its answer says. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from msgspec import Raw

from .peer import Peer
from .protocol import (
    AGENT_EXITED,
    INVALID_PARAMS,
    MALFORMED_JSON,
    ErrorResponse,
    LocalProtocolError,
    RequestId,
    Response,
    get_str,
    object_members,
    rewrite_members,
)

__all__ = [
    "Turn",
    "TurnOutcome",
    "answer_prompt",
    "prompt_blocks",
    "turn_outcome",
    "turn_timings",
    "user_message_payloads",
]

_encoder: Final = msgspec.json.Encoder()
_any_decoder: Final = msgspec.json.Decoder()
_blocks_decoder: Final = msgspec.json.Decoder(list[Raw])


@dataclass
class Turn:
    """A ``session/prompt`` in flight."""

    seq: int
    client: Peer
    client_id: RequestId
    received_at: float  #: monotonic, prompt read from the client
    started_wall: float  #: epoch seconds
    agent: str  #: how its agent was obtained (``SetupTimings.agent``)
    queue_ms: float = 0.0
    cli_ready_ms: float = 0.0
    session_init_ms: float = 0.0
    forwarded_at: float = 0.0
    first_token_at: float | None = None
    agent_request_id: int = 0
    bytes_upstream: int = 0
    updates: int = 0
    user_last_seq: int = 0  #: the user's blocks are events up to here
    end_seq: int = 0  #: the session's last event when the turn ended (``peer.TurnSpan``)


@dataclass(frozen=True)
class TurnOutcome:
    """What the agent's answer to a prompt says."""

    outcome: str  #: ``completed`` | ``cancelled`` | ``error`` | ``unknown`` (agent died)
    stop_reason: str | None
    usage: bytes | None
    members: dict[str, Raw]  #: the result's members (empty for an error)


def turn_outcome(reply: Response | ErrorResponse) -> TurnOutcome:
    """Read the agent's answer to ``session/prompt`` (tolerant: a malformed result is
    still a completed turn)."""
    if isinstance(reply, ErrorResponse):
        return TurnOutcome("unknown" if reply.code == AGENT_EXITED else "error", None, None, {})
    try:
        members = object_members(reply.result) if bytes(reply.result) != b"null" else {}
    except Exception:
        members = {}
    stop_reason = get_str(members, "stopReason")
    usage = bytes(members["usage"]) if "usage" in members else None
    outcome = "cancelled" if stop_reason == "cancelled" else "completed"
    return TurnOutcome(outcome, stop_reason, usage, members)


def turn_timings(turn: Turn, now: float) -> dict[str, Any]:
    """The turn's timings (design §6), as returned in ``_meta`` and logged."""
    first = turn.first_token_at
    return {
        "turn": turn.seq,
        "agent": turn.agent,
        "queue_ms": round(turn.queue_ms, 3),
        "cli_ready_ms": round(turn.cli_ready_ms, 3),
        "session_init_ms": round(turn.session_init_ms, 3),
        "model_first_token_ms": round((first - turn.forwarded_at) * 1000, 3) if first else None,
        "ttft_ms": round((first - turn.received_at) * 1000, 3) if first else None,
        "total_ms": round((now - turn.received_at) * 1000, 3),
        "bytes_upstream": turn.bytes_upstream,
    }


def prompt_blocks(params: Raw) -> tuple[Raw, list[Raw]]:
    """The ``prompt`` member of ``session/prompt`` params, raw and as its content blocks.

    Raises:
        LocalProtocolError: -32602, ``prompt`` is missing or not an array.
    """
    prompt = object_members(params).get("prompt")
    try:
        blocks = _blocks_decoder.decode(prompt) if prompt is not None else None
    except MALFORMED_JSON:
        blocks = None
    if prompt is None or blocks is None:
        raise LocalProtocolError(
            'Invalid params: session/prompt needs a "prompt" array of content blocks',
            INVALID_PARAMS,
        )
    return prompt, blocks


def user_message_payloads(session_id: str, blocks: list[Raw]) -> Iterator[bytes]:
    """The user's prompt as the ``user_message_chunk`` updates an agent would replay: part of
    the conversation a later load replays (acp-notes §3.3)."""
    sid = _encoder.encode(session_id)
    for block in blocks:
        yield (
            b'{"sessionId":'
            + sid
            + b',"update":{"sessionUpdate":"user_message_chunk","content":'
            + bytes(block)
            + b"}}"
        )


def answer_prompt(
    session_id: str,
    turn: Turn,
    reply: Response | ErrorResponse,
    read: TurnOutcome,
    timings: dict[str, Any],
) -> Callable[[], None]:
    """How the client's prompt is answered: the agent's result with the timings in
    ``_meta["acp-proxy"]``, the documented ``agent_exited`` error, or the agent's error."""
    client, ident = turn.client, turn.client_id
    if isinstance(reply, Response):
        members = read.members
        meta = object_members(members["_meta"]) if "_meta" in members else {}
        meta["acp-proxy"] = Raw(_encoder.encode(timings))
        result = rewrite_members(members, _meta=Raw(_encoder.encode(meta)))
        return lambda: client.send_response(ident, result)
    if reply.code == AGENT_EXITED:
        data = _any_decoder.decode(reply.error).get("data") or {}
        data.update({"turnOutcome": "unknown", "sessionId": session_id, "turn": turn.seq})
        message = (
            f"{reply.message} during turn {turn.seq}; the turn's outcome is unknown and it "
            "will not be re-sent; the next prompt restores the session"
        )
        return lambda: client.send_error(ident, AGENT_EXITED, message, data)
    return lambda: client.send_error(ident, reply.code, reply.message, raw=reply.error)
