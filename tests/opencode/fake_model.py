"""A tiny deterministic OpenAI-compatible model server for driving the real ``opencode acp``.

Standard library only (``http.server`` in a daemon thread), bound to 127.0.0.1 on an ephemeral
port. It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (SSE streaming when the
request says ``stream: true``, a plain JSON completion otherwise).

Replies are deterministic and make the conversation's continuity observable:

* an ordinary turn answers ``I have seen N user messages. Last: <text>``, where N counts the
  ``role: "user"`` messages of the conversation opencode sent (opencode sends the whole
  conversation every turn);
* when the last user message contains :data:`RUN_BASH` (and no tool result has come back since),
  the answer is a ``tool_calls`` delta for opencode's bash tool (its name is taken from the
  request's ``tools`` list) running :data:`BASH_COMMAND`; opencode then runs the tool (asking
  ``session/request_permission`` first when configured so) and sends the result back as a
  ``role: "tool"`` message, answered with ``Tool said: <output>``;
* when the last user message contains :data:`RUN_COMMAND` followed by a command, the same,
  with that command (the rest of the message);
* when the last user message contains :data:`SLOW_REPLY`, the ordinary answer is streamed one
  word every :data:`SLOW_CHUNK_DELAY_S` (a turn that is still running when a test acts);
* opencode's side requests (session title, summaries: requests without tools) get a short
  fixed answer and are counted apart.

Every request is recorded (:attr:`FakeModel.requests`), so tests can check what the model saw.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
RUN_BASH = "RUN_BASH"
RUN_COMMAND = "RUN_COMMAND:"
SLOW_REPLY = "SLOW_REPLY"  #: in the last user message: stream the answer slowly (seconds)
SLOW_CHUNK_DELAY_S = 0.5
BASH_OUTPUT = "fake-bash-ran-ok"
BASH_COMMAND = f"echo {BASH_OUTPUT} | tee bash-ran.txt"


@dataclass
class ChatRequest:
    """One ``/v1/chat/completions`` request as received."""

    body: dict[str, Any]
    at: float
    kind: str  #: "turn", "tool_call", "tool_result" or "side" (no tools: title, summary)
    reply: str = ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    def user_texts(self) -> list[str]:
        """The text of every user message, in order."""
        return [_text(m.get("content")) for m in self.messages if m.get("role") == "user"]

    def tool_names(self) -> list[str]:
        return [
            (t.get("function") or {}).get("name", "")
            for t in self.body.get("tools") or []
            if isinstance(t, dict)
        ]


def _text(content: Any) -> str:
    """The text of a message's content (a string, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


@dataclass
class FakeModel:
    """The server; use as a context manager (``with FakeModel() as model: model.base_url``)."""

    chunk_delay_s: float = 0.0  #: pause between streamed chunks
    requests: list[ChatRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FakeModel:
        model = self

        class Handler(_Handler):
            fake = model

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-model", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeModel not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what the model saw ------------------------------------------------------------------

    def chat_requests(self, *kinds: str) -> list[ChatRequest]:
        """Recorded requests (only of ``kinds`` when given), oldest first."""
        with self._lock:
            return [r for r in self.requests if not kinds or r.kind in kinds]

    def conversation_requests(self) -> list[ChatRequest]:
        """Requests of the conversation itself (not opencode's side requests)."""
        return self.chat_requests("turn", "tool_call", "tool_result")

    def last(self) -> ChatRequest:
        """The last request of the conversation."""
        requests = self.conversation_requests()
        assert requests, "the fake model received no conversation request"
        return requests[-1]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -- replies -----------------------------------------------------------------------------

    def answer(self, body: dict[str, Any]) -> tuple[ChatRequest, dict[str, Any]]:
        """Decide the reply: ``{"text": ...}`` or ``{"tool_call": {...}}``."""
        messages = body.get("messages") or []
        tools = [
            (t.get("function") or {}).get("name", "")
            for t in body.get("tools") or []
            if isinstance(t, dict)
        ]
        request = ChatRequest(body, time.monotonic(), "turn")
        users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        last_role = messages[-1].get("role") if messages else None
        reply: dict[str, Any]
        if not tools:
            request.kind = "side"
            reply = {"text": "Fake conversation"}
        elif last_role == "tool":
            request.kind = "tool_result"
            reply = {"text": f"Tool said: {_text(messages[-1].get('content')).strip()}"}
        elif users and (RUN_BASH in users[-1] or RUN_COMMAND in users[-1]):
            bash = next((n for n in tools if n == "bash"), None) or next(
                (n for n in tools if "bash" in n or "shell" in n), None
            )
            if bash is None:
                reply = {"text": f"No bash tool among {tools}"}
            else:
                request.kind = "tool_call"
                reply = {
                    "tool_call": {
                        "name": bash,
                        "arguments": {
                            "command": users[-1].split(RUN_COMMAND, 1)[1].strip()
                            if RUN_COMMAND in users[-1]
                            else BASH_COMMAND,
                            "description": "Print a marker",
                        },
                    }
                }
        else:
            last = users[-1] if users else ""
            reply = {"text": f"I have seen {len(users)} user messages. Last: {last}"}
            if SLOW_REPLY in last:
                reply["delay"] = SLOW_CHUNK_DELAY_S
        request.reply = reply.get("text") or json.dumps(reply["tool_call"])
        with self._lock:
            self.requests.append(request)
        return request, reply


def _chunk(ident: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeModel
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "fake"}],
                },
            )
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            self._json(400, {"error": {"message": f"bad json: {exc}"}})
            return
        _request, reply = self.fake.answer(body)
        ident = f"chatcmpl-fake-{self.fake.count}"
        created = int(time.time())
        if body.get("stream"):
            self._stream(ident, created, reply, body)
        else:
            self._complete(ident, created, reply)

    def _complete(self, ident: str, created: int, reply: dict[str, Any]) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": reply.get("text")}
        finish = "stop"
        if "tool_call" in reply:
            call = reply["tool_call"]
            message["tool_calls"] = [
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
                }
            ]
            finish = "tool_calls"
        self._json(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": MODEL_ID,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        )

    def _stream(
        self, ident: str, created: int, reply: dict[str, Any], body: dict[str, Any]
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunks: list[dict[str, Any]] = [
            _chunk(ident, created, {"role": "assistant", "content": ""}, None)
        ]
        if "tool_call" in reply:
            call = reply["tool_call"]
            call_id = f"call_fake_{self.fake.count}"
            chunks.append(
                _chunk(
                    ident,
                    created,
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {
                                    "name": call["name"],
                                    "arguments": json.dumps(call["arguments"]),
                                },
                            }
                        ]
                    },
                    None,
                )
            )
            finish = "tool_calls"
        else:
            words = reply["text"].split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunks.append(_chunk(ident, created, {"content": piece}, None))
            finish = "stop"
        last = _chunk(ident, created, {}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            last["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        chunks.append(last)
        delay = reply.get("delay", self.fake.chunk_delay_s)
        try:
            for i, chunk in enumerate(chunks):
                if i > 1 and delay:
                    time.sleep(delay)
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


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
