"""A fake OpenAI-compatible model server for driving the real ``opencode acp`` offline.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (SSE streaming when the request
says ``stream: true``, a plain JSON completion otherwise). What it answers is decided by
:func:`tests.real_agent.model_server.answer` (see there); a tool call is a ``tool_calls`` delta
(``finish_reason: "tool_calls"``) and opencode sends the result back as a ``role: "tool"``
message. opencode sends the whole conversation every turn.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from tests.real_agent.model_server import (
    BASH_COMMAND,
    BASH_OUTPUT,
    RUN_BASH,
    RUN_COMMAND,
    SLOW_REPLY,
    Answer,
    Conversation,
    ModelHandler,
    ModelServer,
    content_text,
)

__all__ = [
    "BASH_COMMAND",
    "BASH_OUTPUT",
    "RUN_BASH",
    "RUN_COMMAND",
    "SLOW_REPLY",
    "FakeModel",
    "opencode_config",
]

MODEL_ID = "echo-1"
_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def conversation_of(body: dict[str, Any]) -> Conversation:
    """What the fake model reads from a chat completions request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    return Conversation(
        [content_text(m.get("content")) for m in messages if m.get("role") == "user"],
        [
            (t.get("function") or {}).get("name", "")
            for t in body.get("tools") or []
            if isinstance(t, dict)
        ],
        content_text(last.get("content")) if last.get("role") == "tool" else None,
    )


def _chunk(ident: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tool_call(reply: Answer, call_id: str, index: int | None = None) -> dict[str, Any]:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": reply.tool_name, "arguments": json.dumps(reply.tool_input)},
    }
    return call if index is None else {"index": index, **call}


class _Handler(ModelHandler):
    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "fake"}
            self.send_json(200, {"object": "list", "data": [model]})
        else:
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = self.read_json()
        if body is None:
            return
        reply = self.server_model.decide(body, conversation_of(body)).reply
        ident = f"chatcmpl-fake-{self.server_model.count}"
        created = int(time.time())
        if body.get("stream"):
            self._stream(ident, created, reply, body)
        else:
            self._complete(ident, created, reply)

    def _complete(self, ident: str, created: int, reply: Answer) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        finish = "stop"
        if reply.kind == "tool_call":
            message["tool_calls"] = [_tool_call(reply, "call_fake_1")]
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish}
        self.send_json(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": MODEL_ID,
                "choices": [choice],
                "usage": _USAGE,
            },
        )

    def _stream(self, ident: str, created: int, reply: Answer, body: dict[str, Any]) -> None:
        chunks = [_chunk(ident, created, {"role": "assistant", "content": ""}, None)]
        if reply.kind == "tool_call":
            call = _tool_call(reply, f"call_fake_{self.server_model.count}", 0)
            chunks.append(_chunk(ident, created, {"tool_calls": [call]}, None))
            finish = "tool_calls"
        else:
            chunks += [_chunk(ident, created, {"content": w}, None) for w in reply.words()]
            finish = "stop"
        last = _chunk(ident, created, {}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            last["usage"] = _USAGE
        chunks.append(last)
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        events.append(b"data: [DONE]\n\n")
        self.start_events()
        delay = self.server_model.chunk_delay_s if reply.delay_s is None else reply.delay_s
        self.send_events(events, delay)


@dataclass
class FakeModel(ModelServer):
    """The fake chat completions API; ``base_url`` is the provider's ``baseURL``."""

    handler: ClassVar[type[ModelHandler]] = _Handler
    url_suffix: ClassVar[str] = "/v1"


def opencode_config(base_url: str) -> dict[str, Any]:
    """opencode's config (``OPENCODE_CONFIG_CONTENT``) pointing every model at ``base_url``."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "fake",
                "options": {"baseURL": base_url, "apiKey": "sk-fake"},
                "models": {
                    MODEL_ID: {
                        "name": "echo",
                        "tool_call": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
        "model": f"fake/{MODEL_ID}",
        "small_model": f"fake/{MODEL_ID}",
        "enabled_providers": ["fake"],
        "autoupdate": False,
        "share": "disabled",
        "lsp": False,
        "formatter": False,
    }
