"""``acp-proxy attach``: a stdio ⇄ unix-socket bridge for clients that can only spawn a command.

Bytes are relayed unchanged in both directions; nothing but the proxy's output is written to
stdout (logs go to stderr). The agent lives under ``serve``, not under this process: stdin EOF
or a signal here ends the bridge, never the turn or the session.

Installed as the agent binary of a daemon that runs other subcommands of that binary too
(``--version``, ``model list``…), the bridge hands every invocation that is not the ACP entry
point to the real binary (``exec``: same argv, stdio and exit code). Allowlisted environment
variables are sent to the proxy first, as the ``_acp-proxy/env`` notification.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Sequence

import anyio
import msgspec
from anyio.abc import SocketStream

from .extensions import ENV_METHOD

__all__ = ["attach", "dispatch"]

_READ_SIZE = 1 << 16


async def _stdin_to_socket(stream: SocketStream) -> None:
    fd = sys.stdin.fileno()
    # Pipes, sockets and ttys are waited on by the event loop, then read: a read that can
    # block lives in no thread, so nothing outlives the bridge once the proxy closes the
    # socket (a worker blocked in read(0) kept it alive until stdin closed: ~12 s with acpx).
    # Files (and /dev/null) cannot be polled, but their reads never wait: a thread is fine.
    pollable = not stat.S_ISREG(os.fstat(fd).st_mode)
    while True:
        if pollable:
            try:
                await anyio.wait_readable(fd)
            except PermissionError:  # epoll refuses this kind of file
                pollable = False
                continue
            data = _read_or_eof(fd)
        else:
            data = await anyio.to_thread.run_sync(_read_or_eof, fd, abandon_on_cancel=True)
        if not data:
            # Half-close: the proxy sees end of input and finishes answering what it got.
            await stream.send_eof()
            return
        await stream.send(data)


def _read_or_eof(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_SIZE)
    except OSError:  # stdin closed or broken under us: the same as end of input
        return b""


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


def dispatch(args: Sequence[str], *, real_binary: str | None, acp_argv: str) -> None:
    """Exec the real binary unless ``args`` is the ACP entry point; returns if it is.

    ``acp_argv`` (shell words) is the argument prefix of the ACP entry point; empty matches
    every invocation.
    """
    entry = shlex.split(acp_argv)
    if list(args[: len(entry)]) == entry:
        return
    if not real_binary:
        sys.stderr.write(
            f"acp-proxy attach: {shlex.join(args)!r} is not the ACP entry point "
            f"({acp_argv!r}) and no --real-binary was given to run it\n"
        )
        sys.exit(2)
    os.execv(real_binary, [real_binary, *args])


async def attach(socket_path: str, forward_env: Sequence[str] = ()) -> int:
    """Relay stdio to the proxy at ``socket_path`` until the proxy closes the connection."""
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError as exc:
        # Plain text: a person reads this, in a terminal or an editor's agent log.
        reason = exc.strerror or str(exc)
        sys.stderr.write(
            f"acp-proxy attach: cannot connect to {socket_path}: {reason}; "
            "is `acp-proxy serve` running with this --socket?\n"
        )
        return 1
    env = {name: os.environ[name] for name in forward_env if name in os.environ}
    async with stream, anyio.create_task_group() as tg:
        if env:
            await stream.send(
                msgspec.json.encode(
                    {"jsonrpc": "2.0", "method": ENV_METHOD, "params": {"env": env}}
                )
                + b"\n"
            )
        tg.start_soon(_stdin_to_socket, stream)
        await _socket_to_stdout(stream)
        tg.cancel_scope.cancel()
    return 0
