"""The write end of an agent's stdin pipe, held by the proxy itself.

Owning the descriptor (instead of the event loop's subprocess transport) lets the agent's
:class:`~acp_proxy.outbox.Outbox` write a prompt straight into the pipe when nothing is queued:
one ``write()``, no hop through a writer task (~0.1 ms of every forwarded prompt, measured with
``bench.overhead``). When the pipe is full the outbox's writer task waits for it with
:func:`anyio.wait_writable`.
"""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
from anyio.abc import ByteSendStream

__all__ = ["PipeWriter"]


class PipeWriter(ByteSendStream):
    """A non-blocking pipe write end as an anyio byte stream."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False

    def write_nowait(self, data: bytes) -> int:
        """Write what the pipe takes now; raises ``BlockingIOError`` when it takes nothing
        and ``OSError`` (``BrokenPipeError``) once the reader is gone."""
        if self.closed:
            raise anyio.ClosedResourceError
        return os.write(self.fd, data)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self.closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError(f"agent stdin: {exc}") from exc
            view = view[written:]

    async def aclose(self) -> None:
        """Close the pipe: the agent reads end of file (ACP's signal to shut down)."""
        if not self.closed:
            self.closed = True
            anyio.notify_closing(self.fd)
            os.close(self.fd)
        await anyio.lowlevel.checkpoint()
