"""The fake agent's I/O helpers: its command line, its stdin as a stream, and sessions saved
to a state dir (so another process can ``session/load`` or ``session/resume`` them)."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import threading
from typing import Any

import msgspec

from .fake_turn import _SAFE_ID, LINE_LIMIT, Session

__all__ = ["load_session", "open_stdin", "parse_args", "save_session"]


async def open_stdin() -> asyncio.StreamReader:
    """Stdin as a stream reader (a pipe on the loop; a tty, socket or file in a thread)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    st_in, st_out = os.fstat(0), os.fstat(1)
    pipe = stat.S_ISFIFO(st_in.st_mode) or stat.S_ISSOCK(st_in.st_mode)
    # connect_read_pipe makes fd 0 non-blocking: never do that to a tty/socket shared with
    # stdout (big writes would fail with EAGAIN); read such an fd (or a file) in a thread.
    if pipe and (st_in.st_dev, st_in.st_ino) != (st_out.st_dev, st_out.st_ino):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return reader

    def pump() -> None:
        while data := os.read(0, 1 << 16):
            loop.call_soon_threadsafe(reader.feed_data, data)
        loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return reader


def _state_path(state_dir: str | None, session_id: Any) -> str | None:
    if not state_dir or not isinstance(session_id, str) or not _SAFE_ID.match(session_id):
        return None
    return os.path.join(state_dir, session_id + ".json")


def save_session(state_dir: str | None, session: Session) -> None:
    """Write ``session`` to ``state_dir`` (atomically), if one is set."""
    path = _state_path(state_dir, session.id)
    if path is not None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(session.to_json()))
        os.replace(tmp, path)


def load_session(state_dir: str | None, session_id: Any) -> Session | None:
    """A session another process saved in ``state_dir``, or None."""
    path = _state_path(state_dir, session_id)
    if path is None or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = msgspec.json.decode(f.read())
    return Session(
        id=data["sessionId"],
        cwd=data["cwd"],
        mode=data.get("mode", "build"),
        model=data.get("model", "fake/echo-1"),
        turns=data.get("turns", []),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m acp_proxy.testing.fake_agent", description="A scripted ACP agent on stdio."
    )
    p.add_argument("--startup-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--session-init-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--chunk-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--chunks", type=int, default=3, metavar="N")
    p.add_argument("--chunk-size", type=int, default=24, metavar="B")
    p.add_argument("--thoughts", type=int, default=1, metavar="N")
    p.add_argument("--tool-calls", type=int, default=1, metavar="N")
    p.add_argument("--plan", action="store_true")
    p.add_argument("--permission", action="store_true")
    p.add_argument("--fs-read", default=None, metavar="PATH")
    p.add_argument("--no-load", action="store_true")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--refuse-new", action="store_true")
    p.add_argument("--crash-after", type=int, default=None, metavar="N")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--exit-at-start", type=int, default=None, metavar="CODE")
    p.add_argument("--stderr-lines", type=int, default=0, metavar="N")
    p.add_argument("--state-dir", default=None, metavar="DIR")
    p.add_argument("--hold-on-eof", action="store_true")
    p.add_argument("--ignore-close", action="store_true")
    return p.parse_args(argv)
