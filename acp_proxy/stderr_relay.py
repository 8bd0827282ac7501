"""What an agent writes to stderr during a turn, relayed to the bridges that asked for it.

Some clients read the agent's stderr while a turn runs (the open-design daemon turns lines
about plan tiers, balance or auth into specific run errors). Behind the proxy the agent's
stderr is the proxy's, so each line written while one of the session's turns runs is sent to
the session's attached clients that asked for it (``acp-proxy attach`` does, in its
``_acp-proxy/env`` notification) as a ``_acp-proxy/stderr`` notification, which the bridge
writes to its own stderr. Plain ACP clients never see it. Bounded per agent: lines are cut at
``MAX_LINE_CHARS`` and a token bucket allows ``BURST_LINES`` at once, ``LINES_PER_S`` after
that; what is dropped is counted in the next line that passes.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Final

import msgspec

from .extensions import STDERR_METHOD
from .session import Session

__all__ = ["StderrLimiter", "StderrRelay"]

MAX_LINE_CHARS: Final = 2000
BURST_LINES: Final = 200
LINES_PER_S: Final = 50.0
_encoder: Final = msgspec.json.Encoder()


class StderrLimiter:
    """A token bucket over lines (pure: the clock is given)."""

    def __init__(
        self,
        *,
        burst: int = BURST_LINES,
        rate: float = LINES_PER_S,
        max_chars: int = MAX_LINE_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.rate, self.max_chars, self.clock = burst, rate, max_chars, clock
        self.tokens = float(burst)
        self.updated = clock()
        self.dropped = 0

    def admit(self, line: str) -> str | None:
        """The text to relay for ``line`` (cut, with a note of lines dropped before it), or
        None when over the rate."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            self.dropped += 1
            return None
        self.tokens -= 1
        if len(line) > self.max_chars:
            line = line[: self.max_chars] + f"… [acp-proxy: {len(line) - self.max_chars} chars cut]"
        if self.dropped:
            line = f"[acp-proxy: {self.dropped} agent stderr lines dropped (rate)] {line}"
            self.dropped = 0
        return line


class StderrRelay:
    """Relays one agent's stderr line to its session's clients, if a turn runs."""

    def __init__(self) -> None:
        self._limits: weakref.WeakKeyDictionary[object, StderrLimiter] = weakref.WeakKeyDictionary()

    def relay(self, handler: object, line: str) -> None:
        """``line`` (no newline) came from the stderr of the agent bound to ``handler``."""
        if not isinstance(handler, Session) or handler.turn is None:
            return
        audience, turn = handler.audience, handler.turn
        peers = [
            p
            for p in audience.attachments
            if p.wants_stderr and not p.closed and audience.hears(p, turn)
        ]
        if not peers:
            return
        limiter = self._limits.get(handler)
        if limiter is None:
            limiter = self._limits[handler] = StderrLimiter()
        text = limiter.admit(line)
        if text is None:
            return
        params = _encoder.encode({"sessionId": handler.id, "line": text})
        for peer in peers:
            peer.send_notification(STDERR_METHOD, params)
