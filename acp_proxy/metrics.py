"""Prometheus metrics: what the core reports at a few points, and the ``/metrics`` endpoint.

The core calls four methods, each at one point: :meth:`Metrics.observe_turn` with a turn's
canonical timings (where the ``turn.finished`` line is logged), :meth:`Metrics.count_restore`
when a conversation was restored, :meth:`Metrics.count_error` for every error answered to a
client, and :meth:`Metrics.observe_store_commit` from the store's commit hook. The gauges are
read from the status snapshot (:mod:`acp_proxy.status`) when Prometheus scrapes, on the event
loop: nothing here runs in a thread or keeps its own copy of the proxy's state.

Off by default; ``serve --metrics HOST:PORT`` (``metrics_address``) serves
``http://HOST:PORT/metrics`` in the Prometheus text format (version 0.0.4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from .logs import get_logger
from .protocol import (
    AGENT_EXITED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROXY_STOPPING,
    REQUEST_CANCELLED,
    RESOURCE_NOT_FOUND,
    SESSION_BUSY,
)

__all__ = ["BUCKETS_S", "Metrics", "serve_metrics"]

#: From a warm turn's commit (~30 µs-1 ms) and first token (~0.1 s) to a cold opencode
#: start (≈3 s) and a slow model (tens of seconds): 1 ms ... 60 s, about 2.5x apart.
BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
#: Error kinds by JSON-RPC code, for errors whose ``data`` names none.
_KIND_BY_CODE: Final = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error",
    REQUEST_CANCELLED: "request_cancelled",
    RESOURCE_NOT_FOUND: "resource_not_found",
    SESSION_BUSY: "turn_in_progress",
    AGENT_EXITED: "agent_exited",
    PROXY_STOPPING: "proxy_stopping",
}
_AGENT_KINDS: Final = frozenset({"warm", "spare", "preopened", "cold", "shared"})
#: Longest HTTP request head accepted from a scraper.
_MAX_REQUEST_BYTES: Final = 8192
#: A scraper that has not sent its request line by then is dropped.
_REQUEST_TIMEOUT_S: Final = 5.0


def agent_label(agent: str) -> str:
    """``warm`` | ``spare`` | ``preopened`` | ``cold`` | ``shared`` | ``restored`` (every
    ``restored:<rung>``)."""
    if agent in _AGENT_KINDS:
        return agent
    return "restored" if agent.startswith("restored") else "other"


class Metrics:
    """Every metric of one proxy, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry

        def histogram(name: str, doc: str, labels: tuple[str, ...] = ("agent",)) -> Histogram:
            return Histogram(name, doc, labels, buckets=BUCKETS_S, registry=reg)

        self.ttft = histogram(
            "acp_proxy_ttft_seconds", "Prompt received to the first agent token, per turn."
        )
        self.cli_ready = histogram(
            "acp_proxy_cli_ready_seconds",
            "Agent spawn to its first well-formed message (turns that started an agent).",
        )
        self.session_init = histogram(
            "acp_proxy_session_init_seconds",
            "session/new, load or resume acknowledged (turns that bound a session).",
        )
        self.model_first_token = histogram(
            "acp_proxy_model_first_token_seconds", "Prompt forwarded to the first agent token."
        )
        self.store_commit = histogram(
            "acp_proxy_store_commit_seconds", "One SQLite commit (a group of batches).", ()
        )
        self.turns = Counter(
            "acp_proxy_turns", "Turns ended, by outcome.", ["outcome"], registry=reg
        )
        self.restores = Counter(
            "acp_proxy_restores", "Conversations restored into a new agent, by rung.", ["rung"],
            registry=reg,
        )  # fmt: skip
        self.errors = Counter(
            "acp_proxy_errors", "Error answers sent to clients, by kind.", ["kind"], registry=reg
        )
        self.live_agents = Gauge(
            "acp_proxy_live_agents", "Agent processes running, by role.", ["role"], registry=reg
        )
        self.live_sessions = Gauge(
            "acp_proxy_live_sessions", "Sessions with a live agent.", registry=reg
        )
        self.client_connections = Gauge(
            "acp_proxy_client_connections", "Connected clients.", registry=reg
        )
        self.agent_memory = Gauge(
            "acp_proxy_agent_memory_bytes",
            "Resident memory (RSS) of all agent process trees.",
            registry=reg,
        )
        self.agent_memory_limit = Gauge(
            "acp_proxy_agent_memory_limit_bytes",
            "The agents' memory budget (max_agents_memory_mb); 0: none.",
            registry=reg,
        )
        self.memory_stops = Counter(
            "acp_proxy_agents_stopped_for_memory",
            "Agents stopped to keep within the memory budget, by role.",
            ["role"],
            registry=reg,
        )
        self._memory_stops_seen: dict[str, int] = {}
        for role in ("session", "spare"):
            self.live_agents.labels(role)
            self.memory_stops.labels(role)

    def observe_turn(self, outcome: str, timings: Mapping[str, Any]) -> None:
        """A turn ended; ``timings`` is its canonical line (``session._timings``)."""
        self.turns.labels(outcome).inc()
        agent = agent_label(str(timings.get("agent", "")))
        ttft = timings.get("ttft_ms")
        if ttft is not None:
            self.ttft.labels(agent).observe(ttft / 1000)
        first = timings.get("model_first_token_ms")
        if first is not None:
            self.model_first_token.labels(agent).observe(first / 1000)
        # 0 means "not paid by this turn" (warm agent, live session): not a sample.
        if timings.get("cli_ready_ms"):
            self.cli_ready.labels(agent).observe(timings["cli_ready_ms"] / 1000)
        if timings.get("session_init_ms"):
            self.session_init.labels(agent).observe(timings["session_init_ms"] / 1000)

    def count_restore(self, rung: str) -> None:
        """A conversation was restored through ``rung`` (``resume`` | ``load`` | ``new``)."""
        self.restores.labels(rung).inc()

    def count_error(self, code: int, data: object) -> None:
        """An error answer went to a client; ``data.kind`` names it when present."""
        kind = data.get("kind") if isinstance(data, dict) else None
        if not isinstance(kind, str):
            kind = _KIND_BY_CODE.get(code, "agent_error")
        self.errors.labels(kind).inc()

    def observe_store_commit(self, seconds: float) -> None:
        """One store transaction took ``seconds``."""
        self.store_commit.observe(seconds)

    def render(self, status: Mapping[str, Any]) -> bytes:
        """The exposition text, gauges set from a status snapshot."""
        roles = {"session": 0, "spare": 0}
        for agent in status["agents"]:
            roles[agent["role"]] = roles.get(agent["role"], 0) + 1
        for role, count in roles.items():
            self.live_agents.labels(role).set(count)
        self.live_sessions.set(status["sessions"]["live"])
        self.client_connections.set(status["clients"])
        self.agent_memory.set(status["agent_memory_bytes"])
        self.agent_memory_limit.set(status.get("agent_memory_limit_bytes", 0))
        for role, count in status.get("agents_stopped_for_memory", {}).items():
            seen = self._memory_stops_seen.get(role, 0)
            if count > seen:  # the pool counts; the counter follows it
                self.memory_stops.labels(role).inc(count - seen)
                self._memory_stops_seen[role] = count
        return generate_latest(self.registry)


async def serve_metrics(
    address: str,
    render: Callable[[], bytes],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``address`` (``HOST:PORT``) until cancelled.

    A minimal HTTP/1.0 responder on the event loop (one request per connection): the
    gauges read the proxy's state where it lives, with no thread racing the event loop.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    log = get_logger(component="metrics")
    host, _, port = address.rpartition(":")
    listener = await anyio.create_tcp_listener(
        local_host=host.strip("[]"), local_port=int(port), reuse_port=False
    )

    async def handle(stream: SocketStream) -> None:
        try:
            await _handle_scrape(stream, render)
        except Exception:  # a scrape gone wrong must not take the proxy down
            log.exception("metrics.scrape_failed")

    async with listener:
        log.info("metrics.listening", address=address, path="/metrics")
        task_status.started()
        await listener.serve(handle)


async def _handle_scrape(stream: SocketStream, render: Callable[[], bytes]) -> None:
    async with stream:
        head = b""
        with anyio.move_on_after(_REQUEST_TIMEOUT_S):
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                try:
                    head += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                if len(head) > _MAX_REQUEST_BYTES:
                    return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            await _respond(stream, b"405 Method Not Allowed", b"GET /metrics\n")
            return
        if parts[1].split(b"?", 1)[0] != b"/metrics":
            await _respond(stream, b"404 Not Found", b"see /metrics\n")
            return
        body = render()
        await _respond(
            stream, b"200 OK", body if parts[0] == b"GET" else b"", CONTENT_TYPE_PLAIN_0_0_4
        )


async def _respond(
    stream: SocketStream, status: bytes, body: bytes, content_type: str = "text/plain"
) -> None:
    head = (
        b"HTTP/1.0 " + status + b"\r\nContent-Type: " + content_type.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(head + body)
