"""The part of a deterministic fake model server that does not depend on the wire format.

Standard library only (``http.server`` in a daemon thread), bound to 127.0.0.1 on an ephemeral
port. A wire format (OpenAI chat completions for opencode, Anthropic Messages for Claude Code)
subclasses :class:`ModelServer` and :class:`ModelHandler`, turns each request into a
:class:`Conversation` and streams the :class:`Answer` that :func:`answer` decides.

Answers are deterministic and make the conversation's continuity observable:

* an ordinary turn answers ``I have seen N user messages. Last: <text>``, where N counts the
  user's own messages of the conversation the agent sent (agents send the whole conversation
  every turn);
* when the last user message contains :data:`RUN_COMMAND` followed by a command, the same with
  that command (the rest of the message);
* when the last user message contains :data:`RUN_BASH` (and no tool result has come back since),
  the answer is a call of the agent's bash tool running :data:`BASH_COMMAND`; the agent then
  runs it (asking ``session/request_permission`` first when configured so) and sends the result
  back, answered with ``Tool said: <output>``;
* when the last user message contains :data:`SLOW_REPLY`, the answer is streamed one word every
  :data:`SLOW_CHUNK_DELAY_S` (a turn that is still running when a test acts);
* the agent's side requests (titles, summaries, quota probes: requests without tools) get a
  short fixed answer and are counted apart.

Every request is recorded (:attr:`ModelServer.requests`), so tests can check what the model saw.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

__all__ = [
    "BASH_COMMAND",
    "BASH_OUTPUT",
    "RUN_BASH",
    "RUN_COMMAND",
    "SLOW_CHUNK_DELAY_S",
    "SLOW_REPLY",
    "Answer",
    "Conversation",
    "ModelHandler",
    "ModelRequest",
    "ModelServer",
    "answer",
    "content_text",
    "seen",
]

RUN_BASH = "RUN_BASH"
RUN_COMMAND = "RUN_COMMAND:"  #: followed by a command: the bash tool runs that command
SLOW_REPLY = "SLOW_REPLY"  #: in the last user message: stream the answer slowly (seconds)
SLOW_CHUNK_DELAY_S = 0.5
BASH_OUTPUT = "fake-bash-ran-ok"
BASH_COMMAND = f"echo {BASH_OUTPUT} | tee bash-ran.txt"


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def seen(n: int, last: str) -> str:
    """The ordinary answer to a conversation of ``n`` user messages ending with ``last``."""
    return f"I have seen {n} user messages. Last: {last}"


@dataclass(frozen=True)
class Conversation:
    """What the fake model reads from one request, whatever the wire format."""

    user_texts: list[str]  #: the text of each of the user's own messages, in order
    tool_names: list[str]  #: the tools offered (empty: a side request)
    tool_result: str | None  #: the text of a tool result that ends the conversation, if any


@dataclass(frozen=True)
class Answer:
    """The fake model's reply: text, or one call of a tool."""

    kind: str  #: "turn", "tool_call", "tool_result" or "side" (no tools: title, summary)
    text: str = ""
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)
    delay_s: float | None = None  #: pause between streamed pieces (None: the server's)

    def words(self) -> list[str]:
        """The text cut into streamed pieces (joined, they give the text back)."""
        parts = self.text.split(" ")
        return [p if i == 0 else " " + p for i, p in enumerate(parts)]


def answer(conv: Conversation) -> Answer:
    """The deterministic reply to a conversation (see the module docstring)."""
    if not conv.tool_names:
        return Answer("side", "Fake conversation")
    if conv.tool_result is not None:
        return Answer("tool_result", f"Tool said: {conv.tool_result.strip()}")
    users = conv.user_texts
    last = users[-1] if users else ""
    if RUN_BASH in last or RUN_COMMAND in last:
        tools = conv.tool_names
        bash = next((n for n in tools if n.lower() == "bash"), None) or next(
            (n for n in tools if "bash" in n.lower() or "shell" in n.lower()), None
        )
        if bash is None:
            return Answer("turn", f"No bash tool among {tools}")
        command = BASH_COMMAND
        if RUN_COMMAND in last:
            command = last.split(RUN_COMMAND, 1)[1].strip()
        return Answer(
            "tool_call",
            tool_name=bash,
            tool_input={"command": command, "description": "Print a marker"},
        )
    delay = SLOW_CHUNK_DELAY_S if SLOW_REPLY in last else None
    return Answer("turn", seen(len(users), last), delay_s=delay)


@dataclass
class ModelRequest:
    """One model request as received, with the answer it got."""

    body: dict[str, Any]
    conversation: Conversation
    reply: Answer
    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return self.reply.kind

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    def user_texts(self) -> list[str]:
        """The text of each of the user's own messages, in order."""
        return self.conversation.user_texts

    def tool_names(self) -> list[str]:
        return self.conversation.tool_names


class ModelHandler(BaseHTTPRequestHandler):
    """Request plumbing shared by the wire formats; ``server_model`` is set per server."""

    server_model: ClassVar[ModelServer]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_json(self) -> dict[str, Any] | None:
        """The request body as a JSON object (None, with a 400 sent, when it is not one)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            self.send_json(400, {"error": {"message": f"bad json: {exc}"}})
            return None
        return body if isinstance(body, dict) else {}

    def start_events(self) -> None:
        """Send the headers of a server-sent event stream (the connection closes after it)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_events(self, events: list[bytes], delay_s: float) -> None:
        """Write SSE events, pausing ``delay_s`` before each after the first two."""
        try:
            for i, event in enumerate(events):
                if i > 1 and delay_s:
                    time.sleep(delay_s)
                self.wfile.write(event)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@dataclass
class ModelServer:
    """The server; use as a context manager (``with Server() as model: model.base_url``)."""

    handler: ClassVar[type[ModelHandler]] = ModelHandler
    url_suffix: ClassVar[str] = ""

    chunk_delay_s: float = 0.0  #: pause between streamed chunks
    requests: list[ModelRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ModelServer:
        handler = type("Handler", (self.handler,), {"server_model": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "model server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_suffix}"

    def decide(self, body: dict[str, Any], conversation: Conversation) -> ModelRequest:
        """Answer ``conversation`` and record the request."""
        request = ModelRequest(body, conversation, answer(conversation))
        with self._lock:
            self.requests.append(request)
        return request

    # -- what the model saw ------------------------------------------------------------------

    def chat_requests(self, *kinds: str) -> list[ModelRequest]:
        """Recorded requests (only of ``kinds`` when given), oldest first."""
        with self._lock:
            return [r for r in self.requests if not kinds or r.kind in kinds]

    def conversation_requests(self) -> list[ModelRequest]:
        """Requests of the conversation itself (not the agent's side requests)."""
        return self.chat_requests("turn", "tool_call", "tool_result")

    def last(self) -> ModelRequest:
        """The last request of the conversation."""
        requests = self.conversation_requests()
        assert requests, "the fake model received no conversation request"
        return requests[-1]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)
