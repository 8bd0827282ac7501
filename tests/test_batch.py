"""Batch.add_line: consecutive lines for one sink become one write, order is kept."""

from __future__ import annotations

from acp_proxy.agent import Batch


class Sink:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def deliver_lines(self, items: list[tuple[int, bytes]]) -> None:
        self.log.append(f"{self.name}:" + ",".join(f"{seq}={line.decode()}" for seq, line in items))


def test_runs_are_joined_per_sink_and_never_reordered() -> None:
    log: list[str] = []
    a, b = Sink("a", log), Sink("b", log)
    batch = Batch()
    batch.add_line(a, 1, b"x")
    batch.add_line(a, 0, b"y")
    batch.add_line(b, 7, b"z")
    batch.add_line(a, 2, b"w")
    batch.deliveries.append(lambda: log.append("response"))
    batch.add_line(a, 3, b"v")
    for deliver in batch.deliveries:
        deliver()
    assert log == ["a:1=x,0=y", "b:7=z", "a:2=w", "response", "a:3=v"]
