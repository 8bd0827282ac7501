"""Start-up failures a person can act on: one line naming the path, the cause and the fix.

``serve`` meets the host's file system before anything else: a sidecar's unprepared bind
mount, a database left read-only, a full disk. Those are not bugs, and a 40-line traceback
(then, under a restart policy, a crash loop of them) hides the one fact that matters.
:func:`explain` recognises them; anything it does not recognise is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from store import SchemaVersionError, StoreError

__all__ = ["explain"]


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 10:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _who() -> str:
    return f"uid {os.geteuid()}"


def _existing_parent(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path("/")


def _dir_problem(directory: Path) -> str | None:
    """Why this process cannot create files in ``directory`` (or its nearest existing
    ancestor), or None when it can."""
    target = _existing_parent(directory)
    if os.access(target, os.W_OK | os.X_OK):
        return None
    try:
        st = target.stat()
    except OSError as exc:
        return f"{target} cannot be read ({exc.strerror})"
    return (
        f"{target} is owned by uid {st.st_uid} (mode {st.st_mode & 0o7777:04o}) and not "
        f"writable by this process ({_who()})"
    )


def _socket_line(socket: Path, problem: str) -> str:
    directory = _existing_parent(socket.parent)
    return (
        f"acp-proxy serve: cannot create the socket {socket}: {problem}; fix: make "
        f"{directory} writable by {_who()} (chown {os.geteuid()} {directory}; in a container, "
        "a volume the container's user owns), or choose another --socket"
    )


def _db_line(db: Path, cause: str) -> str:
    return f"acp-proxy serve: cannot open the database {db}: {cause}"


def explain(exc: BaseException, socket: str, db: str) -> str | None:
    """One line for an operational start-up failure, or None if ``exc`` is not one."""
    exc = _leaf(exc)
    socket_path, db_path = Path(socket), Path(db)
    messages = " | ".join(str(e) for e in _causes(exc)).lower()
    errnos = {e.errno for e in _causes(exc) if isinstance(e, OSError)}
    if errno.ENOSPC in errnos or "database or disk is full" in messages:
        about_db = str(getattr(exc, "filename", None) or "").startswith(str(db_path))
        where = db_path if about_db or isinstance(exc, StoreError | sqlite3.Error) else socket_path
        return (
            f"acp-proxy serve: the disk holding {where} is full; fix: free space on "
            f"{_existing_parent(where.parent)}'s file system, or move --db elsewhere"
        )
    if isinstance(exc, SchemaVersionError):
        return f"acp-proxy serve: {exc}"
    if isinstance(exc, StoreError) or any(isinstance(e, sqlite3.Error) for e in _causes(exc)):
        if "not a database" in messages or "malformed" in messages:
            return _db_line(
                db_path,
                "the file is not an SQLite database (or is damaged); fix: point --db at the "
                "proxy's database, or move this file away and a new one is created",
            )
        problem = _dir_problem(db_path.parent)
        if problem is not None:
            directory = _existing_parent(db_path.parent)
            return _db_line(
                db_path,
                f"{problem}; fix: make {directory} writable by {_who()} (chown "
                f"{os.geteuid()} {directory}), or choose another --db",
            )
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                st = path.stat()
                return _db_line(
                    db_path,
                    f"{path} is owned by uid {st.st_uid} (mode {st.st_mode & 0o7777:04o}) and "
                    f"not writable by this process ({_who()}); fix: chown {os.geteuid()} "
                    f"{path}, or choose another --db",
                )
        if isinstance(exc, StoreError):
            return f"acp-proxy serve: {exc}; fix: check the file and its directory"
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem = _dir_problem(socket_path.parent)
        if problem is not None:
            return _socket_line(socket_path, problem)
        if exc.errno == errno.EROFS:
            return _socket_line(socket_path, "the file system is read-only")
        return None
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"acp-proxy serve: cannot listen for metrics: {exc.strerror}; fix: choose another "
            "--metrics HOST:PORT, or stop what uses it"
        )
    if isinstance(exc, OSError) and "too long" in messages:
        return (
            f"acp-proxy serve: the socket path {socket_path} is too long for a unix socket "
            "(about 100 bytes at most); fix: choose a shorter --socket"
        )
    return None
