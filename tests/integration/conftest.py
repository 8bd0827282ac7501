"""Integration tests: the real proxy subprocess, its socket, the fake agent. Run on trio."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.postgres import query
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from store import is_postgres_url


@asynccontextmanager
async def proxy(
    tmp: Path, *agent_args: str, extra_args: tuple[str, ...] = (), **kwargs: Any
) -> AsyncIterator[ProxyHandle]:
    """A proxy serving the fake agent with ``agent_args``."""
    async with run_proxy(
        tmp, fake_agent_command(*agent_args), extra_args=extra_args, **kwargs
    ) as handle:
        yield handle


@asynccontextmanager
async def client(handle: ProxyHandle, **kwargs: Any) -> AsyncIterator[AcpClient]:
    """An initialized client connection."""
    async with AcpClient.connect(handle.socket, **kwargs) as c:
        await c.initialize()
        yield c


def config_args(tmp: Path, text: str) -> tuple[str, str]:
    """Write ``text`` as the proxy's config file in ``tmp``; the ``serve`` arguments naming it."""
    path = tmp / "proxy.toml"
    path.write_text(text)
    return ("--config", str(path))


def db_rows(db: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the proxy's database with a separate connection (SQLite or PostgreSQL)."""
    if is_postgres_url(db):
        return query(db, sql, *params)
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def eventually(check: Callable[[], bool], *, within_s: float = 10.0) -> None:
    """Poll ``check`` (e.g. a read of the proxy's database) until true, bounded in time."""
    with trio.fail_after(within_s):
        while not check():  # noqa: ASYNC110 (polling another process's database)
            await trio.sleep(0.05)


def summary(reply_updates: list[dict[str, Any]]) -> str:
    """The fake agent's final summary text in a turn's updates."""
    texts = [
        u["content"]["text"]
        for u in reply_updates
        if u.get("sessionUpdate") == "agent_message_chunk" and "[fake]" in u["content"]["text"]
    ]
    assert texts, "no [fake] summary chunk in the turn"
    return texts[-1]


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths are limited to ~100 bytes); kept for a
    look at the proxy's log when ``ACP_PROXY_KEEP_TMP`` is set."""
    if os.environ.get("ACP_PROXY_KEEP_TMP"):
        yield Path(tempfile.mkdtemp(prefix="acpx-"))
        return
    with tempfile.TemporaryDirectory(prefix="acpx-") as directory:
        yield Path(directory)
