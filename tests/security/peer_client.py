"""A stdlib-only ACP client run as another uid: sends requests, prints each answer as a line.

Usage: ``python peer_client.py SOCKET '[["method", {params}], ...]'``. Notifications and
agent requests are skipped; an answer with id null (a refusal) is printed too; a closed
connection ends the run.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys


def main() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(sys.argv[1])
    reader = sock.makefile("rb")
    for ident, (method, params) in enumerate(json.loads(sys.argv[2]), start=1):
        line = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
        # Refused: what the proxy said before closing is still readable.
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps(line).encode() + b"\n")
        while True:
            try:
                raw = reader.readline()
            except OSError:
                return
            if not raw:
                return
            message = json.loads(raw)
            if "method" in message:
                continue
            print(json.dumps(message), flush=True)  # noqa: T201 (the test reads stdout)
            if message.get("id") in (ident, None):
                break


if __name__ == "__main__":
    main()
