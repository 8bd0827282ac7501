"""``acp-proxy sessions``: the store from the command line, beside a running proxy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from .conftest import client, db_rows, proxy

pytestmark = pytest.mark.trio


async def cli(db: str, *args: str) -> trio.CompletedProcess:
    return await trio.run_process(
        [sys.executable, "-m", "acp_proxy", "sessions", "--db", db, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_list_show_export_delete_prune(tmp: Path) -> None:
    """Each command reads or changes the live proxy's database and says what it did."""
    async with proxy(tmp) as p:
        async with client(p) as c:
            keep = await c.new_session(str(tmp))
            await c.prompt(keep, "first")
            await c.prompt(keep, "second")
            drop = await c.new_session(str(tmp))
            loaded = await c.request(
                "session/load", {"sessionId": keep, "cwd": str(tmp), "mcpServers": []}
            )
        listed = await cli(p.db, "list", "--json")
        assert listed.returncode == 0
        ids = [json.loads(line)["id"] for line in listed.stdout.splitlines()]
        assert sorted(ids) == sorted([keep, drop])

        shown = await cli(p.db, "show", keep)
        assert shown.returncode == 0
        assert b"turns 2" in shown.stdout
        assert shown.stdout.count(b"completed end_turn") == 2
        shown_json = json.loads((await cli(p.db, "show", keep, "--json")).stdout)
        assert [t["outcome"] for t in shown_json["turns"]] == ["completed", "completed"]

        exported = await cli(p.db, "export", keep)
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        replay = [
            {k: v for k, v in n.items() if k != "_t"}
            for n in loaded.notifications
            if n["params"]["sessionId"] == keep  # not `drop`'s commands, if they came late
        ]
        assert lines == replay  # export is exactly what session/load replays

        assert (await cli(p.db, "delete", drop)).returncode == 0
        assert db_rows(p.db, "SELECT id FROM sessions") == [(keep,)]

        dry = await cli(p.db, "prune", "--older-than", "1d", "--dry-run")
        assert dry.stdout == b""
        assert b"would remove 0 session(s)" in dry.stderr
        pruned = await cli(p.db, "prune", "--older-than", "0s")
        assert b"removed 1 session(s)" in pruned.stderr
        assert db_rows(p.db, "SELECT count(*) FROM events") == [(0,)]


async def test_errors_are_clear(tmp: Path) -> None:
    """A missing database or session, or a bad duration, is reported, not created."""
    missing = await cli(str(tmp / "none.db"), "list")
    assert missing.returncode == 1
    assert b"no database at" in missing.stderr
    assert not (tmp / "none.db").exists()
    async with proxy(tmp) as p:
        assert (await cli(p.db, "show", "sess_nope")).returncode == 1
        bad = await cli(p.db, "prune", "--older-than", "soon")
        assert bad.returncode == 2
        assert b"not a duration" in bad.stderr
