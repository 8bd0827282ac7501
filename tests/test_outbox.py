"""Outbox: direct writes when idle, queued writes otherwise, never out of order."""

from __future__ import annotations

import anyio
import pytest

from acp_proxy.outbox import Outbox, OutboxFull

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Peer:
    """A peer whose socket buffer takes ``room`` bytes, then nothing until drained."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.received = bytearray()
        self.direct_writes = 0

    def direct(self, data: bytes) -> int:
        if self.room == 0:
            raise BlockingIOError
        taken = data[: self.room]
        self.room -= len(taken)
        self.received += taken
        self.direct_writes += 1
        return len(taken)


class StreamTo(anyio.abc.ByteSendStream):
    """What the writer task writes to: the same peer, through its blocking path."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.sends = 0

    async def send(self, item: bytes) -> None:
        await anyio.sleep(0.01)  # the peer reads slowly: later lines queue meanwhile
        self.peer.received += item
        self.sends += 1

    async def aclose(self) -> None:
        pass


async def test_direct_when_idle_queued_after_a_partial_write_in_order() -> None:
    peer = Peer(room=10)
    outbox = Outbox(limit_bytes=1 << 20, direct=peer.direct)
    stream = StreamTo(peer)
    lines = [b"line %02d\n" % i for i in range(20)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.run, stream)
        outbox.send_nowait(lines[0])  # 8 bytes: all direct
        outbox.send_nowait(lines[1])  # 2 direct, 6 queued
        for line in lines[2:]:
            outbox.send_nowait(line)  # queued behind: never direct while bytes wait
        outbox.close()
    assert bytes(peer.received) == b"".join(lines)
    assert peer.direct_writes == 2
    assert stream.sends == 1  # the queued lines went out joined, not one write each


async def test_queued_bytes_past_the_limit_cut_the_peer_off() -> None:
    peer = Peer(room=0)  # never takes anything directly
    outbox = Outbox(limit_bytes=100, direct=peer.direct)
    outbox.send_nowait(b"x" * 60)
    with pytest.raises(OutboxFull):
        outbox.send_nowait(b"y" * 60)
    assert outbox.closed
    outbox.send_nowait(b"dropped once closed")
