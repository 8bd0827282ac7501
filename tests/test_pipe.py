"""PipeWriter: the proxy's own end of an agent's stdin pipe, on real pipes."""

from __future__ import annotations

import os

import anyio
import pytest

from acp_proxy.pipe import PipeWriter

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_full_pipe_is_waited_for_and_nothing_is_lost() -> None:
    read_fd, write_fd = os.pipe()
    writer = PipeWriter(write_fd)
    filled = 0
    for _ in range(1024):  # bounded: a pipe holds 64 KiB on Linux (at most 1 MiB anywhere)
        try:
            filled += writer.write_nowait(b"x" * 4096)
        except BlockingIOError:
            break
    else:
        pytest.fail("the pipe never filled up")
    payload = bytes(range(256)) * 4096  # 1 MiB, far more than the pipe holds
    received = bytearray()

    async def drain() -> None:
        os.set_blocking(read_fd, False)
        while len(received) < filled + len(payload):
            try:
                received.extend(os.read(read_fd, 65536))
            except BlockingIOError:
                await anyio.wait_readable(read_fd)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.send, payload)
            tg.start_soon(drain)
    assert bytes(received) == b"x" * filled + payload
    await writer.aclose()
    await writer.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await writer.send(b"late")
    assert os.read(read_fd, 10) == b""  # the reader sees end of file
    os.close(read_fd)


async def test_a_gone_reader_is_a_broken_stream() -> None:
    read_fd, write_fd = os.pipe()
    writer = PipeWriter(write_fd)
    os.close(read_fd)
    with pytest.raises(BrokenPipeError):
        writer.write_nowait(b"hello")
    with pytest.raises(anyio.BrokenResourceError):
        await writer.send(b"hello")
    await writer.aclose()
