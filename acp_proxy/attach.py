"""``acp-proxy attach``: a stdio ⇄ unix-socket bridge for clients that can only spawn a command.

Bytes are relayed unchanged in both directions; nothing but the proxy's output is written to
stdout (logs go to stderr). The agent lives under ``serve``, not under this process: stdin EOF
or a signal here ends the bridge, never the turn or the session.
"""

from __future__ import annotations

import os
import sys

import anyio
from anyio.abc import SocketStream

from .logs import get_logger

__all__ = ["attach"]

_READ_SIZE = 1 << 16


async def _stdin_to_socket(stream: SocketStream) -> None:
    fd = sys.stdin.fileno()
    while True:
        data = await anyio.to_thread.run_sync(os.read, fd, _READ_SIZE, abandon_on_cancel=True)
        if not data:
            # Half-close: the proxy sees end of input and finishes answering what it got.
            await stream.send_eof()
            return
        await stream.send(data)


async def _socket_to_stdout(stream: SocketStream) -> None:
    fd = sys.stdout.fileno()
    try:
        async for data in stream:
            view = memoryview(data)
            while view:
                written = await anyio.to_thread.run_sync(os.write, fd, view)
                view = view[written:]
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def attach(socket_path: str) -> int:
    """Relay stdio to the proxy at ``socket_path`` until the proxy closes the connection."""
    log = get_logger(component="attach")
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError as exc:
        log.error(
            "attach.connect_failed",
            socket=socket_path,
            error=str(exc),
            hint="is `acp-proxy serve` running with this --socket?",
        )
        return 1
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(_stdin_to_socket, stream)
        await _socket_to_stdout(stream)
        tg.cancel_scope.cancel()
    return 0
