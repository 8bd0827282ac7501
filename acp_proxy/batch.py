"""What one chunk of an agent's output means (:class:`Batch`), and how an agent process ended.

A batch collects store writes and deliveries, decided synchronously by the session that owns
the agent; the agent commits the writes and then runs the deliveries in order. No I/O here.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import ErrorResponse, Response

__all__ = ["AgentError", "AgentExited", "Batch", "ExitInfo", "LineSink", "ReplyCallback"]


class LineSink(Protocol):
    """Where a batch's lines for one conversation go once committed."""

    def deliver_lines(self, items: list[tuple[int, bytes]]) -> None:
        """Send ``(event seq or 0, line)`` items, in order."""


class _LineRun:
    """Consecutive lines of a batch for one sink: delivered as one write, not one each."""

    __slots__ = ("items", "sink")

    def __init__(self, sink: LineSink, seq: int, line: bytes) -> None:
        self.sink = sink
        self.items = [(seq, line)]

    def __call__(self) -> None:
        self.sink.deliver_lines(self.items)


@dataclass
class Batch:
    """What one chunk of agent output means: store writes, then deliveries in order."""

    ops: list[Any] = field(default_factory=list)
    deliveries: list[Callable[[], None]] = field(default_factory=list)

    def add_line(self, sink: LineSink, seq: int, line: bytes) -> None:
        """Deliver ``line`` to ``sink`` after what is queued so far (joined with the lines
        queued for the same sink just before it)."""
        last = self.deliveries[-1] if self.deliveries else None
        if type(last) is _LineRun and last.sink is sink:
            last.items.append((seq, line))
        else:
            self.deliveries.append(_LineRun(sink, seq, line))


@dataclass(frozen=True)
class ExitInfo:
    """How an agent process ended."""

    returncode: int | None
    stderr_tail: list[str]

    def as_data(self) -> dict[str, Any]:
        """JSON-RPC ``error.data`` describing the exit."""
        code = self.returncode
        return {
            "kind": "agent_exited",
            "exitCode": code if code is not None and code >= 0 else None,
            "signal": signal.Signals(-code).name if code is not None and code < 0 else None,
            "stderrTail": self.stderr_tail,
        }

    def describe(self) -> str:
        """One line for humans."""
        data = self.as_data()
        how = f"signal {data['signal']}" if data["signal"] else f"exit code {data['exitCode']}"
        tail = f"; last stderr line: {self.stderr_tail[-1]!r}" if self.stderr_tail else ""
        return f"the agent process ended ({how}){tail}"


class AgentError(Exception):
    """The agent answered a proxy request with a JSON-RPC error."""

    def __init__(self, method: str, reply: ErrorResponse) -> None:
        super().__init__(f"agent answered {method} with error {reply.code}: {reply.message}")
        self.reply = reply


class AgentExited(Exception):
    """The agent process ended before answering."""

    def __init__(self, info: ExitInfo, doing: str) -> None:
        super().__init__(f"{info.describe()} while {doing}")
        self.info = info


#: Called (synchronously) with the agent's answer to a request the proxy sent.
ReplyCallback = Callable[[Response | ErrorResponse, Batch], None]
