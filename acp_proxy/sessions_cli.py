"""``acp-proxy sessions list|show|export|delete|prune``: the store from the command line.

Safe beside a running proxy (SQLite WAL: readers never block it). ``delete`` with ``--socket``
(or ``$ACP_PROXY_SOCKET``) goes through the running proxy as ACP ``session/delete``, so the
proxy stops the session's agent and nothing can revive it; without a socket it edits the
database directly (for a stopped proxy). ``prune`` only touches sessions idle for the given
time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec

from store import AnyStore, DeleteSession, SessionRecord, StoreError, is_postgres_url, open_store

__all__ = ["add_parser", "run"]

_encoder: Final = msgspec.json.Encoder()
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds.

    Raises:
        argparse.ArgumentTypeError: not a duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h, 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_parser(sub: Any, db_default: str | None) -> None:
    """Register ``sessions`` and its commands on the top-level parser."""
    sessions = sub.add_parser("sessions", help="list, show, export, delete or prune sessions")
    sessions.add_argument(
        "--db",
        default=db_default,
        help="SQLite database path or postgresql:// URL (default: $ACP_PROXY_DB)",
    )
    cmd = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = cmd.add_parser("list", help="sessions, most recently updated first")
    listing.add_argument("--cwd", help="only sessions of this working directory")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = cmd.add_parser("show", help="one session and its turns")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true", help="JSON output")
    export = cmd.add_parser(
        "export", help="the recorded stream as ACP session/update JSON lines (replayable)"
    )
    export.add_argument("session_id")
    delete = cmd.add_parser("delete", help="remove sessions with their history")
    delete.add_argument("session_ids", nargs="+")
    delete.add_argument(
        "--socket",
        default=os.environ.get("ACP_PROXY_SOCKET"),
        help="delete through the running proxy on this socket, which also stops the agents "
        "(default: $ACP_PROXY_SOCKET)",
    )
    prune = cmd.add_parser("prune", help="remove sessions idle for longer than a duration")
    prune.add_argument(
        "--older-than", type=parse_duration, required=True, help="e.g. 30d, 12h, 90m"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _record_json(record: SessionRecord) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(record)
    for key in ("mcp_servers", "additional_directories", "modes", "config_options"):
        raw = getattr(record, key)
        out[key] = msgspec.json.decode(raw) if raw else None
    return out


async def _list(store: AnyStore, args: argparse.Namespace) -> int:
    records, _cursor = await store.list_sessions(cwd=args.cwd, limit=max(1, args.limit))
    for record in records:
        if args.json:
            _out(_encoder.encode(_record_json(record)).decode())
        else:
            title = f"  {record.title}" if record.title else ""
            _out(f"{record.id}  {_iso(record.updated_at)}  {record.state:<6}  {record.cwd}{title}")
    return 0


async def _show(store: AnyStore, args: argparse.Namespace) -> int:
    record = await store.get_session(args.session_id)
    if record is None:
        sys.stderr.write(f"no session {args.session_id}\n")
        return 1
    turns = await store.turns(record.id)
    events = await store.last_event_seq(record.id)
    if args.json:
        data = _record_json(record)
        data["events"] = events
        data["turns"] = [
            {
                **msgspec.to_builtins(t),
                "prompt": msgspec.json.decode(t.prompt),
                "timings": msgspec.json.decode(t.timings) if t.timings else None,
                "usage": msgspec.json.decode(t.usage) if t.usage else None,
            }
            for t in turns
        ]
        _out(_encoder.encode(data).decode())
        return 0
    _out(f"session   {record.id}")
    _out(f"cwd       {record.cwd}")
    _out(f"state     {record.state}   agent profile {record.agent_profile}")
    _out(f"upstream  {record.upstream_session_id or '-'}")
    _out(f"created   {_iso(record.created_at)}   updated {_iso(record.updated_at)}")
    _out(f"events    {events}   turns {len(turns)}")
    for t in turns:
        timings = msgspec.json.decode(t.timings) if t.timings else {}
        ttft = timings.get("ttft_ms")
        _out(
            f"  turn {t.seq:<4} {_iso(t.started_at)}  {t.outcome:<9} "
            f"{t.stop_reason or '-':<10} ttft {ttft if ttft is not None else '-'} ms  "
            f"agent {timings.get('agent', '-')}"
        )
    return 0


async def _export(store: AnyStore, args: argparse.Namespace) -> int:
    if await store.get_session(args.session_id) is None:
        sys.stderr.write(f"no session {args.session_id}\n")
        return 1
    out = sys.stdout.buffer
    try:
        for payload in await store.event_payloads(args.session_id):
            out.write(b'{"jsonrpc":"2.0","method":"session/update","params":' + payload + b"}\n")
        out.flush()
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        sys.stdout = None  # no second error at interpreter exit
    return 0


def _delete_through_proxy(socket_path: str, session_ids: list[str]) -> int:
    """``session/delete`` each id on a running proxy's socket; returns the exit status."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        reader = sock.makefile("rb")
        status = 0
        for number, sid in enumerate(session_ids, 1):
            request = {
                "jsonrpc": "2.0",
                "id": number,
                "method": "session/delete",
                "params": {"sessionId": sid},
            }
            sock.sendall(_encoder.encode(request) + b"\n")
            while True:  # bounded by the socket timeout: notifications are skipped
                line = reader.readline()
                if not line:
                    sys.stderr.write("acp-proxy sessions delete: the proxy closed the socket\n")
                    return 1
                reply = json.loads(line)
                if reply.get("id") == number:
                    break
            if "error" in reply:
                sys.stderr.write(f"could not delete {sid}: {reply['error'].get('message')}\n")
                status = 1
        return status


async def _delete(store: AnyStore, args: argparse.Namespace) -> int:
    missing = [sid for sid in args.session_ids if await store.get_session(sid) is None]
    await store.commit([DeleteSession(sid) for sid in args.session_ids])
    for sid in missing:
        sys.stderr.write(f"no session {sid} (nothing to delete)\n")
    return 1 if missing else 0


async def _prune(store: AnyStore, args: argparse.Namespace) -> int:
    cutoff = time.time() - args.older_than
    total = 0
    while True:  # bounded: every round deletes what it found, or stops
        ids = await store.sessions_updated_before(cutoff, limit=500)
        if not ids:
            break
        if args.dry_run:
            for sid in ids:
                _out(sid)
            total += len(ids)
            break
        await store.commit([DeleteSession(sid) for sid in ids])
        total += len(ids)
    verb = "would remove" if args.dry_run else "removed"
    sys.stderr.write(f"{verb} {total} session(s) idle since before {_iso(cutoff)}\n")
    return 0


_COMMANDS: Final = {
    "list": _list,
    "show": _show,
    "export": _export,
    "delete": _delete,
    "prune": _prune,
}


#: Commands that only read the database.
_READ_COMMANDS: Final = frozenset({"list", "show", "export"})


def run(args: argparse.Namespace) -> int:
    """Run one ``sessions`` command; returns the exit status."""
    if not args.db:
        sys.stderr.write("acp-proxy sessions: pass --db or set ACP_PROXY_DB\n")
        return 2
    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        sys.stderr.write(f"acp-proxy sessions: no database at {args.db}\n")
        return 1

    if args.sessions_command == "delete" and args.socket:
        try:
            return _delete_through_proxy(args.socket, args.session_ids)
        except OSError as exc:
            sys.stderr.write(
                f"acp-proxy sessions delete: no proxy answers on {args.socket} ({exc}); "
                "drop --socket (and ACP_PROXY_SOCKET) to edit a stopped proxy's database\n"
            )
            return 1

    db = Path(args.db)
    # Reading needs no write access: a SQLite database (or directory) this user can only read
    # is opened read-only instead of failing on the WAL set-up.
    read_only = (
        not is_postgres_url(args.db)
        and args.sessions_command in _READ_COMMANDS
        and not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK))
    )

    async def main() -> int:
        async with open_store(args.db, read_only=read_only) as store:
            return await _COMMANDS[args.sessions_command](store, args)

    try:
        return anyio.run(main)
    except StoreError as exc:
        sys.stderr.write(f"acp-proxy sessions: {exc}\n")
        return 1
