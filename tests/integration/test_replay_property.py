"""A client that folds the stream gets the same transcript live and from a ``session/load``.

Property-based, through the real proxy: Hypothesis generates realistic update streams (the
strategies of ``tests/test_transcript.py``), the fake agent emits each one verbatim (per-turn
directive ``fake:{"script": [...]}``), and a second connection loads the session. The replay
must be the live stream byte for byte, plus the user's block the client sent itself.

One proxy serves the whole test: it runs in a thread with its own trio loop, while pytest-trio
runs each Hypothesis example in a fresh ``trio.run`` on the main thread.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import trio
from anyio.abc import ByteReceiveStream
from hypothesis import given, settings

from acp_proxy.session import STATE_KINDS
from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle
from acp_proxy.transcript import fold

from ..test_transcript import enc, streams
from .conftest import proxy

pytestmark = pytest.mark.trio


@pytest.fixture(scope="module")
def shared_proxy() -> Iterator[ProxyHandle]:
    """One proxy (fake agent, defaults) for every example, run by a trio loop in a thread."""
    started: queue.Queue[Any] = queue.Queue()
    failure: list[BaseException] = []

    async def serve() -> None:
        with tempfile.TemporaryDirectory(prefix="acpx-") as directory:
            async with proxy(Path(directory)) as handle:
                stop = trio.Event()
                started.put((handle, trio.lowlevel.current_trio_token(), stop))
                await stop.wait()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # reported by the fixture, not as a thread exception
            failure.append(exc)
            started.put(exc)

    thread = threading.Thread(target=run, name="shared-proxy", daemon=True)
    thread.start()
    item = started.get(timeout=60)
    if isinstance(item, BaseException):
        raise item
    handle, token, stop = item
    try:
        yield handle
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the shared proxy did not stop"
        if failure:
            raise failure[0]


class _Tee(ByteReceiveStream):
    """Keeps a copy of every byte received, so lines can be compared as they were sent."""

    def __init__(self, inner: ByteReceiveStream) -> None:
        self.inner = inner
        self.data = bytearray()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        self.data += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def recording_client(socket: str) -> AsyncIterator[tuple[AcpClient, _Tee]]:
    """An initialized :class:`AcpClient` whose raw input is kept (``AcpClient.connect`` + tee)."""
    stream = await anyio.connect_unix(socket)
    tee = _Tee(stream)
    client = AcpClient(tee, stream)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(client._read)
        try:
            await client.initialize()
            yield client, tee
        finally:
            tg.cancel_scope.cancel()


def update_lines(tee: _Tee, session_id: str) -> list[bytes]:
    """The raw ``session/update`` lines of ``session_id`` received so far, in order."""
    lines = []
    for line in bytes(tee.data).split(b"\n"):
        if line:
            msg = msgspec.json.decode(line)
            params = msg.get("params") or {}
            if msg.get("method") == "session/update" and params.get("sessionId") == session_id:
                lines.append(line)
    return lines


def updates_of(lines: list[bytes]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line)["params"]["update"] for line in lines]


def new_state_only(
    before: list[dict[str, Any]], script: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``script`` less every state update identical to the last one of its kind (the proxy
    neither records nor delivers those: every client has them already)."""
    last = {u["sessionUpdate"]: enc(u) for u in before if u.get("sessionUpdate") in STATE_KINDS}
    kept = []
    for update in script:
        kind = update.get("sessionUpdate")
        if kind in STATE_KINDS:
            if last.get(kind) == enc(update):
                continue
            last[kind] = enc(update)
        kept.append(update)
    return kept


@settings(max_examples=25, deadline=None, database=None)
@given(script=streams(max_segments=5))
async def test_folded_replay_equals_folded_live_stream(
    shared_proxy: ProxyHandle, script: list[dict[str, Any]]
) -> None:
    """Live stream == replay minus the user's block, byte for byte; the same fold."""
    cwd = str(Path(shared_proxy.socket).parent)
    block = {"type": "text", "text": "fake:" + json.dumps({"script": script}, ensure_ascii=False)}
    with trio.fail_after(15):
        async with recording_client(shared_proxy.socket) as (c1, tee1):
            sid = await c1.new_session(cwd)
            # The agent announces its commands after session/new; wait for them, so that they
            # are recorded before the prompt (else they may land on either side of it).
            await c1.wait_for(lambda m: m.get("method") == "session/update")
            turn_start = len(update_lines(tee1, sid))
            reply = await c1.request("session/prompt", {"sessionId": sid, "prompt": [block]})
            assert reply.error is None, reply.error
            assert reply.result["stopReason"] == "end_turn"
            live = update_lines(tee1, sid)
        # The turn is the script, verbatim, then the fake agent's summary.
        assert [u["sessionUpdate"] for u in updates_of(live[:turn_start])] == [
            "available_commands_update"
        ]
        turn = updates_of(live[turn_start:])
        before = updates_of(live[:turn_start])
        assert [enc(u) for u in turn[:-1]] == [enc(u) for u in new_state_only(before, script)]
        assert "[fake]" in turn[-1]["content"]["text"]

        async with recording_client(shared_proxy.socket) as (c2, tee2):
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": cwd, "mcpServers": []}
            )
            assert loaded.error is None, loaded.error
            replay = update_lines(tee2, sid)
            await c2.request("session/close", {"sessionId": sid})
        # The replay holds the user's block (as the user_message_chunk an agent would replay)
        # right where the turn began; the client sent it itself, so it did not see it live.
        user = {"sessionUpdate": "user_message_chunk", "content": block}
        assert len(replay) == len(live) + 1
        assert updates_of([replay[turn_start]]) == [user]
        assert replay[:turn_start] + replay[turn_start + 1 :] == live
        expected = [*updates_of(live[:turn_start]), user, *turn]
        assert fold(updates_of(replay)) == fold(expected)
