"""``acp-proxy attach``: a stdio ⇄ unix-socket bridge for clients that can only spawn a command.

Bytes are relayed unchanged in both directions; nothing but the proxy's ACP output is written
to stdout. The agent lives under ``serve``, not under this process: stdin EOF or a signal here
ends the bridge, never the turn or the session.

Installed as the agent binary of a daemon that runs other subcommands of that binary too
(``--version``, ``model list``…), the bridge hands every invocation that is not the ACP entry
point to the real binary (``exec``: same argv, stdio and exit code). With ``--fallback``, an
unreachable proxy does the same for the ACP entry point (the client keeps working, one agent
per run), and one plain-text stderr line says so.

First the bridge sends the ``_acp-proxy/env`` notification: the allowlisted environment
variables (``--forward-env`` names, ``--forward-env-prefix`` prefixes) and ``"stderr": true``,
which asks the proxy to relay what the agent writes to stderr during this connection's turns
as ``_acp-proxy/stderr`` notifications; those lines are written to the bridge's own stderr,
never to stdout.

The bridge runs twice per turn for some clients (a ``--version`` probe, then the ACP run), so
it starts fast: standard library only (``_socket``, ``select``; ``json`` when needed), one
thread, no event loop, no store, no logging framework (``bench/startup.py`` measures it).
"""

from __future__ import annotations

import contextlib
import os
import sys

TYPE_CHECKING = False  # not `typing`'s: importing it costs the bridge ~3 ms per start
if TYPE_CHECKING:
    from _socket import socket
    from collections.abc import Callable, Sequence

__all__ = ["STDERR_PREFIX", "StreamSplitter", "dispatch", "main", "parse_args"]

_READ_SIZE = 1 << 16
#: How the proxy starts every ``_acp-proxy/stderr`` line (it encodes notifications this way).
STDERR_PREFIX = b'{"jsonrpc":"2.0","method":"_acp-proxy/stderr",'
_MARKER = b'"_acp-proxy/stderr"'
#: A relayed stderr notification longer than this is not one (the proxy bounds them far below).
_MAX_CAPTURE = 1 << 16
_USAGE = (
    "usage: acp-proxy attach [--socket PATH] [--real-binary PATH] [--acp-argv WORDS] "
    "[--forward-env NAMES] [--forward-env-prefix PREFIXES] [--fallback] [-- ARGS...]\n"
)
_OPTIONS = {
    "--socket": "ACP_PROXY_SOCKET",
    "--real-binary": "ACP_PROXY_REAL_BINARY",
    "--acp-argv": "ACP_PROXY_ACP_ARGV",
    "--forward-env": "ACP_PROXY_FORWARD_ENV",
    "--forward-env-prefix": "ACP_PROXY_FORWARD_ENV_PREFIX",
}


class StreamSplitter:
    """Splits the proxy's output: ``_acp-proxy/stderr`` lines to ``err``, the rest, byte for
    byte and in order, to ``out``. Linear in the input; a line is held back only while its
    first ``len(STDERR_PREFIX)`` bytes are not known yet."""

    def __init__(self, out: Callable[[bytes], None], err: Callable[[bytes], None]) -> None:
        self._out, self._err = out, err
        self._head = b""  # the start of the current line, while undecided
        self._passing = False  # the current line is known to be ACP output
        self._capture: bytearray | None = None  # the current line is a stderr notification

    def feed(self, data: bytes) -> None:
        if _MARKER not in data and not self._head and self._capture is None:
            # Fast path (the usual chunk): no relayed line starts here, so every complete
            # line is ACP output; only a short unfinished last line stays undecided.
            last = data.rfind(b"\n")
            if last < 0 and self._passing:
                self._out(data)
                return
            tail = data[last + 1 :]
            if tail and len(tail) < len(STDERR_PREFIX):
                if last >= 0:
                    self._out(data[: last + 1])
                self._head, self._passing = tail, False
                return
            self._out(data)
            self._passing = bool(tail)
            return
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._capture is not None:
                nl = data.find(b"\n", pos)
                stop = end if nl < 0 else nl
                if len(self._capture) < _MAX_CAPTURE:
                    self._capture += data[pos:stop]
                if nl < 0:
                    break
                self._flush(out)
                out = []
                self._err(bytes(self._capture))
                self._capture, pos = None, nl + 1
            elif self._passing:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    out.append(data[pos:])
                    break
                out.append(data[pos : nl + 1])
                self._passing, pos = False, nl + 1
            else:
                piece = data[pos : pos + len(STDERR_PREFIX) - len(self._head)]
                nl = piece.find(b"\n")
                if nl >= 0:  # a line shorter than the prefix: ACP output
                    out.append(self._head + piece[: nl + 1])
                    self._head, pos = b"", pos + nl + 1
                    continue
                head, self._head = self._head + piece, b""
                pos += len(piece)
                if len(head) < len(STDERR_PREFIX):
                    self._head = head
                elif head == STDERR_PREFIX:
                    self._capture = bytearray(head)
                else:
                    out.append(head)
                    self._passing = True
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self._out(b"".join(out))

    def close(self) -> None:
        """End of the stream: an undecided line start is ACP output after all."""
        if self._head:
            self._out(self._head)
            self._head = b""


def parse_args(argv: Sequence[str]) -> tuple[dict[str, str], bool, list[str]]:
    """``attach``'s options (environment defaults applied), ``--fallback`` and the ARGS."""
    values = {opt: os.environ.get(env, "") for opt, env in _OPTIONS.items()}
    fallback = False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg == "--fallback":
            fallback = True
            continue
        if arg in ("-h", "--help"):
            sys.stdout.write(_USAGE)
            sys.exit(0)
        name, eq, value = arg.partition("=")
        if name not in _OPTIONS:
            rest.insert(0, arg)  # the ARGS begin (argparse.REMAINDER did the same)
            break
        if not eq:
            if not rest:
                sys.stderr.write(f"{_USAGE}acp-proxy attach: {name} needs a value\n")
                sys.exit(2)
            value = rest.pop(0)
        values[name] = value
    return values, fallback, rest


def dispatch(args: Sequence[str], *, real_binary: str | None, acp_argv: str) -> None:
    """Exec the real binary unless ``args`` is the ACP entry point; returns if it is.

    ``acp_argv`` (shell words) is the argument prefix of the ACP entry point; empty matches
    every invocation.
    """
    entry = acp_argv.split() if "'" not in acp_argv and '"' not in acp_argv else _words(acp_argv)
    if list(args[: len(entry)]) == entry:
        return
    if not real_binary:
        sys.stderr.write(
            f"acp-proxy attach: {' '.join(args)!r} is not the ACP entry point "
            f"({acp_argv!r}) and no --real-binary was given to run it\n"
        )
        sys.exit(2)
    os.execv(real_binary, [real_binary, *args])


def _words(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def hello(forward_env: Sequence[str], prefixes: Sequence[str]) -> bytes:
    """The first line sent to the proxy: the forwarded environment, and the stderr relay."""
    env = {name: os.environ[name] for name in forward_env if name in os.environ}
    if prefixes:
        env.update(
            (name, value)
            for name, value in os.environ.items()
            if any(name.startswith(prefix) for prefix in prefixes)
        )
    if not env:
        return b'{"jsonrpc":"2.0","method":"_acp-proxy/env","params":{"env":{},"stderr":true}}\n'
    import json

    params = {"env": env, "stderr": True}
    message = {"jsonrpc": "2.0", "method": "_acp-proxy/env", "params": params}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _relay_stderr(line: bytes) -> None:
    import json

    try:
        text = json.loads(line)["params"]["line"]
    except (ValueError, KeyError, TypeError):
        return
    if isinstance(text, str):
        with contextlib.suppress(OSError):
            _write_all(2, text.encode(errors="replace") + b"\n")


def relay(sock: socket, first: bytes) -> int:
    """Relay stdio ⇄ ``sock`` until the proxy closes the connection (one thread, ``poll``:
    it works on pipes, sockets, ttys and regular files alike)."""
    import select

    fd = sock.fileno()
    sock.sendall(first)
    splitter = StreamSplitter(lambda data: _write_all(1, data), _relay_stderr)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(0, select.POLLIN)
    stdin_open = True
    try:
        while True:
            for ready, _events in poller.poll():
                if ready == fd:
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        splitter.close()
                        return 0
                    splitter.feed(data)
                elif stdin_open:
                    try:
                        data = os.read(0, _READ_SIZE)
                    except OSError:  # stdin closed or broken under us: end of input
                        data = b""
                    if data:
                        sock.sendall(data)
                    else:
                        # Half-close: the proxy sees end of input, finishes answering.
                        stdin_open = False
                        poller.unregister(0)
                        sock.shutdown(1)
    except (BrokenPipeError, ConnectionResetError):
        return 0


def main(argv: Sequence[str]) -> int:
    """``acp-proxy attach ARGV``: exit status."""
    options, fallback, args = parse_args(argv)
    socket_path = options["--socket"]
    real_binary = options["--real-binary"] or None
    acp_argv = options["--acp-argv"]
    dispatch(args, real_binary=real_binary, acp_argv=acp_argv)
    if not socket_path:
        sys.stderr.write("acp-proxy attach: pass --socket or set ACP_PROXY_SOCKET\n")
        return 2
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        sock.close()
        # Plain text: a person reads this, in a terminal or an editor's agent log.
        reason = exc.strerror or str(exc)
        if fallback and real_binary and acp_argv:
            sys.stderr.write(
                f"acp-proxy attach: cannot connect to {socket_path}: {reason}; running "
                f"{real_binary} directly (--fallback): no warm agent, no recording\n"
            )
            sys.stderr.flush()
            os.execv(real_binary, [real_binary, *args])
        sys.stderr.write(
            f"acp-proxy attach: cannot connect to {socket_path}: {reason}; "
            "is `acp-proxy serve` running with this --socket?\n"
        )
        return 1
    forward = [n.strip() for n in options["--forward-env"].split(",") if n.strip()]
    prefixes = [p.strip() for p in options["--forward-env-prefix"].split(",") if p.strip()]
    try:
        return relay(sock, hello(forward, prefixes))
    finally:
        sock.close()
