"""``acp-proxy serve``: the unix-socket listener and the process's life cycle."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import secrets
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

from store import (
    AnyStore,
    DatabaseLock,
    FileIdentity,
    StoreError,
    check_writable,
    file_identity,
    is_postgres_url,
    make_private_dirs,
    open_store,
    secure_database_files,
)

from .config import Config
from .drain import drain
from .listener import PeerCredentials, accept_connections, connection_cap, raise_open_file_limit
from .logs import get_logger
from .metrics import serve_metrics
from .proxy import Proxy
from .tool_env import ToolEnv

__all__ = ["SocketInUseError", "StartRefused", "redact_db", "replica_id", "serve"]

#: How often the database path is checked for being deleted or replaced under the proxy.
DB_WATCH_INTERVAL_S = 2.0


def redact_db(db: str) -> str:
    """``--db`` for a log line: a PostgreSQL URL without its password."""
    head, sep, tail = db.partition("://")
    if sep and "@" in tail:
        creds, _, rest = tail.rpartition("@")
        return f"{head}{sep}{creds.split(':', 1)[0]}@{rest}"
    return db


class StartRefused(Exception):
    """``serve`` cannot start; the message (one line) says why and names the file."""


class SocketInUseError(StartRefused):
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
    await proxy.hub.stop_agents()  # each closes its sessions while its output is still read
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


def replica_id() -> str:
    """An id unique to this process run: a restarted replica is a new owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _take_locks(socket_path: Path, db: Path | None) -> list[DatabaseLock]:
    """The socket's lock, then the SQLite database's (always in this order, so of two serves
    racing for the same pair exactly one gets both); held until ``serve`` returns."""
    locks: list[DatabaseLock] = []
    try:
        try:
            locks.append(DatabaseLock(Path(f"{socket_path}.lock"), f"the socket {socket_path}"))
        except StoreError as exc:  # about the socket's directory: explained as such
            raise StartRefused(str(exc)) from exc.__cause__
        if db is not None:
            try:
                locks.append(DatabaseLock(Path(f"{db}.lock"), f"the database {db}"))
            except StoreError as exc:
                raise StartRefused(str(exc)) from exc
    except StartRefused:
        for lock in locks:
            lock.release()
        raise
    return locks


def _prepare_database(db: Path, log: Any) -> None:
    """Refuse a database that cannot be written; create it, and its directory, owner-only."""
    try:
        make_private_dirs(db.parent)
        check_writable(db)
        tightened = secure_database_files(db)
    except StoreError as exc:
        raise StartRefused(str(exc)) from exc
    except OSError as exc:
        raise StartRefused(f"cannot create the database {db}: {exc.strerror}") from exc
    for path, mode in tightened:
        log.warning(
            "store.mode_tightened",
            file=str(path),
            old_mode=oct(mode),
            new_mode="0o600",
            hint="the database holds every conversation; it is now readable by its owner only",
        )


async def _watch_database(db: Path, opened: FileIdentity | None, keep_fd: int, log: Any) -> None:
    """Log an error when the database file is deleted or replaced under the running proxy.

    The proxy goes on with the file it opened (turns in flight keep working, and every write
    lands in the old file); ``keep_fd`` keeps that file reachable as ``/proc/<pid>/fd/<n>``
    so it can be copied before the proxy is restarted. Bounded: runs until cancelled.
    """
    state = "ok"
    while True:
        await anyio.sleep(DB_WATCH_INTERVAL_S)
        now = file_identity(db)
        seen = "ok" if now == opened else "missing" if now is None else "replaced"
        if seen != state and seen != "ok":
            log.error(
                f"store.file_{seen}",
                db=str(db),
                hint=f"the proxy keeps writing to the file it opened: copy "
                f"/proc/{os.getpid()}/fd/{keep_fd} (and {db}-wal, if present) before "
                "restarting, or the conversations recorded since start are lost",
            )
        elif seen == "ok" and state != "ok":
            log.info("store.file_back", db=str(db))
        state = seen


async def serve(config: Config) -> None:
    """Run the proxy until SIGINT/SIGTERM: the drain (drain.py), then agents are terminated
    and the store closed."""
    log = get_logger(component="serve")
    started = time.monotonic()
    _reap_agents_with_pidfd()
    soft_before, open_files = raise_open_file_limit()
    cap = connection_cap(config, open_files)
    path = Path(config.socket)
    try:
        make_private_dirs(path.parent)
    except OSError as exc:
        raise StartRefused(f"cannot create the socket's directory {path.parent}: {exc}") from exc
    # A PostgreSQL store is shared by replicas (leases); a SQLite file belongs to one serve.
    db = None if is_postgres_url(config.db) else Path(config.db)
    locks = _take_locks(path, db)
    try:
        if db is not None:
            _prepare_database(db, log)
        _clear_stale_socket(path)
        opened = file_identity(db) if db is not None else None
        keep_fd = os.open(db, os.O_RDONLY | os.O_CLOEXEC) if db is not None else None
        try:
            await _serve_on(config, path, cap, log, started, (opened, keep_fd, soft_before))
        finally:
            if keep_fd is not None:
                os.close(keep_fd)
    finally:
        for lock in reversed(locks):
            lock.release()
    log.info("serve.stopped", uptime_s=round(time.monotonic() - started, 3))


async def _serve_on(
    config: Config,
    path: Path,
    cap: int,
    log: Any,
    started: float,
    db_state: tuple[FileIdentity | None, int | None, int],
) -> None:
    # Replicas share a PostgreSQL database: each session has one owner (its lease).
    owner = (config.replica_id or replica_id()) if is_postgres_url(config.db) else None
    async with open_store(
        config.db, owner=owner, lease_ttl_s=config.lease_ttl_s, address=config.advertise or None
    ) as store:
        listener = await anyio.create_unix_listener(path, mode=config.socket_mode)
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await _serve(config, store, listener, signals, log, started, cap, db_state, owner)
        finally:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink at shutdown, lock held)


async def _serve(
    config: Config,
    store: AnyStore,
    listener: SocketListener,
    signals: AsyncIterator[int],
    log: Any,
    started: float,
    cap: int,
    db_state: tuple[FileIdentity | None, int | None, int],
    owner: str | None,
) -> None:
    opened, keep_fd, soft_before = db_state
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

            async def handle(stream: SocketStream, peer: PeerCredentials | None) -> None:
                try:
                    client = proxy.new_client(stream)
                    client.peer_uid = peer.uid if peer is not None else None
                    await client.run()
                except Exception:
                    # A bug met by one connection ends that connection, not the proxy
                    # and the other conversations.
                    log.exception("client.crashed")

            tg.start_soon(accept_connections, listener, handle, tg, config, cap)
            if keep_fd is not None:
                tg.start_soon(_watch_database, Path(config.db), opened, keep_fd, log)
            proxy.hub.pool.start_spares()
            tg.start_soon(proxy.hub.run_reaper)
            tg.start_soon(proxy.hub.pool.watch_memory)
            log.info(
                "ready",
                socket=config.socket,
                db=redact_db(config.db),
                replica=owner,
                agent_command=config.agent_command,
                pid=os.getpid(),
                max_connections=cap,
                open_files_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                open_files_limit_was=soft_before,
                startup_ms=round((time.monotonic() - started) * 1000, 3),
            )
            try:
                await anyio.sleep_forever()
            finally:
                proxy.hub.shutdown()
    finally:
        if tool_env is not None:  # every agent has exited: their environment files go
            tool_env.close()
