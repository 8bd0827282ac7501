"""``acp-proxy status`` and ``acp-proxy health``: ask a running proxy over its socket.

Both send one ``_acp-proxy/status`` request (see :mod:`acp_proxy.status`) on a fresh
connection, with a deadline; neither needs ``initialize``. Plain blocking sockets: these are
short-lived commands, not part of the proxy.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any, Final

from .status import STATUS_METHOD, format_status

__all__ = ["StatusError", "add_parsers", "request_status", "run"]

#: A proxy that has not answered within this long is unhealthy (the issue's 2 s; Kubernetes
#: probes default to a 1 s timeout, so the manifests raise theirs to 3 s).
HEALTH_TIMEOUT_S: Final = 2.0
_STATUS_TIMEOUT_S: Final = 10.0
_MAX_ANSWER: Final = 16 << 20


class StatusError(Exception):
    """The proxy could not be asked, or did not answer in time."""


def request_status(socket_path: str, timeout_s: float) -> dict[str, Any]:
    """Send ``_acp-proxy/status`` and return its result, within ``timeout_s`` in total.

    Raises:
        StatusError: cannot connect, the connection broke, an error answer, or the deadline.
    """
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise StatusError(f"cannot connect to {socket_path}: {exc.strerror or exc}") from None
        request = {"jsonrpc": "2.0", "id": 1, "method": STATUS_METHOD, "params": {}}
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        while True:  # bounded by the deadline and by _MAX_ANSWER
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StatusError(f"no answer from {socket_path} within {timeout_s:g} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                raise StatusError(f"no answer from {socket_path} within {timeout_s:g} s") from None
            except OSError as exc:
                raise StatusError(f"connection to {socket_path} failed: {exc}") from None
            if not data:
                raise StatusError(f"{socket_path} closed the connection without answering")
            buffer += data
            if len(buffer) > _MAX_ANSWER:
                raise StatusError(f"{socket_path} sent an oversized answer")
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict) or msg.get("id") != 1:
                    continue
                if "error" in msg:
                    raise StatusError(f"{socket_path} answered with an error: {msg['error']}")
                result = msg.get("result")
                if not isinstance(result, dict):
                    raise StatusError(f"{socket_path} sent a malformed status")
                return result
    finally:
        sock.close()


def add_parsers(sub: Any, default_socket: str | None) -> None:
    """Add ``status`` and ``health`` to the ``acp-proxy`` command line."""
    status = sub.add_parser("status", help="show a running proxy's agents and sessions")
    status.add_argument("--socket", default=default_socket, help="default: $ACP_PROXY_SOCKET")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    health = sub.add_parser(
        "health",
        help=f"exit 0 if the proxy answers within {HEALTH_TIMEOUT_S:g} s, else 1",
    )
    health.add_argument("--socket", default=default_socket, help="default: $ACP_PROXY_SOCKET")


def run(args: argparse.Namespace) -> int:
    """Run ``status`` or ``health``."""
    name = args.command
    if not args.socket:
        sys.stderr.write(f"acp-proxy {name}: pass --socket or set ACP_PROXY_SOCKET\n")
        return 2
    timeout = HEALTH_TIMEOUT_S if name == "health" else _STATUS_TIMEOUT_S
    started = time.monotonic()
    try:
        status = request_status(args.socket, timeout)
    except StatusError as exc:
        what = "unhealthy: " if name == "health" else ""
        sys.stderr.write(f"acp-proxy {name}: {what}{exc}\n")
        return 1
    if name == "health":
        ms = (time.monotonic() - started) * 1000
        state = "stopping" if status.get("stopping") else "ok"
        sys.stdout.write(f"{state}: pid {status.get('pid')} answered in {ms:.0f} ms\n")
    elif args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(status) + "\n")
    return 0
