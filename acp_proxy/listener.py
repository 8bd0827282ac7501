"""Accepting connections: an accept error never ends ``serve``, and only allowed peers get in.

anyio's ``Listener.serve`` ends at the first ``accept()`` error, and under a soft
``RLIMIT_NOFILE`` of 1024 (systemd's default) ~1,050 idle connections are enough for EMFILE:
the whole proxy stopped. Here:

- at start the soft open-file limit is raised to the hard limit (`raise_open_file_limit`);
- at most `connection_cap` connections are served at once; one more is accepted, told why in
  one JSON-RPC error line (``data.kind = "too_many_connections"``) and closed, so a client
  looping on connect cannot use the descriptors the agents and the store need;
- should ``accept()`` still fail for lack of descriptors or memory, one descriptor kept in
  reserve is freed to accept and close the waiting connection (otherwise it stays queued and
  the listening socket stays readable: a busy loop), the failure is logged (at most once a
  second) and accepting pauses briefly; any other accept error is logged and retried;
- the peer's uid is read with ``SO_PEERCRED`` and checked against the proxy's own uid, root
  and ``allowed_uids``: the socket's file mode is not the only gate (a group-shared socket
  can admit named users only).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

from .config import Config
from .logs import get_logger
from .protocol import encode_error

__all__ = [
    "PeerCredentials",
    "accept_connections",
    "connection_cap",
    "peer_credentials",
    "raise_open_file_limit",
]

#: Descriptors kept free of connections for the store (3 SQLite connections with their WAL
#: and shm files), logging, the listening socket, the reserve descriptor and spawning.
_RESERVED_FDS: Final = 64
#: Descriptors per agent process: stdin, stdout and stderr pipes, and a pidfd.
_FDS_PER_AGENT: Final = 4
#: Accept errors that mean "out of descriptors or memory": free the reserve, then pause.
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE_S: Final = 0.1
#: Connections refused are logged at most this often (a connect loop must not flood the log).
_LOG_EVERY_S: Final = 1.0
_SERVER_ERROR: Final = -32000

Handler = Callable[[SocketStream, "PeerCredentials | None"], Awaitable[None]]


class PeerCredentials(NamedTuple):
    """Who is at the other end of a unix socket (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The peer's pid, uid and gid; None where the platform has no ``SO_PEERCRED``."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return PeerCredentials(*struct.unpack("3i", raw))


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def connection_cap(config: Config, open_files: int) -> int:
    """``max_connections``, or (0) what the descriptors leave once agents and store are served.

    Each connection costs one descriptor; the agents' share is reserved first, so no number of
    clients can make spawning an agent fail with EMFILE. At least 1.
    """
    if config.max_connections > 0:
        return config.max_connections
    agents = config.max_live_agents + config.warm_spares + 1  # +1: one being restored
    return max(1, open_files - _RESERVED_FDS - _FDS_PER_AGENT * agents)


def _refusal(message: str, kind: str) -> bytes:
    return encode_error(None, _SERVER_ERROR, message, {"kind": kind})


def _say_and_close(sock: socket.socket, line: bytes) -> None:
    """Best effort: one error line (never blocks), then close."""
    try:
        sock.setblocking(False)
        sock.send(line)
    except OSError:
        pass
    finally:
        sock.close()


class _Doorman:
    """The accept loop's state: connections served, the reserve descriptor, log pacing."""

    def __init__(self, config: Config, cap: int) -> None:
        self.cap = cap
        self.active = 0
        self.allowed_uids = frozenset({os.getuid(), 0, *config.allowed_uids})
        self.log = get_logger(component="listener")
        self._reserve: int | None = None
        self._refused = 0
        self._last_log = 0.0
        self._open_reserve()

    def _open_reserve(self) -> None:
        if self._reserve is None:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._reserve = None

    def close(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def note_refused(self, reason: str, **fields: object) -> None:
        """Count a refused connection; log (with the count since the last line) at most once a
        second."""
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self.log.warning(
                "client.refused", reason=reason, refused=self._refused, active=self.active,
                max_connections=self.cap, **fields,
            )  # fmt: skip
            self._refused = 0
            self._last_log = now

    def shed_waiting(self, raw: socket.socket | None) -> None:
        """Out of descriptors: use the reserve one to accept and close a waiting connection."""
        if raw is None or self._reserve is None:
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = raw.accept()
        except OSError:
            pass
        else:
            _say_and_close(
                conn,
                _refusal(
                    "acp-proxy is out of file descriptors; try again later",
                    "too_many_connections",
                ),
            )
        finally:
            self._open_reserve()

    def admit(self, stream: SocketStream) -> PeerCredentials | bool | None:
        """Credentials of an admitted peer (None when unknown), or False once refused."""
        raw = stream.extra(SocketAttribute.raw_socket)
        if self.active >= self.cap:
            self.note_refused("max_connections")
            _say_and_close(
                raw,
                _refusal(
                    f"acp-proxy serves at most {self.cap} connections at once "
                    "(max_connections); close idle connections or raise the limit",
                    "too_many_connections",
                ),
            )
            return False
        try:
            peer = peer_credentials(raw)
        except OSError:
            peer = None
        if peer is not None and peer.uid not in self.allowed_uids:
            self.note_refused("uid_not_allowed", uid=peer.uid, pid=peer.pid)
            _say_and_close(
                raw,
                _refusal(
                    f"uid {peer.uid} may not use this acp-proxy; the operator can allow it "
                    "with --allow-uid",
                    "peer_refused",
                ),
            )
            return False
        return peer


async def accept_connections(
    listener: SocketListener, handle: Handler, tg: TaskGroup, config: Config, cap: int
) -> None:
    """Accept until cancelled; each admitted connection runs ``handle`` in ``tg``."""
    doorman = _Doorman(config, cap)
    raw_listener = listener.extra(SocketAttribute.raw_socket, None)

    async def run(stream: SocketStream, peer: PeerCredentials | None) -> None:
        try:
            await handle(stream, peer)
        finally:
            doorman.active -= 1

    try:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.BrokenResourceError, OSError) as exc:
                cause = exc if isinstance(exc, OSError) else exc.__cause__
                code = cause.errno if isinstance(cause, OSError) else None
                if code in _EXHAUSTED:
                    doorman.note_refused("accept_failed", error=errno.errorcode.get(code or 0))
                    doorman.shed_waiting(raw_listener)
                    await anyio.sleep(_PAUSE_S)
                else:
                    doorman.log.warning("listener.accept_failed", error=repr(cause or exc))
                    await anyio.sleep(_PAUSE_S / 10)
                continue
            admitted = doorman.admit(stream)
            if admitted is False:
                continue
            doorman.active += 1
            peer = admitted if isinstance(admitted, PeerCredentials) else None
            tg.start_soon(run, stream, peer)
    finally:
        doorman.close()
