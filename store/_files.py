"""The SQLite database's files on disk: owner-only modes, the one-writer lock, writability.

Conversations are secrets (prompts, tool output, API answers): the database, its ``-wal`` and
``-shm`` side files (SQLite gives them the database file's mode) and every directory created
for them are owner-only, whatever the umask. A file found with wider permissions is tightened
and reported, so the caller can log it.

One ``acp-proxy serve`` per database: two writers on one file each record only what their own
agents say and serve the same session with two agents. `DatabaseLock` is an exclusive
``flock`` on ``<db>.lock``, held for the process's life; readers (``acp-proxy sessions``) open
the database itself and never take it. The lock file is never deleted: unlinking a lock file
lets a third process lock a new inode while the second still holds the old one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Final, NamedTuple

from ._records import StoreError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "DatabaseLock",
    "FileIdentity",
    "LockHeld",
    "check_writable",
    "file_identity",
    "make_private_dirs",
    "secure_database_files",
]

#: Owner read/write only: the database holds every conversation in the clear.
FILE_MODE: Final = 0o600
#: Owner only, for the directories the proxy creates for its database and socket.
DIR_MODE: Final = 0o700
_SIDE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")


class LockHeld(StoreError):
    """Another process holds the lock (another ``acp-proxy serve`` on the same resource)."""


def make_private_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents, each ``DIR_MODE``; return those created.

    Directories that already exist are left as they are (``/tmp``, a home directory).
    """
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to chmod
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        created.append(path)
    return created


def secure_database_files(db: Path) -> list[tuple[Path, int]]:
    """Create the database file ``FILE_MODE`` if missing; tighten it and its side files.

    Returns:
        ``(path, old mode)`` of every existing file whose mode was wider than ``FILE_MODE``.
    """
    make_private_dirs(db.parent)
    fd = os.open(db, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    tightened = []
    for suffix in _SIDE_SUFFIXES:
        path = Path(f"{db}{suffix}")
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & ~FILE_MODE:
            try:
                os.chmod(path, mode & FILE_MODE)
            except PermissionError:
                continue  # not ours: opening it tells what is wrong with it
            tightened.append((path, mode))
    return tightened


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_writable(db: Path) -> None:
    """Raise `StoreError` (one line, naming the file) unless the database can be written.

    SQLite opens a read-only file without complaint and fails only at the first write; a
    proxy that reports ``ready`` and then cannot record a single turn is worse than one that
    refuses to start.
    """
    directory = db.parent
    if _read_only_fs(directory):
        raise StoreError(f"cannot write the database {db}: its file system is read-only")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot write the database {db}: no write permission on {directory} "
            "(SQLite creates the -wal and -shm files there)"
        )
    for suffix in _SIDE_SUFFIXES:
        path = Path(f"{db}{suffix}")
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(
                f"cannot write the database file {path}: {exc.strerror}; fix its owner or "
                "mode, or point --db at a writable file"
            ) from None
        os.close(fd)


class DatabaseLock:
    """An exclusive ``flock`` on a lock file, held until `release` (or the process ends)."""

    def __init__(self, path: Path, what: str) -> None:
        """Take the lock or raise `LockHeld`.

        Args:
            path: The lock file (created ``FILE_MODE`` if missing, never deleted).
            what: What the lock protects, for the error message (``the database x.db``).
        """
        self.path = path
        make_private_dirs(path.parent)
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
            who = f"process {holder}" if holder else "another process"
            raise LockHeld(
                f"{what} is already served by {who} (lock {path} is held); one acp-proxy "
                "serve per database and socket: stop the other one or use another path"
            ) from None
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: the lock is useless without its holder's pid
            self.release()
            raise StoreError(f"cannot write the lock file {path}: {exc.strerror}") from exc

    def _holder(self) -> str:
        assert self._fd is not None
        with contextlib.suppress(OSError):
            return os.pread(self._fd, 32, 0).decode(errors="replace").strip()
        return ""

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileIdentity(NamedTuple):
    """Which file a path names: device and inode."""

    device: int
    inode: int


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the file at ``path`` now, None if there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(info.st_dev, info.st_ino)
