"""A fake Anthropic Messages API for driving the real ``claude-agent-acp`` offline.

The Claude Code CLI inside the agent reads ``ANTHROPIC_BASE_URL``; this server answers what it
asks there: ``HEAD /`` (a reachability probe at every start), ``POST /v1/messages`` (streamed as
server-sent events: ``message_start``, ``content_block_start`` / ``content_block_delta`` /
``content_block_stop``, ``message_delta``, ``message_stop``; a plain JSON message when the
request does not say ``stream: true``) and ``POST /v1/messages/count_tokens``. What it answers
is decided by :func:`tests.real_agent.model_server.answer` (see there); a tool call is a
``tool_use`` block and the agent sends the result back as a ``tool_result`` block.

Any other path is answered 404 and recorded in :attr:`FakeAnthropic.unknown`, so a test can
check that the agent asked for nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.real_agent.model_server import (
    Answer,
    Conversation,
    ModelHandler,
    ModelRequest,
    ModelServer,
    content_text,
)

__all__ = ["FakeAnthropic", "conversation_of"]

#: user text blocks the CLI adds around the user's own words (context, reminders)
_INJECTED_PREFIXES = ("<system-reminder>", "<command-", "<local-command", "Caveat:")
_USAGE = {
    "input_tokens": 10,
    "output_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def _own_text(content: Any) -> str | None:
    """The user's own words in a user message (None: no words of the user's, e.g. a tool
    result or only what the CLI injected)."""
    if isinstance(content, str):
        return None if content.startswith(_INJECTED_PREFIXES) else content
    if not isinstance(content, list):
        return None
    texts = [
        str(b.get("text", ""))
        for b in content
        if isinstance(b, dict)
        and b.get("type") == "text"
        and not str(b.get("text", "")).startswith(_INJECTED_PREFIXES)
    ]
    if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    return "".join(texts) if texts else None


def conversation_of(body: dict[str, Any]) -> Conversation:
    """What the fake model reads from a Messages API request."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [
        text
        for m in messages
        if m.get("role") == "user" and (text := _own_text(m.get("content"))) is not None
    ]
    tool_result = None
    if messages and messages[-1].get("role") == "user":
        content = messages[-1].get("content")
        results = [
            b
            for b in (content if isinstance(content, list) else [])
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if results:
            tool_result = content_text(results[-1].get("content"))
    tools = [str(t.get("name", "")) for t in body.get("tools") or [] if isinstance(t, dict)]
    return Conversation(users, tools, tool_result)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


class _Handler(ModelHandler):
    server_model: ClassVar[FakeAnthropic]  # type: ignore[misc]

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server_model.unknown.append(f"GET {self.path}")
        self.send_json(404, {"type": "error", "error": {"type": "not_found_error"}})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        body = self.read_json()
        if body is None:
            return
        if path.endswith("/v1/messages/count_tokens"):
            self.send_json(200, {"input_tokens": 10})
            return
        if not path.endswith("/v1/messages"):
            self.server_model.unknown.append(f"POST {self.path}")
            self.send_json(404, {"type": "error", "error": {"type": "not_found_error"}})
            return
        request = self.server_model.decide(body, conversation_of(body))
        ident = f"msg_fake_{self.server_model.count}"
        if body.get("stream"):
            self._stream(ident, request)
        else:
            self.send_json(200, {**_message(ident, body, request.reply), "usage": _USAGE})

    def _stream(self, ident: str, request: ModelRequest) -> None:
        reply = request.reply
        message = {**_message(ident, request.body, reply), "content": [], "stop_reason": None}
        events = [_event("message_start", {"message": {**message, "usage": _USAGE}})]
        if reply.kind == "tool_call":
            block = {"type": "tool_use", "id": f"toolu_fake_{self.server_model.count}"}
            events.append(
                _event(
                    "content_block_start",
                    {"index": 0, "content_block": {**block, "name": reply.tool_name, "input": {}}},
                )
            )
            delta = {"type": "input_json_delta", "partial_json": json.dumps(reply.tool_input)}
            events.append(_event("content_block_delta", {"index": 0, "delta": delta}))
        else:
            events.append(
                _event(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                )
            )
            events += [
                _event(
                    "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}
                )
                for w in reply.words()
            ]
        events.append(_event("content_block_stop", {"index": 0}))
        stop = {"stop_reason": _stop_reason(reply), "stop_sequence": None}
        events.append(_event("message_delta", {"delta": stop, "usage": {"output_tokens": 5}}))
        events.append(_event("message_stop", {}))
        self.start_events()
        delay = self.server_model.chunk_delay_s if reply.delay_s is None else reply.delay_s
        self.send_events(events, delay)


def _stop_reason(reply: Answer) -> str:
    return "tool_use" if reply.kind == "tool_call" else "end_turn"


def _message(ident: str, body: dict[str, Any], reply: Answer) -> dict[str, Any]:
    if reply.kind == "tool_call":
        content: list[dict[str, Any]] = [
            {
                "type": "tool_use",
                "id": "toolu_fake",
                "name": reply.tool_name,
                "input": reply.tool_input,
            }
        ]
    else:
        content = [{"type": "text", "text": reply.text}]
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-fake"),
        "content": content,
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
    }


@dataclass
class FakeAnthropic(ModelServer):
    """The fake Messages API; ``base_url`` is what ``ANTHROPIC_BASE_URL`` gets."""

    handler: ClassVar[type[ModelHandler]] = _Handler
    #: requests for paths this server does not serve ("METHOD path")
    unknown: list[str] = field(default_factory=list)
