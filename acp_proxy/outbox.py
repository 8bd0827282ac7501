"""A byte-bounded outgoing queue with one writer task per peer.

Deciding code stays synchronous: it calls :meth:`Outbox.send_nowait` and never awaits a slow
peer. When nothing is queued or being written, the data is written at once with the peer's
non-blocking ``direct`` write (a socket's ``send``): no hop through the writer task, whose
wake-up costs more than the write. What that does not take is queued; the writer task joins
everything queued into one write, so a burst of small lines costs one syscall. A peer that
stops reading fills its own outbox and is cut off; nobody else waits.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import ByteSendStream

__all__ = ["DirectWrite", "Outbox", "OutboxFull"]

#: A non-blocking write: returns how many bytes it took, raises ``BlockingIOError`` for none.
DirectWrite = Callable[[bytes], int]


class OutboxFull(Exception):
    """The peer did not read ``limit`` bytes of queued output: it is stuck or too slow."""


class Outbox:
    """Queue bytes for a stream; :meth:`run` writes them in order."""

    def __init__(
        self,
        limit_bytes: int,
        direct: DirectWrite | None = None,
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        #: writes to the same peer as the stream given to :meth:`run`, bypassing it
        self.direct = direct
        #: told the queued byte count whenever it changes (a memory budget)
        self.on_size = on_size
        self._sending = False  # run() is inside stream.send()
        self._chunks: list[bytes] = []
        self._size = 0
        self._in_flight = 0  # taken from the queue, inside stream.send()
        self._wakeup = anyio.Event()
        self._written: anyio.Event | None = None  # created only if somebody waits
        self._closed = False

    @property
    def queued(self) -> int:
        """Bytes queued or being written, not yet taken by the peer."""
        return self._size + self._in_flight

    async def wait_written(self) -> None:
        """Return after the writer's next write (or once closed)."""
        if self._closed:
            return
        if self._written is None:
            self._written = anyio.Event()
        await self._written.wait()

    def _wrote(self) -> None:
        written, self._written = self._written, None
        if written is not None:
            written.set()
        if self.on_size is not None:
            self.on_size(self.queued)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called; later sends are dropped."""
        return self._closed

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written: every byte sent so far is out."""
        return not self._chunks and not self._sending

    def send_nowait(self, data: bytes) -> None:
        """Queue ``data``. Dropped silently once closed (the peer is gone).

        Raises:
            OutboxFull: queuing would exceed the byte limit; the outbox is closed.
        """
        if self._closed:
            return
        if self.direct is not None and not self._chunks and not self._sending:
            try:
                sent = self.direct(data)
            except OSError:  # full (BlockingIOError), or broken: the writer task finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        if self.queued + len(data) > self.limit_bytes and (self._chunks or self._in_flight):
            self.close()
            raise OutboxFull(
                f"{self.queued} bytes already queued for a peer that is not reading "
                f"(limit {self.limit_bytes})"
            )
        self._chunks.append(data)
        self._size += len(data)
        self._wakeup.set()
        if self.on_size is not None:
            self.on_size(self.queued)

    def close(self) -> None:
        """Stop accepting data; :meth:`run` flushes what is queued and returns."""
        self._closed = True
        self._wakeup.set()
        self._wrote()

    async def run(self, stream: ByteSendStream) -> None:
        """Write queued data to ``stream`` until closed and drained.

        Raises whatever the stream raises (``BrokenResourceError`` when the peer went away).
        """
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._chunks:
                chunks, self._chunks, self._in_flight = self._chunks, [], self._size
                self._size = 0
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._sending = True
                try:
                    await stream.send(data)
                finally:
                    self._sending = False
                    self._in_flight = 0
                    self._wrote()
            if self._closed:
                return
