"""``acp-proxy serve``: the unix-socket listener and the process's life cycle."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup

from store import SqliteStore, open_store

from .config import Config
from .drain import drain
from .logs import get_logger
from .metrics import serve_metrics
from .proxy import Proxy
from .tool_env import ToolEnv

__all__ = ["SocketInUseError", "serve"]


class SocketInUseError(Exception):
    """Another process already accepts connections on the socket path."""


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead proxy; refuse if a live one answers."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise SocketInUseError(f"{path} exists and is not a socket; choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUseError(f"another process is already listening on {path}")


async def _watch_signals(
    signals: AsyncIterator[int], tg: TaskGroup, proxy: Proxy, log: Any
) -> None:
    """First SIGTERM/SIGINT: drain (see drain.py), then stop. A second one skips the wait.

    ``signals`` stays open until ``serve`` returns: a signal during the agents' shutdown is
    ignored (that shutdown is bounded by ``kill_grace_s``) instead of killing the proxy and
    orphaning the agents' process groups.
    """
    async for signum in signals:
        log.info("serve.signal", signal=signal.Signals(signum).name)
        break
    wait = anyio.CancelScope()

    async def skip_on_second_signal() -> None:
        async for signum in signals:
            log.info("serve.signal", signal=signal.Signals(signum).name, drain="skipped")
            wait.cancel()
            return

    async with anyio.create_task_group() as watch:
        watch.start_soon(skip_on_second_signal)
        await drain(proxy, proxy.config.drain_timeout_s, wait)
        watch.cancel_scope.cancel()
    tg.cancel_scope.cancel()


def _reap_agents_with_pidfd() -> None:
    """Python 3.11's default child watcher keeps one waitpid thread per live agent (54
    threads, ~15 KB each, with 50 sessions); a pidfd watcher uses the event loop instead.
    3.12+ picks it by itself. Skipped where the kernel or sandbox refuses pidfd_open."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        loop = asyncio.get_running_loop()  # not on trio: nothing to do
        os.close(os.pidfd_open(os.getpid()))
    except (RuntimeError, OSError):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


async def serve(config: Config) -> None:
    """Run the proxy until SIGINT/SIGTERM: the drain (drain.py), then agents are terminated
    and the store closed."""
    log = get_logger(component="serve")
    started = time.monotonic()
    _reap_agents_with_pidfd()
    path = Path(config.socket)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(path)
    async with open_store(config.db) as store:
        listener = await anyio.create_unix_listener(path, mode=config.socket_mode)
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await _serve(config, store, listener, signals, log, started)
        finally:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink at shutdown)
    log.info("serve.stopped", uptime_s=round(time.monotonic() - started, 3))


async def _serve(
    config: Config,
    store: SqliteStore,
    listener: SocketListener,
    signals: AsyncIterator[int],
    log: Any,
    started: float,
) -> None:
    tool_env: ToolEnv | None = None
    try:
        async with listener, anyio.create_task_group() as tg:
            proxy = Proxy(config, store, tg)
            tool_env = proxy.hub.pool.tool_env
            store.commit_observer = proxy.metrics.observe_store_commit
            if config.metrics_address:
                await tg.start(
                    serve_metrics,
                    config.metrics_address,
                    lambda: proxy.metrics.render(proxy.status()),
                )
            tg.start_soon(_watch_signals, signals, tg, proxy, log)

            async def handle(stream: SocketStream) -> None:
                try:
                    await proxy.new_client(stream).run()
                except Exception:
                    # A bug met by one connection ends that connection, not the proxy
                    # and the other conversations.
                    log.exception("client.crashed")

            tg.start_soon(listener.serve, handle, tg)
            proxy.hub.pool.start_spares()
            tg.start_soon(proxy.hub.run_reaper)
            log.info(
                "ready",
                socket=config.socket,
                db=str(config.db),
                agent_command=config.agent_command,
                pid=os.getpid(),
                startup_ms=round((time.monotonic() - started) * 1000, 3),
            )
            try:
                await anyio.sleep_forever()
            finally:
                proxy.hub.shutdown()
    finally:
        if tool_env is not None:  # every agent has exited: their environment files go
            tool_env.close()
