"""Folding a recorded ``session/update`` stream, without I/O.

A client that renders an ACP conversation *folds* the stream: adjacent text chunks of one
message join, a ``tool_call_update`` patches its ``tool_call`` in place, a ``plan`` replaces the
previous plan. :func:`coalesce` applies exactly those rules, so a coalesced stream folds to the
same transcript as the raw one. It is used to build the seed of a restored conversation
(:func:`seed_block`) and is property-tested against :func:`fold`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .protocol import MALFORMED_JSON, as_valid_utf8, exceeds_depth

__all__ = [
    "CONVERSATION_KINDS",
    "SEED_HEADER",
    "coalesce",
    "fold",
    "recorded_updates",
    "seed_block",
]

_CHUNK_KINDS: Final = frozenset(
    {"user_message_chunk", "agent_message_chunk", "agent_thought_chunk"}
)
#: The update kinds that are the conversation itself (the rest is session state: commands,
#: modes, config, usage, titles, which the restored agent reports on its own).
CONVERSATION_KINDS: Final = frozenset({*_CHUNK_KINDS, "tool_call", "tool_call_update", "plan"})
#: First line of the history block a restored agent receives (see :func:`seed_block`).
SEED_HEADER: Final = "<acp-proxy:history"
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder()


def recorded_updates(payloads: Iterable[bytes]) -> tuple[list[dict[str, Any]], int]:
    """The ``update`` objects of stored ``session/update`` params, and how many were skipped.

    A store may hold anything an older proxy accepted: invalid UTF-8 is repaired (U+FFFD),
    and payloads nested too deep to walk safely, or not JSON at all, are skipped, so one bad
    event can never make a conversation impossible to restore.
    """
    updates: list[dict[str, Any]] = []
    skipped = 0
    for payload in payloads:
        data = as_valid_utf8(payload)
        if exceeds_depth(data):
            skipped += 1
            continue
        try:
            params = _decoder.decode(data)
        except MALFORMED_JSON:
            skipped += 1
            continue
        update = params.get("update") if isinstance(params, dict) else None
        if isinstance(update, dict):
            updates.append(update)
    return updates, skipped


def _kind(update: Any) -> str:
    kind = update.get("sessionUpdate") if isinstance(update, dict) else None
    return kind if isinstance(kind, str) else ""


def _call_key(update: dict[str, Any]) -> Any:
    """A hashable key for a tool call id (recorded streams are untrusted: any JSON)."""
    ident = update.get("toolCallId")
    return ident if isinstance(ident, str | int) else _encoder.encode(ident)


def _is_plain_text(update: dict[str, Any]) -> bool:
    """A chunk with nothing but a text content block (and maybe a messageId)."""
    content = update.get("content")
    return (
        set(update) <= {"sessionUpdate", "messageId", "content"}
        and isinstance(content, dict)
        and set(content) == {"type", "text"}
        and content["type"] == "text"
        and isinstance(content["text"], str)
    )


def _joinable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two chunks are one message's text when kind and messageId match and both are plain text."""
    return (
        _kind(a) == _kind(b)
        and _kind(a) in _CHUNK_KINDS
        and a.get("messageId") == b.get("messageId")
        and _is_plain_text(a)
        and _is_plain_text(b)
    )


def _patch_tool_call(call: dict[str, Any], update: dict[str, Any]) -> None:
    # tool_call_update sends only changed fields; content/locations replace the arrays.
    for key, value in update.items():
        if key not in ("sessionUpdate", "toolCallId"):
            call[key] = value


def coalesce(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shorten a stream without changing what it folds to (see module docstring).

    Unknown kinds, ``_meta`` and unknown fields are kept as they are; a chunk that carries
    anything beyond a plain text block is left unmerged. Only the last ``plan`` is kept.
    """
    out: list[dict[str, Any]] = []
    calls: dict[Any, dict[str, Any]] = {}
    plan: dict[str, Any] | None = None
    plan_at = 0
    pieces: list[str] = []  # text still to append to out[-1]: joined once, not quadratically

    def flush() -> None:
        if pieces:
            out[-1]["content"]["text"] += "".join(pieces)
            pieces.clear()

    for original in updates:
        kind = _kind(original)
        if out and _joinable(out[-1], original):
            pieces.append(original["content"]["text"])
            continue
        if kind in _CHUNK_KINDS and _is_plain_text(original):
            update = {**original, "content": dict(original["content"])}  # cheap exact copy
        else:
            update = copy.deepcopy(original)
        if kind == "plan":
            # Always the full plan (the client replaces it): only the last one matters.
            plan, plan_at = update, len(out)
            continue
        flush()
        if kind == "tool_call_update" and _call_key(update) in calls:
            _patch_tool_call(calls[_call_key(update)], update)
        else:
            if kind == "tool_call":
                calls[_call_key(update)] = update
            out.append(update)
    flush()
    if plan is not None:
        out.insert(plan_at, plan)
    return out


@dataclass
class _Text:
    kind: str
    message_id: Any
    text: str


def fold(updates: list[dict[str, Any]]) -> list[Any]:
    """What a folding client displays: messages, tool calls in final state, then the plan.

    The reference semantics :func:`coalesce` must preserve. The plan is shown apart from the
    messages (the last one wins), so it does not split a message. Unknown kinds stay in order.
    """
    items: list[Any] = []
    calls: dict[Any, dict[str, Any]] = {}
    plan: dict[str, Any] | None = None
    for update in updates:
        kind = _kind(update)
        plain = kind in _CHUNK_KINDS and _is_plain_text(update)
        last = items[-1] if items else None
        if (
            plain
            and isinstance(last, _Text)
            and (last.kind, last.message_id) == (kind, update.get("messageId"))
        ):
            last.text += update["content"]["text"]
        elif plain:
            items.append(_Text(kind, update.get("messageId"), update["content"]["text"]))
        elif kind == "tool_call":
            calls[_call_key(update)] = call = dict(update)
            items.append(call)
        elif kind == "tool_call_update" and _call_key(update) in calls:
            _patch_tool_call(calls[_call_key(update)], update)
        elif kind == "plan":
            plan = update
        else:
            items.append(update)
    return [*items, ("plan", plan)]


def seed_block(
    session_id: str,
    updates: list[dict[str, Any]],
    *,
    include_thoughts: bool = False,
) -> dict[str, Any] | None:
    """The text block that carries a conversation into a new agent session, or None if empty.

    Format (``version="1"``): a first line ``<acp-proxy:history version="1" session="…"
    updates="N">``, a line of instructions, then one JSON object per line: the recorded ACP
    ``SessionUpdate``s of the conversation kinds, coalesced (chunks joined, tool calls with
    their final status, content, ``rawInput`` and ``rawOutput``), and a closing
    ``</acp-proxy:history>`` line. Thoughts are left out unless ``include_thoughts``. It is sent
    once, before the user's blocks of the first prompt after the restore.
    """
    wanted = {k for k in CONVERSATION_KINDS if include_thoughts or k != "agent_thought_chunk"}
    kept = coalesce([u for u in updates if _kind(u) in wanted])
    if not kept:
        return None
    lines = [
        f'{SEED_HEADER} version="1" session="{session_id}" updates="{len(kept)}">',
        "The conversation so far, restored by acp-proxy into a new agent session: one recorded "
        "ACP session/update per line, in order. Continue it; the user's new message follows.",
        *(_json_line(u) for u in kept),
        "</acp-proxy:history>",
    ]
    return {"type": "text", "text": "\n".join(lines)}


def _json_line(update: dict[str, Any]) -> str:
    # JSON allows U+2028/U+2029/U+0085 raw inside strings, but line splitters (Python's
    # splitlines, JavaScript) break on them: escape them so each update stays one line.
    text = _encoder.encode(update).decode()
    return (
        text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085")
    )
