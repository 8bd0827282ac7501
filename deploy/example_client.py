"""A minimal ACP client for the deployment examples (standard library only).

Connects to the proxy's unix socket, runs ``initialize`` → ``session/new`` → one
``session/prompt``, prints every line it receives, and exits 0 when the turn ends.
With ``--session ID`` it skips ``session/new`` and continues that conversation with
``session/load`` (the proxy replays the recorded history first).

    python example_client.py [--socket PATH] [--cwd DIR] [--session ID] [TEXT...]

The socket defaults to ``$ACP_PROXY_SOCKET``. ``--cwd`` is the directory the *agent* works
in, so it must exist inside the proxy's container, at the same path as in the app's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any


class Connection:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send a request and print incoming lines until its response arrives."""
        self.next_id += 1
        req_id = self.next_id
        self.send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        while True:
            line = self.reader.readline()
            if not line:
                raise SystemExit(f"proxy closed the connection during {method}")
            msg = json.loads(line)
            sys.stdout.write(line.decode())
            sys.stdout.flush()
            if "method" in msg and "id" in msg:
                self.answer(msg)  # the agent asks the client something (e.g. permission)
            elif msg.get("id") == req_id and "method" not in msg:
                if "error" in msg:
                    raise SystemExit(f"{method} failed: {msg['error']}")
                return msg.get("result")

    def answer(self, msg: dict[str, Any]) -> None:
        if msg["method"] == "session/request_permission":
            result: dict[str, Any] = {"outcome": {"outcome": "cancelled"}}
            self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})
        else:
            error = {"code": -32601, "message": f"example client does not serve {msg['method']}"}
            self.send({"jsonrpc": "2.0", "id": msg["id"], "error": error})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("ACP_PROXY_SOCKET"))
    parser.add_argument("--cwd", default=os.environ.get("ACP_WORKSPACE", "/tmp"))
    parser.add_argument("--session", help="continue this session id (session/load)")
    parser.add_argument("text", nargs="*", default=["Hello from the example client"])
    args = parser.parse_args()
    if not args.socket:
        parser.error("pass --socket or set ACP_PROXY_SOCKET")

    conn = Connection(args.socket)
    conn.request(
        "initialize",
        {
            "protocolVersion": 1,
            "clientCapabilities": {"fs": {"readTextFile": False, "writeTextFile": False}},
            "clientInfo": {"name": "acp-proxy-example-client", "version": "0"},
        },
    )
    if args.session:
        session_id = args.session
        conn.request("session/load", {"sessionId": session_id, "cwd": args.cwd, "mcpServers": []})
    else:
        session_id = conn.request("session/new", {"cwd": args.cwd, "mcpServers": []})["sessionId"]
    result = conn.request(
        "session/prompt",
        {"sessionId": session_id, "prompt": [{"type": "text", "text": " ".join(args.text)}]},
    )
    sys.stderr.write(f"# session {session_id}: stopReason={result.get('stopReason')}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
