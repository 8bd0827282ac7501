"""The official Python SDK (``agent-client-protocol`` 0.12.1) as a client of the proxy.

Each SDK connection spawns ``acp-proxy attach`` as its "agent" process, exactly as an editor
would. Between the attach process's stdout and the SDK sits a byte tee, so every line the proxy
emitted is also checked against the SDK's own schema models (``acp.schema``): a proxy that
drifts from what the reference client accepts fails here even when the SDK would have coped.

These tests run on asyncio (the SDK's event loop), not trio; the proxy runner is anyio-based.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from acp import PROTOCOL_VERSION, RequestError, connect_to_agent, spawn_stdio_transport, text_block
from acp.client.connection import ClientSideConnection
from acp.connection import StreamDirection, StreamEvent
from acp.schema import (
    AllowedOutcome,
    CancelRequestNotification,
    ClientCapabilities,
    Error,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionNotification,
    TextContentBlock,
    ToolCallUpdate,
    UserMessageChunk,
)
from pydantic import BaseModel, ValidationError

from acp_proxy.testing.proxy_process import ProxyHandle

from .conftest import proxy, summary

pytestmark = pytest.mark.anyio

#: The SDK's default stdio buffer (``acp.core.DEFAULT_STDIO_BUFFER_LIMIT_BYTES``).
_LIMIT = 50 * 1024 * 1024
_TIMEOUT_S = 20.0
_attach_numbers = count()

#: Result model of each request the SDK sends, by method.
RESULT_MODELS: dict[str, type[BaseModel]] = {
    "initialize": InitializeResponse,
    "session/new": NewSessionResponse,
    "session/load": LoadSessionResponse,
    "session/prompt": PromptResponse,
}
#: Params model of each message the proxy may send on its own, by method.
PARAM_MODELS: dict[str, type[BaseModel]] = {
    "session/update": SessionNotification,
    "session/request_permission": RequestPermissionRequest,
    "$/cancel_request": CancelRequestNotification,
}
#: Which of those are requests (need an id) rather than notifications (must not have one).
REQUESTS = {"session/request_permission"}


@pytest.fixture
def anyio_backend() -> str:
    """The SDK is asyncio-only."""
    return "asyncio"


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the JSON the SDK would put on the wire."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class RecordingClient:
    """The SDK ``Client`` interface: records every update, allows every permission request."""

    def __init__(self) -> None:
        self.updates: list[SessionNotification] = []
        self.permission_requests: list[RequestPermissionRequest] = []
        self._changed = asyncio.Condition()

    async def request_permission(
        self,
        session_id: str,
        tool_call: ToolCallUpdate,
        options: list[PermissionOption],
        **kwargs: Any,
    ) -> RequestPermissionResponse:
        self.permission_requests.append(
            RequestPermissionRequest(
                session_id=session_id,
                tool_call=tool_call,
                options=options,
                field_meta=kwargs or None,
            )
        )
        allow = next(o for o in options if o.kind in ("allow_once", "allow_always"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=allow.option_id)
        )

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(
            SessionNotification(session_id=session_id, update=update, field_meta=kwargs or None)
        )
        async with self._changed:
            self._changed.notify_all()

    def kinds(self, session_id: str) -> list[str]:
        """The ``sessionUpdate`` kinds received for ``session_id``, in order."""
        return [n.update.session_update for n in self.updates if n.session_id == session_id]

    async def wait_for_kind(self, session_id: str, kind: str, *, after: int = 0) -> None:
        """Until more than ``after`` updates of ``kind`` for ``session_id`` were received."""
        async with asyncio.timeout(_TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: self.kinds(session_id).count(kind) > after)


@dataclass
class Wire:
    """One SDK connection as seen on the wire: the proxy's raw bytes, the SDK's requests."""

    raw: bytearray = field(default_factory=bytearray)
    sent_methods: dict[int | str, str] = field(default_factory=dict)

    def observe(self, event: StreamEvent) -> None:
        """SDK stream observer: remember the method of every request the SDK sends."""
        message = event.message
        if event.direction is StreamDirection.OUTGOING and "method" in message and "id" in message:
            self.sent_methods[message["id"]] = message["method"]

    def lines(self) -> list[bytes]:
        """Every NDJSON line the proxy sent (a trailing partial line included)."""
        return [line for line in bytes(self.raw).split(b"\n") if line.strip()]

    def messages(self) -> list[dict[str, Any]]:
        """The proxy's lines, decoded (only call after ``problems()`` came back empty)."""
        return [json.loads(line) for line in self.lines()]


def _check(model: type[BaseModel], payload: Any, where: str) -> list[str]:
    """``model.model_validate(payload)`` plus a lossless round trip.

    The SDK's models salvage malformed optional fields (``x-deserialize-default-on-error``)
    and drop invalid list items instead of failing, so ``model_validate`` alone would let some
    schema violations through. Dumping the parsed model back must give the payload unchanged.
    """
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        return [f"{where}: not a valid {model.__name__}: {exc}"]
    again = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if again != payload:
        return [
            f"{where}: {model.__name__} does not round-trip through the SDK model "
            f"(a field was dropped or salvaged): sent {payload!r}, parsed {again!r}"
        ]
    return []


def wire_problems(wire: Wire) -> tuple[list[str], set[str]]:
    """Schema problems in everything the proxy sent on ``wire``, and what was checked."""
    problems: list[str] = []
    checked: set[str] = set()
    for number, line in enumerate(wire.lines(), 1):
        where = f"line {number} {line[:2000]!r}"
        try:
            message = json.loads(line)
        except ValueError as exc:
            problems.append(f"{where}: not JSON: {exc}")
            continue
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            problems.append(f"{where}: not a JSON-RPC 2.0 object")
            continue
        if "method" in message:
            method = message["method"]
            model = PARAM_MODELS.get(method)
            if model is None:
                problems.append(f"{where}: unexpected method {method!r} from the proxy")
                continue
            if ("id" in message) != (method in REQUESTS):
                problems.append(f"{where}: {method} sent as the wrong kind (request/notification)")
            problems += _check(model, message.get("params"), where)
            checked.add(f"{method} params")
        elif "id" in message:
            method = wire.sent_methods.get(message["id"])
            if method is None:
                problems.append(f"{where}: response to an id the SDK never used")
                continue
            if ("result" in message) == ("error" in message):
                problems.append(f"{where}: a response needs exactly one of result and error")
            elif "error" in message:
                problems += _check(Error, message["error"], where)
                checked.add(f"{method} error")
            else:
                problems += _check(RESULT_MODELS[method], message["result"], where)
                checked.add(f"{method} result")
        else:
            problems.append(f"{where}: neither a request, a notification nor a response")
    return problems, checked


@asynccontextmanager
async def sdk_connection(
    p: ProxyHandle, client: RecordingClient, *, validate: bool = True
) -> AsyncIterator[tuple[ClientSideConnection, Wire]]:
    """An SDK client connection whose agent process is ``acp-proxy attach``, initialized.

    On a clean exit every line the proxy sent is validated against the SDK schema.
    """
    wire = Wire()
    log = Path(p.log_path).with_name(f"attach-{next(_attach_numbers)}.log")

    async def tee(source: asyncio.StreamReader, sink: asyncio.StreamReader) -> None:
        while chunk := await source.read(1 << 16):
            wire.raw += chunk
            sink.feed_data(chunk)
        sink.feed_eof()

    with log.open("ab") as stderr:
        async with spawn_stdio_transport(
            sys.executable,
            "-m",
            "acp_proxy",
            "attach",
            "--socket",
            p.socket,
            env=dict(os.environ),
            stderr=stderr.fileno(),
            limit=_LIMIT,
        ) as (stdout, stdin, bridge):
            sdk_side = asyncio.StreamReader(limit=_LIMIT)
            relay = asyncio.create_task(tee(stdout, sdk_side))
            try:
                async with connect_to_agent(
                    client, stdin, sdk_side, observers=[wire.observe]
                ) as conn:
                    async with asyncio.timeout(_TIMEOUT_S):
                        init = await conn.initialize(
                            protocol_version=PROTOCOL_VERSION,
                            client_capabilities=ClientCapabilities(),
                            client_info=Implementation(name="sdk-test", version="0.0.0"),
                        )
                    assert init.protocol_version == PROTOCOL_VERSION
                    assert init.agent_capabilities is not None
                    assert init.agent_capabilities.load_session is True
                    yield conn, wire
            except BaseException:
                relay.cancel()  # on a failure, stop the tee at once
                raise
        # Stdin was closed on leaving spawn_stdio_transport: the bridge exited, so the tee
        # sees EOF once it has relayed the last byte.
        async with asyncio.timeout(_TIMEOUT_S):
            await relay
        # Stdin EOF ends the bridge by itself, within the SDK's 2 s grace (not by SIGTERM).
        assert bridge.returncode == 0, f"acp-proxy attach exited with {bridge.returncode}"
    if validate:
        problems, _ = wire_problems(wire)
        assert not problems, "\n".join(problems)


async def new_session(conn: ClientSideConnection, client: RecordingClient, cwd: Path) -> str:
    """``session/new``, then wait for the fake agent's ``available_commands_update``.

    Waiting keeps the stored order (commands, then the turn) identical to what the client saw.
    """
    async with asyncio.timeout(_TIMEOUT_S):
        session = await conn.new_session(cwd=str(cwd), mcp_servers=[])
    await client.wait_for_kind(session.session_id, "available_commands_update")
    return session.session_id


async def prompt(conn: ClientSideConnection, session_id: str, text: str) -> PromptResponse:
    """One text prompt, bounded in time."""
    async with asyncio.timeout(_TIMEOUT_S):
        return await conn.prompt(session_id=session_id, prompt=[text_block(text)])


async def test_prompt_with_plan_tool_calls_and_permissions(tmp: Path) -> None:
    """initialize → new → prompt through the SDK: every update kind and a permission round trip."""
    async with proxy(tmp, "--plan", "--tool-calls", "2", "--permission") as p:
        client = RecordingClient()
        async with sdk_connection(p, client) as (conn, _wire):
            sid = await new_session(conn, client, tmp)
            assert not sid.startswith("fake_"), "the agent's own session id leaked"
            reply = await prompt(conn, sid, "hello through the SDK")
        assert reply.stop_reason == "end_turn"
        assert reply.field_meta is not None and "acp-proxy" in reply.field_meta
        assert reply.usage is not None and reply.usage.total_tokens > 0
        kinds = client.kinds(sid)
        assert {"plan", "agent_thought_chunk", "tool_call", "tool_call_update"} <= set(kinds)
        assert kinds[0] == "available_commands_update"
        assert kinds[-1] == "agent_message_chunk"
        assert kinds.count("tool_call") == 2
        # Each tool call was preceded by its permission request, on the proxy's session id.
        assert [r.session_id for r in client.permission_requests] == [sid, sid]
        asked = [r.tool_call.tool_call_id for r in client.permission_requests]
        started = [
            n.update.tool_call_id for n in client.updates if n.update.session_update == "tool_call"
        ]
        assert asked == started
        text = summary([dump(n.update) for n in client.updates])
        assert "permission=selected:once,selected:once" in text
        assert "last user message: hello through the SDK" in text


async def test_load_session_replays_before_answering(tmp: Path) -> None:
    """A second SDK connection loads the session: the replay equals what the first one saw."""
    async with proxy(tmp, "--plan", "--tool-calls", "2", "--permission") as p:
        first = RecordingClient()
        async with sdk_connection(p, first) as (conn, _wire):
            sid = await new_session(conn, first, tmp)
            before_turn = len(first.updates)
            reply = await prompt(conn, sid, "remember this")
            assert reply.stop_reason == "end_turn"
        live = [dump(n) for n in first.updates if n.session_id == sid]

        second = RecordingClient()
        async with sdk_connection(p, second) as (conn, wire):
            async with asyncio.timeout(_TIMEOUT_S):
                loaded = await conn.load_session(cwd=str(tmp), session_id=sid, mcp_servers=[])
            # Everything replayed was handed to the SDK client before load_session returned.
            replayed = [dump(n) for n in second.updates]
        assert isinstance(loaded, LoadSessionResponse)

        user = SessionNotification(
            session_id=sid,
            update=UserMessageChunk(
                session_update="user_message_chunk",
                content=TextContentBlock(type="text", text="remember this"),
            ),
        )
        expected = [*live[:before_turn], dump(user), *live[before_turn:]]
        assert replayed == expected

        # On the wire: every replayed update precedes the load response.
        messages = wire.messages()
        load_ids = [i for i, method in wire.sent_methods.items() if method == "session/load"]
        answer = next(
            n for n, m in enumerate(messages) if "method" not in m and m.get("id") in load_ids
        )
        updates_at = [n for n, m in enumerate(messages) if m.get("method") == "session/update"]
        assert len(updates_at) == len(expected)
        assert all(n < answer for n in updates_at)


async def test_cancel_ends_the_prompt_with_cancelled(tmp: Path) -> None:
    """The SDK's cancel reaches the agent; the hanging prompt answers stopReason cancelled."""
    async with proxy(tmp) as p:
        client = RecordingClient()
        async with sdk_connection(p, client) as (conn, _wire):
            sid = await new_session(conn, client, tmp)
            turn = asyncio.create_task(prompt(conn, sid, 'fake:{"hang": true}'))
            await client.wait_for_kind(sid, "agent_message_chunk")
            assert not turn.done()
            await conn.cancel(session_id=sid)
            async with asyncio.timeout(_TIMEOUT_S):
                reply = await turn
            assert reply.stop_reason == "cancelled"
            # The session is still usable after the cancelled turn.
            again = await prompt(conn, sid, "after the cancel")
            assert again.stop_reason == "end_turn"
        texts = [dump(n.update) for n in client.updates]
        assert "last user message: after the cancel" in summary(texts)


async def test_everything_the_proxy_emits_validates_against_the_sdk_schema(tmp: Path) -> None:
    """Every line of two connections (all methods, an error) parses as its SDK schema model."""
    async with proxy(tmp, "--plan", "--tool-calls", "2", "--permission", "--thoughts", "2") as p:
        first = RecordingClient()
        async with sdk_connection(p, first, validate=False) as (conn, wire1):
            sid = await new_session(conn, first, tmp)
            assert (await prompt(conn, sid, "one")).stop_reason == "end_turn"
            seen = first.kinds(sid).count("agent_message_chunk")
            hang = 'fake:{"hang": true, "permission": false}'
            turn = asyncio.create_task(prompt(conn, sid, hang))
            await first.wait_for_kind(sid, "agent_message_chunk", after=seen)
            await conn.cancel(session_id=sid)
            async with asyncio.timeout(_TIMEOUT_S):
                assert (await turn).stop_reason == "cancelled"
            with pytest.raises(RequestError) as refused:
                await prompt(conn, "sess_unknown", "nobody home")
            assert refused.value.code == -32002
        second = RecordingClient()
        async with sdk_connection(p, second, validate=False) as (conn, wire2):
            async with asyncio.timeout(_TIMEOUT_S):
                await conn.load_session(cwd=str(tmp), session_id=sid, mcp_servers=[])

    problems1, checked1 = wire_problems(wire1)
    problems2, checked2 = wire_problems(wire2)
    assert not problems1 + problems2, "\n".join(problems1 + problems2)
    assert checked1 | checked2 >= {
        "initialize result",
        "session/new result",
        "session/load result",
        "session/prompt result",
        "session/prompt error",
        "session/update params",
        "session/request_permission params",
    }
    assert len(wire1.lines()) > 20 and len(wire2.lines()) > 10

    # The checker itself catches a bad stop reason and a salvaged (silently dropped) field.
    reply = next(
        m
        for m in wire1.messages()
        if "result" in m and wire1.sent_methods.get(m["id"]) == "session/prompt"
    )
    assert _check(PromptResponse, {**reply["result"], "stopReason": "done"}, "bad")
    assert _check(PromptResponse, {**reply["result"], "usage": "lots"}, "salvaged")
